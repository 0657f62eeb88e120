package config

import (
	"fmt"
	"net/url"
	"path/filepath"
	"time"

	"github.com/bos55/concordia/pkg/narinfo"
)

// Upstream is one [[upstream]] table: a binary cache this one stands in
// front of. Upstreams are asked in the order they are listed.
type Upstream struct {
	// URL is the cache's base URL, e.g. "https://cache.nixos.org".
	URL string `toml:"url"`
	// Name labels metrics and logs (default: the URL's host).
	Name string `toml:"name"`
	// PublicKeys are "name:base64" keys; an answer must be signed by one.
	PublicKeys []string `toml:"public_keys"`
	// Timeout bounds a narinfo request, and a NAR download's wait for
	// its headers and between two chunks (default 5s).
	Timeout Duration `toml:"timeout"`
	// NegativeTTL is how long a miss is remembered (default 1m).
	NegativeTTL Duration `toml:"negative_ttl"`
	// NetrcFile or TokenFile hold the credentials of a private upstream:
	// a netrc's login and password (basic auth, as Nix sends them) for
	// the URL's host, or a bearer token.
	NetrcFile string `toml:"netrc_file"`
	TokenFile string `toml:"token_file"`
	// PullThrough serves the upstream's paths to readers, kept in the
	// upload store (default true). Off, the upstream still counts for
	// uploads: `nix copy --to` skips its paths, references to them are
	// accepted, and an upload of one of them must be its NAR.
	PullThrough *bool `toml:"pull_through"`
}

// Defaults of an [[upstream]] table.
const (
	DefaultUpstreamTimeout     = 5 * time.Second
	DefaultUpstreamNegativeTTL = time.Minute
	uploadDirName              = "upload"
)

// Pulls reports whether the upstream serves readers.
func (u Upstream) Pulls() bool { return u.PullThrough == nil || *u.PullThrough }

// Keys parses PublicKeys (validated already).
func (u Upstream) Keys() []narinfo.PublicKey {
	keys := make([]narinfo.PublicKey, 0, len(u.PublicKeys))
	for _, k := range u.PublicKeys {
		if pk, err := narinfo.ParsePublicKey(k); err == nil {
			keys = append(keys, pk)
		}
	}
	return keys
}

// finishUpstreams fills the upstreams' defaults. Pulled paths are kept in
// the upload store, so a pull-through upstream turns it on (in the state
// directory) when upload.dir is not set; it takes no upload without a
// tokens file.
func (c *Config) finishUpstreams() {
	for i := range c.Upstreams {
		u := &c.Upstreams[i]
		if u.Timeout == 0 {
			u.Timeout = Duration(DefaultUpstreamTimeout)
		}
		if u.NegativeTTL == 0 {
			u.NegativeTTL = Duration(DefaultUpstreamNegativeTTL)
		}
		if u.Name == "" {
			if p, err := url.Parse(u.URL); err == nil {
				u.Name = p.Host
			}
		}
		if u.Pulls() && c.Upload.Dir == "" {
			c.Upload.Dir = filepath.Join(c.StateDir, uploadDirName)
		}
	}
}

func (c *Config) validateUpstreams(bad func(key, format string, a ...any) error) error {
	names := map[string]bool{}
	for i, u := range c.Upstreams {
		key := fmt.Sprintf("upstream[%d]", i)
		p, err := url.Parse(u.URL)
		if err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" || p.RawQuery != "" || p.Fragment != "" {
			return bad(key+".url", "must be an http or https URL without query, got %q", u.URL)
		}
		if len(u.PublicKeys) == 0 {
			return bad(key+".public_keys", "an upstream needs at least one key: its answers are believed only when one signed them")
		}
		for _, k := range u.PublicKeys {
			if _, err := narinfo.ParsePublicKey(k); err != nil {
				return bad(key+".public_keys", "%v", err)
			}
		}
		if names[u.Name] {
			return bad(key+".name", "%q names two upstreams", u.Name)
		}
		names[u.Name] = true
		if u.Timeout < 0 || u.NegativeTTL < 0 {
			return bad(key, "timeout and negative_ttl must not be negative")
		}
		if u.NetrcFile != "" && u.TokenFile != "" {
			return bad(key+".token_file", "set netrc_file or token_file, not both")
		}
		for k, f := range map[string]string{"netrc_file": u.NetrcFile, "token_file": u.TokenFile} {
			if f != "" && !filepath.IsAbs(f) {
				return bad(key+"."+k, "must be absolute, got %q", f)
			}
		}
	}
	return nil
}
