// Package upstream is the cache's client of the binary caches it stands in
// front of (cache.nixos.org, a private one): it asks them for narinfos in
// priority order, believes an answer only when one of that upstream's
// public keys signed it and it is about the path asked for, remembers
// misses for a short while, and opens their NAR files. An upstream that
// is slow, down or hostile costs a reader a clean miss, never a hang and
// never an error Nix would disable the substituter for.
//
// Concurrent lookups of one path at one upstream share one request, which
// runs detached from its callers (bounded by the upstream's Timeout), so
// a caller that gives up costs the others nothing. Answers are kept for
// PositiveTTL and misses (bad answers included) for the upstream's
// NegativeTTL, in one bounded LRU. An upstream that cannot be asked
// (network, timeout, 5xx, 429) is never remembered as missing: it is
// skipped for a backoff (twice its Timeout, doubling to 30s), then one
// request probes it.
//
// Package pullthrough builds the pull-through store on it; the upload
// store uses it (through pullthrough's checking view) to accept
// references an upstream has and to refuse uploads that would give one of
// its paths other contents.
package upstream

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bos55/concordia/internal/limits"
	"github.com/bos55/concordia/pkg/narinfo"
)

// Defaults of an [[upstream]] entry.
const (
	DefaultTimeout     = 5 * time.Second
	DefaultNegativeTTL = time.Minute
	DefaultPositiveTTL = time.Hour
)

// Config is one upstream cache.
type Config struct {
	// Name labels metrics and log lines (default: the URL's host).
	Name string
	// URL is the cache's base URL (http or https), without a trailing /.
	URL string
	// Keys are the public keys one of which must sign every answer.
	Keys []narinfo.PublicKey
	// Timeout bounds a narinfo request whole, and a NAR download's wait
	// for its headers and between two chunks of its body.
	Timeout time.Duration
	// NegativeTTL is how long a miss (404) is remembered.
	NegativeTTL time.Duration
	// Token is sent as a bearer token, or User/Password as basic auth
	// (from a netrc); empty: no credentials.
	Token          string
	User, Password string
	// PullThrough serves this upstream's paths to readers; without it
	// the upstream only counts for writers (paths to skip, references
	// present, contents an upload must match).
	PullThrough bool
}

// Options configure a Set.
type Options struct {
	Upstreams []Config
	// StoreDir is the store directory answers must name paths in.
	StoreDir string
	// PositiveTTL is how long a found narinfo is kept in memory
	// (default DefaultPositiveTTL); CacheEntries bounds how many answers
	// (found or missed) are kept (default 65536).
	PositiveTTL  time.Duration
	CacheEntries int
	// Limits bound the documents read (limits.max_narinfo_size,
	// max_signatures, max_references).
	Limits limits.Limits
	// Client makes the requests (default: a client of its own, no
	// proxy from the environment).
	Client *http.Client
	// Logger receives a line per bad answer and per upstream going
	// down or coming back; nil discards them.
	Logger *slog.Logger
	// Registry receives the concordia_upstream_* metrics; nil registers
	// none.
	Registry prometheus.Registerer
	// Now replaces time.Now in tests.
	Now func() time.Time
}

// Upstream is one configured upstream, as the Set uses it.
type Upstream struct {
	Config
	base   *url.URL // URL parsed, for resolving NAR URLs
	client *http.Client
	health health
	m      *upMetrics
}

// Answer is an upstream's narinfo for a path, checked: about the path
// asked for, in the store directory, signed by one of its keys. Answers
// are shared between callers (and kept in memory): do not modify one.
type Answer struct {
	Upstream *Upstream
	NarInfo  *narinfo.NarInfo
	// Signer is the name of the key whose signature verified.
	Signer string
}

// Set is the configured upstreams in priority order.
type Set struct {
	opts   Options
	ups    []*Upstream
	log    *slog.Logger
	cache  *answerCache
	flight flight
	m      *metrics
}

// New checks the configs and builds the Set.
func New(opts Options) (*Set, error) {
	opts, err := withDefaults(opts)
	if err != nil {
		return nil, err
	}
	s := &Set{opts: opts, log: opts.Logger, cache: newAnswerCache(opts.CacheEntries)}
	s.m = newMetrics()
	names := map[string]bool{}
	for i, c := range opts.Upstreams {
		u, err := newUpstream(c, opts.Client)
		if err != nil {
			return nil, fmt.Errorf("upstream %d (%s): %w", i+1, c.URL, err)
		}
		if names[u.Name] {
			return nil, fmt.Errorf("upstream %d (%s): %w: name %q is used twice", i+1, c.URL, ErrConfig, u.Name)
		}
		names[u.Name] = true
		u.m = s.m.forUpstream(u.Name)
		s.ups = append(s.ups, u)
	}
	if opts.Registry != nil {
		if err := s.m.register(opts.Registry); err != nil {
			return nil, fmt.Errorf("upstream metrics: %w", err)
		}
	}
	return s, nil
}

// Upstreams lists the upstreams in priority order.
func (s *Set) Upstreams() []*Upstream { return s.ups }

// PullThrough reports whether any upstream serves readers.
func (s *Set) PullThrough() bool {
	for _, u := range s.ups {
		if u.PullThrough {
			return true
		}
	}
	return false
}
