// Package server is the HTTP face of the binary cache: it answers what Nix
// clients fetch (nix-cache-info, narinfo, NARs, listings, logs,
// realisations) from an ordered list of stores, signs narinfos, compresses
// NARs, and exposes health, version and Prometheus metrics.
//
// The narinfo route is the hot path (a client asks for every path of a
// closure), so it is matched by a few byte comparisons before gorilla/mux
// and answered from an in-memory cache of signed, rendered documents; every
// other route goes through mux. Error-to-status mapping lives in exactly one
// function (Status) that the upload handlers share.
//
// NAR URLs. Narinfos name nar/<out hash>-<nar hash>.nar[.zst] (the out hash
// finds the path without an index; the nar hash makes a re-created path's
// old URL a 404 instead of a mismatching NAR). For .nar this is exactly
// nix-serve's form. Also served, for caches migrating with old narinfos in
// clients' caches: Harmonia's nar/<nar hash>.nar?hash=<out hash> and
// nix-serve's legacy nar/<out hash>.nar. Uncompressed URLs support byte
// ranges and, when the request asks, Content-Encoding: zstd; .nar.zst is
// compressed once through the compression cache (ranges once complete).
package server

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/gorilla/mux"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/bos55/concordia/internal/auth"
	"github.com/bos55/concordia/internal/limits"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/pkg/narinfo"
)

// Compression names announced in narinfos.
const (
	CompressionZstd = "zstd"
	CompressionNone = "none"
)

// ZstdCache is the compress-once cache of zstd NARs, seen through the
// small interface the server needs (internal/zstdcache.Cache behind an
// adapter, or a fake in tests).
type ZstdCache interface {
	// Get returns the compressed NAR keyed by key (the nix32 NAR hash),
	// running produce (which writes the uncompressed NAR) when absent.
	Get(ctx context.Context, key string, produce func(ctx context.Context, w io.Writer) error) (ZstdEntry, error)
}

// ZstdEntry is one compressed NAR being read. When Complete, Seek works
// and Size is known, so ranges can be served.
type ZstdEntry interface {
	io.ReadSeekCloser
	Complete() bool
	Size() (int64, bool)
}

// Upstream is what the server needs of the pull-through store: path info
// from the upstreams (no download), their NAR files as they arrive
// (FileNAR), described without a download (FileNARStat), and decoded for
// a client that asks for the NAR uncompressed.
type Upstream interface {
	store.Store
	store.FileNAR
	store.FileNARStat
}

// UpstreamInfo describes an upstream cache on the landing page.
type UpstreamInfo struct {
	Name, URL   string
	Keys        []string
	PullThrough bool
}

// Options configure a Server. Stores is the only required field.
type Options struct {
	// Stores answer in order: PathInfo comes from the first that has the
	// path, and its bytes are served from that same store.
	Stores []store.Store
	// Upstream is the pull-through store of the upstream caches
	// (internal/store/pullthrough), or nil: asked after every store of
	// Stores, so an upstream answers only what the cache has not.
	Upstream Upstream
	// UpstreamCheck answers writers' narinfo probes the upload store
	// misses: a path an upstream has (pull-through or not) is one
	// `nix copy --to` need not upload. Nil: none.
	UpstreamCheck store.Store
	// Upstreams are shown on the landing page.
	Upstreams []UpstreamInfo
	// Upload takes uploads, or is nil: the upload routes (put.go) and the
	// admin API of its store's other capabilities (admin.go) are
	// installed. Its Store is normally one of Stores too.
	Upload *Uploads
	// Keys sign every narinfo (in addition to the store's signatures).
	Keys []narinfo.SecretKey
	// Compression is what narinfos announce for stores that have no
	// ready-made files: "zstd" (default) or "none".
	Compression string
	// NegotiateEncoding lets identity NAR URLs be answered with
	// Content-Encoding: zstd when Accept-Encoding asks (Harmonia's
	// enable_compression).
	NegotiateEncoding bool
	// ZstdLevel is used for on-the-fly compression (default 1).
	ZstdLevel int
	// Cache keeps compressed NARs; nil compresses on the fly.
	Cache ZstdCache
	// MaxLiveCompressions bounds on-the-fly zstd streams (used without a
	// Cache, and for Content-Encoding when the cache is off); each holds
	// an encoder of about 12 MB and a core, so this bounds memory and CPU
	// (default GOMAXPROCS, at least 2: more streams than cores would not
	// compress faster, only hold more encoders). When
	// all are busy, identity URLs are sent unencoded (Accept-Encoding is
	// a preference) and .nar.zst requests wait for a free encoder.
	MaxLiveCompressions int
	// Priority is announced in nix-cache-info (default 30).
	Priority int
	// Tokens are the cache's credentials: the read guard of a Private
	// cache, the upload, pin and admin routes (when Uploads.Tokens is nil),
	// and the tokens-file report of /health and /metrics. Nil takes
	// Uploads.Tokens.
	Tokens *auth.Tokens
	// Private makes every route except /, /health and /version (so also
	// /metrics) need a token with read, whatever else is configured. New
	// refuses Private without Tokens or Authorize: a private cache that
	// nobody can authenticate to must not be served to everybody.
	Private bool
	// Authorize, when set, guards every read route except /, /health
	// and /version (a private cache; Private sets it from Tokens). Its
	// error goes through Status (auth errors map to 401/403).
	Authorize func(r *http.Request) error
	// ReadProgress aborts a request whose body sends nothing for this
	// long; WriteProgress drops a response that cannot send a chunk of
	// 128 KiB for this long (deadline.go). Both default to
	// DefaultProgressTimeout; negative turns them off.
	ReadProgress, WriteProgress time.Duration
	// NarInfoCacheBytes bounds the cache of signed narinfos (default 16 MiB).
	NarInfoCacheBytes int
	// NarInfoTTL is how long a cached narinfo is served before the store
	// is asked again whether the path still exists (default 1s), so a
	// garbage-collected path stops answering quickly.
	NarInfoTTL time.Duration
	// Logger receives structured logs; nil discards them.
	Logger *slog.Logger
	// Registry receives the metrics; nil creates a private registry.
	Registry *prometheus.Registry
	// Version is shown by /version and the landing page.
	Version string
	// Extra collectors (e.g. the compression cache's) registered with
	// Registry.
	Collectors []prometheus.Collector
	// Limits bound what the server decodes and parses for a client
	// (stored uploads, listings); zero value: limits.Default().
	Limits limits.Limits
	// Listings keeps the .ls listings the server builds, zstd-compressed
	// on disk, each built once per NAR: cmd/cache passes the compression
	// cache (or, with that off, one of its own). nil builds them in
	// memory and keeps only small ones.
	Listings ZstdCache
}

// Server serves the cache. Its fields are what handlers, including the
// upload handlers in put*.go, need.
type Server struct {
	opts     Options
	stores   []store.Store
	upload   store.Uploader // nil: no uploads
	keys     []narinfo.SecretKey
	storeDir string
	log      *slog.Logger
	reg      *prometheus.Registry
	metrics  *metrics
	zsem     chan struct{} // on-the-fly compression slots
	limits   limits.Limits
	// memListings holds listings without Options.Listings; trees the
	// parsed listings /serve resolves paths in.
	memListings memListings
	// stats is the landing page's last snapshot, search its referrer
	// scans (webstats.go, websearch.go).
	stats  statsCache
	search searchCache
	trees  treeCache
	// Cache-Control values: "private" is added for a private cache, so
	// shared proxies never keep what needed credentials.
	ccDay, ccForever []string
	narinfos         *narinfoCache
	// isWriter reports whether a request carries a write token; set by
	// putRoutes. Writers are answered from the upload store alone (see
	// writerNarinfo).
	isWriter func(r *http.Request) bool
	// uploadIdx is where the upload store is in stores (-1: none), and
	// shadowWarned the hash parts whose uploaded record was found to
	// differ from a later store's path (see unshadowed).
	uploadIdx    int
	shadowWarned sync.Map
	// upstreamIdx is where Options.Upstream is in stores (-1: none):
	// always last, and never asked by unshadowed.
	upstreamIdx int
	router      *mux.Router
	cacheInfo   []byte
	// rd and wd are the progress timeouts (0: off).
	rd, wd time.Duration
}

// ErrPrivateWithoutTokens is New's answer to a private cache with no way
// to authenticate.
var ErrPrivateWithoutTokens = errors.New("server: a private cache needs a tokens file (or an Authorize hook): without one nobody could read it")

// New builds a Server from opts.
func New(opts Options) (*Server, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	progress := func(d time.Duration) time.Duration {
		switch {
		case d == 0:
			return DefaultProgressTimeout
		case d < 0:
			return 0
		}
		return d
	}
	s := &Server{
		opts:     opts,
		stores:   opts.Stores,
		keys:     opts.Keys,
		storeDir: "/nix/store",
		log:      opts.Logger,
		reg:      opts.Registry,
		narinfos: newNarinfoCache(opts.NarInfoCacheBytes),
		zsem:     make(chan struct{}, opts.MaxLiveCompressions),
		rd:       progress(opts.ReadProgress),
		wd:       progress(opts.WriteProgress),
		limits:   opts.Limits.OrDefault(),
	}
	if opts.Upload != nil {
		s.upload = opts.Upload.Store
	}
	if err := s.placeStores(); err != nil {
		return nil, err
	}
	s.upstreamIdx = -1
	if opts.Upstream != nil {
		s.stores = append(slices.Clip(s.stores), opts.Upstream)
		s.upstreamIdx = len(s.stores) - 1
	}
	if s.metrics, err = newMetrics(s.reg, s.collectors()); err != nil {
		return nil, err
	}
	s.ccDay, s.ccForever = []string{"max-age=86400"}, []string{"max-age=31536000, immutable"}
	if opts.Authorize != nil {
		s.ccDay, s.ccForever = []string{"private, max-age=86400"}, []string{"private, max-age=31536000, immutable"}
	}
	s.cacheInfo = []byte("StoreDir: " + s.storeDir + "\nWantMassQuery: 1\nPriority: " + strconv.Itoa(opts.Priority) + "\n")
	s.router = s.routes()
	return s, nil
}

// withDefaults fills the options' defaults and refuses what cannot be
// served; a Private cache gets its read guard from Tokens here.
func (opts Options) withDefaults() (Options, error) {
	if opts.Compression == "" {
		opts.Compression = CompressionZstd
	}
	if opts.Compression != CompressionZstd && opts.Compression != CompressionNone {
		return opts, errors.New("server: compression must be zstd or none, got " + opts.Compression)
	}
	if opts.ZstdLevel == 0 {
		opts.ZstdLevel = 1
	}
	if opts.Priority == 0 {
		opts.Priority = 30
	}
	if opts.NarInfoCacheBytes == 0 {
		opts.NarInfoCacheBytes = 16 << 20
	}
	if opts.NarInfoTTL == 0 {
		opts.NarInfoTTL = time.Second
	}
	if opts.MaxLiveCompressions <= 0 {
		opts.MaxLiveCompressions = max(2, runtime.GOMAXPROCS(0))
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Registry == nil {
		opts.Registry = prometheus.NewRegistry()
	}
	if opts.Version == "" {
		opts.Version = "dev"
	}
	if opts.Upload != nil && opts.Upload.Store == nil {
		return opts, errors.New("server: Options.Upload has no Store")
	}
	if opts.Tokens == nil && opts.Upload != nil {
		opts.Tokens = opts.Upload.Tokens
	}
	if opts.Private && opts.Authorize == nil {
		if opts.Tokens == nil {
			return opts, ErrPrivateWithoutTokens
		}
		toks := opts.Tokens
		opts.Authorize = func(r *http.Request) error {
			_, err := toks.Authorize(r, auth.Read)
			return err
		}
	}
	return opts, nil
}

// placeStores takes the store directory from the stores, which must
// agree on it, and finds the upload store among them.
func (s *Server) placeStores() error {
	s.uploadIdx = -1
	for i, st := range s.stores {
		if i == 0 {
			s.storeDir = st.StoreDir()
		} else if st.StoreDir() != s.storeDir {
			return errors.New("server: stores disagree on the store directory: " + s.storeDir + " and " + st.StoreDir())
		}
		if s.upload != nil && st == s.upload {
			s.uploadIdx = i
		}
	}
	return nil
}

// collectors are the metrics registered beside the request metrics.
func (s *Server) collectors() []prometheus.Collector {
	collectors := append([]prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "concordia_narinfo_cache_entries",
			Help: "Signed narinfos held in memory.",
		}, func() float64 { return float64(s.narinfos.len()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "concordia_narinfo_cache_bytes",
			Help: "Approximate memory held by the narinfo cache (bounded by its size option).",
		}, func() float64 { return float64(s.narinfos.bytes()) }),
	}, s.opts.Collectors...)
	if s.opts.Tokens != nil {
		collectors = append(collectors, tokenCollectors(s.opts.Tokens)...)
	}
	return collectors
}

// Registry is where the server's metrics live (the upload side adds its own).
func (s *Server) Registry() *prometheus.Registry { return s.reg }

// Logger is the server's logger.
func (s *Server) Logger() *slog.Logger { return s.log }

// Stores are the stores in answering order.
func (s *Server) Stores() []store.Store { return s.stores }

// Keys are the signing keys.
func (s *Server) Keys() []narinfo.SecretKey { return s.keys }

// StoreDir is the store directory served.
func (s *Server) StoreDir() string { return s.storeDir }

// ServeHTTP routes narinfo GET/HEAD on a fast path, the rest through mux.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	if len(p) == 41 && (r.Method == http.MethodGet || r.Method == http.MethodHead) && r.ContentLength == 0 &&
		p[0] == '/' && p[33:] == ".narinfo" && validHashPart(p[1:33]) {
		s.serveNarinfo(w, r, p[1:33])
		// A narinfo is small: it is sent after the handler returns.
		finalDeadline(w, r, s.wd)
		return
	}
	s.instrument(w, r)
}

func (s *Server) routes() *mux.Router {
	r := mux.NewRouter()
	r.SkipClean(true) // we refuse unclean paths ourselves instead of redirecting
	r.Use(s.routeName)
	get := []string{http.MethodGet, http.MethodHead}
	s.webRoutes(r, get)
	r.HandleFunc("/nix-cache-info", s.handleCacheInfo).Methods(get...).Name("cache-info")
	r.HandleFunc("/version", s.handleVersion).Methods(get...).Name("version")
	r.HandleFunc("/health", s.handleHealth).Methods(get...).Name("health")
	r.Handle("/metrics", s.guardRead(s.metricsHandler())).Methods(get...).Name("metrics")
	// narinfo GETs normally take the fast path in ServeHTTP; this route
	// catches the rest (e.g. a malformed hash) so they 404 the same way.
	r.HandleFunc("/{hash}.narinfo", s.handleNarinfoSlow).Methods(get...).Name("narinfo")
	r.HandleFunc("/{hash}.ls", s.handleListing).Methods(get...).Name("ls")
	r.HandleFunc("/log/{drv}", s.handleLog).Methods(get...).Name("log")
	r.HandleFunc("/serve/{hash}", s.handleServe).Methods(get...).Name("serve")
	r.PathPrefix("/serve/{hash}/").HandlerFunc(s.handleServe).Methods(get...).Name("serve")
	r.HandleFunc("/realisations/{id}.doi", s.handleRealisation).Methods(get...).Name("realisation")
	r.HandleFunc("/build-trace-v2/{drv}/{output}.doi", s.handleBuildTrace).Methods(get...).Name("build-trace")
	// NAR URLs: Concordia's and nix-serve's /nar/<out>-<narhash>.nar[.ext],
	// Harmonia's /nar/<narhash>.nar?hash=<out>, nix-serve's legacy
	// /nar/<out>.nar. Anything else under /nar/ (notably the
	// /nar/<filehash>.nar.zst that `nix copy --to` uploads) is left to
	// the upload routes.
	r.MatcherFunc(s.matchNAR).Methods(get...).HandlerFunc(s.handleNAR).Name("nar")
	if s.upload != nil {
		s.putRoutes(r)
	} else {
		s.deployRoutes(r, nil) // 501: no history without an upload store
	}
	r.NotFoundHandler = http.HandlerFunc(s.handleNotFound)
	r.MethodNotAllowedHandler = http.HandlerFunc(s.handleMethodNotAllowed)
	return r
}

// The refusals below never read a body; refuseBody ends the connection
// after them instead of waiting for one.

func (s *Server) handleNotFound(w http.ResponseWriter, r *http.Request) {
	s.setRoute(w, "not-found")
	refuseBody(w, r)
	s.fail(w, r, store.ErrNotFound)
}

func (s *Server) handleMethodNotAllowed(w http.ResponseWriter, r *http.Request) {
	s.setRoute(w, "method-not-allowed")
	refuseBody(w, r)
	http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
}

// authorize runs the read guard; it reports whether to go on.
func (s *Server) authorize(w http.ResponseWriter, r *http.Request) bool {
	if s.opts.Authorize == nil {
		return true
	}
	if err := s.opts.Authorize(r); err != nil {
		refuseBody(w, r)
		s.fail(w, r, err)
		return false
	}
	return true
}

// guardRead wraps a handler that does not check the read guard itself.
func (s *Server) guardRead(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.authorize(w, r) {
			h.ServeHTTP(w, r)
		}
	})
}

// validHashPart reports whether s is a 32-character nix32 hash part.
func validHashPart(s string) bool {
	if len(s) != 32 {
		return false
	}
	return validNix32(s)
}

// validNix32 reports whether s uses only Nix's base-32 alphabet
// (0-9, a-z without e, o, t, u).
func validNix32(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' && c != 'e' && c != 'o' && c != 't' && c != 'u') {
			return false
		}
	}
	return true
}
