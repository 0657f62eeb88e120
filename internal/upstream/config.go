package upstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"

	"github.com/bos55/concordia/internal/version"
)

// ErrConfig is wrapped by every refusal of New: a config it cannot use.
var ErrConfig = errors.New("invalid upstream config")

// DefaultCacheEntries bounds the in-memory answers when Options leave
// CacheEntries at zero: at ~1 KiB a found narinfo, some 64 MiB at worst.
const DefaultCacheEntries = 65536

// maxRedirects is how many redirects a request follows: caches put their
// NARs behind a CDN, which may redirect, but a loop must end.
const maxRedirects = 5

// withDefaults fills in what Options leave at zero and refuses what no
// default can fix (a negative duration, a relative store directory).
func withDefaults(o Options) (Options, error) {
	if o.StoreDir == "" {
		o.StoreDir = "/nix/store"
	}
	if o.StoreDir[0] != '/' || path.Clean(o.StoreDir) != o.StoreDir || o.StoreDir == "/" {
		return o, fmt.Errorf("%w: store directory %q is not a clean absolute path", ErrConfig, o.StoreDir)
	}
	if o.PositiveTTL < 0 || o.CacheEntries < 0 {
		return o, fmt.Errorf("%w: negative positive TTL or cache entries", ErrConfig)
	}
	if o.PositiveTTL == 0 {
		o.PositiveTTL = DefaultPositiveTTL
	}
	if o.CacheEntries == 0 {
		o.CacheEntries = DefaultCacheEntries
	}
	o.Limits = o.Limits.OrDefault()
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o, nil
}

// newUpstream checks one config, fills in its defaults and gives it a
// client (client, when the Options name one).
func newUpstream(c Config, client *http.Client) (*Upstream, error) {
	c.URL = strings.TrimRight(c.URL, "/")
	base, err := url.Parse(c.URL)
	if err != nil {
		return nil, fmt.Errorf("%w: URL: %v", ErrConfig, err)
	}
	switch {
	case base.Scheme != "http" && base.Scheme != "https":
		return nil, fmt.Errorf("%w: URL %q: want http or https", ErrConfig, c.URL)
	case base.Host == "":
		return nil, fmt.Errorf("%w: URL %q has no host", ErrConfig, c.URL)
	case base.RawQuery != "" || base.ForceQuery || base.Fragment != "":
		// Nix's ?priority=, ?trusted= are client settings, not part of
		// where the cache is: the files live at <URL>/<name>.
		return nil, fmt.Errorf("%w: URL %q has a query or fragment", ErrConfig, c.URL)
	case base.User != nil:
		return nil, fmt.Errorf("%w: URL %q carries credentials: give them as token or user/password", ErrConfig, c.URL)
	case len(c.Keys) == 0:
		return nil, fmt.Errorf("%w: no public keys: an unsigned answer is never believed", ErrConfig)
	case c.Token != "" && (c.User != "" || c.Password != ""):
		return nil, fmt.Errorf("%w: both a token and a user/password", ErrConfig)
	case c.Timeout < 0 || c.NegativeTTL < 0:
		return nil, fmt.Errorf("%w: negative timeout or negative TTL", ErrConfig)
	}
	if c.Name == "" {
		c.Name = base.Host
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.NegativeTTL == 0 {
		c.NegativeTTL = DefaultNegativeTTL
	}
	if client == nil {
		client = newClient(c.Timeout)
	}
	return &Upstream{Config: c, base: base, client: client}, nil
}

// newClient is an upstream's own client: no proxy from the environment
// (a cache's HTTP_PROXY is for its users' builds, not for this), idle
// connections enough for a burst of lookups to one host, and the header
// wait bounded by the timeout. There is no Client.Timeout: a NAR may
// take minutes; the stall watchdog bounds it instead.
func newClient(timeout time.Duration) *http.Client {
	d := &net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}
	t := &http.Transport{
		Proxy:                 nil,
		DialContext:           d.DialContext,
		ForceAttemptHTTP2:     true, // h2 over TLS only; plain http stays HTTP/1.1, as Nix does
		MaxIdleConns:          128,
		MaxIdleConnsPerHost:   32,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   timeout,
		ResponseHeaderTimeout: timeout,
		ExpectContinueTimeout: time.Second,
	}
	return &http.Client{Transport: t, CheckRedirect: checkRedirect}
}

func checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) > maxRedirects { // via holds the first request too
		return fmt.Errorf("stopped after %d redirects", maxRedirects)
	}
	return nil
}

// newRequest is a GET of target with the upstream's credentials (Go
// drops Authorization on a redirect to another host, so a CDN never sees
// them) and a User-Agent that tells the upstream's operator who asks.
func (u *Upstream) newRequest(ctx context.Context, target string) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("User-Agent", "concordia/"+version.String())
	switch {
	case u.Token != "":
		req.Header.Set("Authorization", "Bearer "+u.Token)
	case u.User != "" || u.Password != "":
		req.SetBasicAuth(u.User, u.Password)
	}
	return req, nil
}

// resolve turns a narinfo's URL into the NAR's: relative to the
// upstream's base URL as Nix does (<URL>/<nar URL>), or absolute on the
// upstream's own scheme and host, since its credentials go with it and a
// signed narinfo does not make another host trustworthy.
func (u *Upstream) resolve(ref string) (*url.URL, error) {
	r, err := url.Parse(ref)
	if err != nil || ref == "" {
		return nil, fmt.Errorf("NAR URL %q: not a URL", ref)
	}
	base := *u.base
	base.Path += "/"
	base.RawPath = ""
	t := base.ResolveReference(r)
	if t.Scheme != u.base.Scheme || t.Host != u.base.Host || t.User != nil {
		return nil, fmt.Errorf("NAR URL %q: not on the upstream's host %s://%s", ref, u.base.Scheme, u.base.Host)
	}
	return t, nil
}
