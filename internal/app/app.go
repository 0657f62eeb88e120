// Package app assembles a cache from its configuration: it opens the
// stores, loads the keys and tokens and builds the server, so that
// `cache serve` only runs what it gets and the maintenance commands (gc,
// verify, pin, forget) open the upload store exactly as the server does.
// It is the one place that knows which config key feeds which
// constructor.
package app

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bos55/concordia/internal/auth"
	"github.com/bos55/concordia/internal/config"
	"github.com/bos55/concordia/internal/server"
	"github.com/bos55/concordia/internal/signkey"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/local"
	"github.com/bos55/concordia/internal/store/pullthrough"
	"github.com/bos55/concordia/internal/store/upload"
	"github.com/bos55/concordia/internal/upstream"
	"github.com/bos55/concordia/internal/version"
	"github.com/bos55/concordia/internal/zstdcache"
	"github.com/bos55/concordia/pkg/narinfo"
)

// ErrPrivateWithoutTokens refuses a private cache nobody could
// authenticate to. config.Validate refuses it too; Open checks again so a
// config built in code cannot skip it.
var ErrPrivateWithoutTokens = errors.New("private = true without tokens_file: nobody could authenticate, and a private cache is never served to everybody")

// App is a configured cache: the server and what it holds open.
type App struct {
	Server *server.Server
	// Local is the machine's store, nil when its database is absent.
	Local *local.Store
	// Upload is the upload store, nil without [upload] dir.
	Upload *upload.Store
	// Stores is how many stores are served.
	Stores int
	// Keys sign every narinfo; GeneratedKey says the first was created
	// in the state directory by this start.
	Keys         []narinfo.SecretKey
	GeneratedKey bool
	// Tokens are the credentials, nil without tokens_file.
	Tokens *auth.Tokens
	// Pull is the pull-through store, nil without an [[upstream]] that
	// serves readers.
	Pull *pullthrough.Store
	// Registry holds every metric the cache exports.
	Registry *prometheus.Registry

	upstreams *upstream.Set

	logger  *slog.Logger
	closers []func() error
}

// Open opens what cfg describes and builds its server. The tokens file is
// loaded whenever it is set, uploads or not, and private = true is
// enforced through it: a private cache of the local store alone needs
// read tokens like any other. logger nil discards.
func Open(ctx context.Context, cfg *config.Config, logger *slog.Logger) (_ *App, err error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	a := &App{logger: logger, Registry: prometheus.NewRegistry()}
	defer func() {
		if err != nil {
			a.Close()
		}
	}()
	if cfg.Upload.Private && cfg.Upload.TokensFile == "" {
		return nil, ErrPrivateWithoutTokens
	}
	if err := a.loadCredentials(cfg); err != nil {
		return nil, err
	}
	if err := a.openStores(ctx, cfg); err != nil {
		return nil, err
	}
	opts, err := a.serverOptions(cfg)
	if err != nil {
		return nil, err
	}
	if a.Server, err = server.New(opts); err != nil {
		return nil, err
	}
	return a, nil
}

func (a *App) loadCredentials(cfg *config.Config) error {
	var err error
	a.Keys, a.GeneratedKey, err = signkey.Load(cfg.SignKeyPaths, cfg.StateDir)
	if err != nil {
		return err
	}
	if a.GeneratedKey {
		a.logger.Info("generated a signing key", "name", a.Keys[0].Name(), "dir", cfg.StateDir)
	}
	if cfg.Upload.TokensFile != "" {
		if a.Tokens, err = auth.Load(cfg.Upload.TokensFile, a.logger); err != nil {
			return err
		}
	}
	return nil
}

func (a *App) openStores(ctx context.Context, cfg *config.Config) error {
	if cfg.LocalStoreEnabled() {
		ls, err := openLocal(ctx, cfg, a.logger)
		if err != nil {
			return err
		}
		a.closers = append(a.closers, ls.Close)
		a.Local = ls
	} else {
		a.logger.Warn("no local store served", "nix_db_path", cfg.NixDBPath)
	}
	set, err := a.openUpstreams(cfg)
	if err != nil {
		return err
	}
	a.upstreams = set
	if cfg.Upload.Dir == "" {
		return nil
	}
	opts := uploadOptions(cfg, a.Local, a.logger)
	opts.SignKeys = a.Keys
	opts.GCInterval = time.Duration(cfg.GC.Interval)
	if set != nil {
		// References an upstream has count as present, and an upload
		// of one of its paths must be its NAR.
		opts.Others = append(opts.Others, pullthrough.Checker(set, cfg.VirtualNixStore))
	}
	us, err := openUploadStore(ctx, cfg, opts)
	if err != nil {
		return err
	}
	a.closers = append(a.closers, us.Close)
	a.Upload = us
	return a.openPullThrough(cfg, set)
}

// The listing cache used when the compression cache is off.
const (
	listingCacheName = "listings"
	listingCacheSize = 1 << 30
)

func (a *App) serverOptions(cfg *config.Config) (server.Options, error) {
	opts := server.Options{
		Stores:            a.served(cfg.Upload.Prefer),
		Keys:              a.Keys,
		Compression:       cfg.Compression,
		NegotiateEncoding: cfg.EnableCompression,
		ZstdLevel:         cfg.Zstd.Level,
		Priority:          cfg.Priority,
		Logger:            a.logger,
		Version:           version.String(),
		Tokens:            a.Tokens,
		Private:           cfg.Upload.Private,
		ReadProgress:      time.Duration(cfg.Timeouts.ReadProgress),
		WriteProgress:     time.Duration(cfg.Timeouts.WriteProgress),
		Limits:            cfg.Limits.Values(),
		Registry:          a.Registry,
	}
	a.upstreamOptions(cfg, &opts)
	a.Stores = len(opts.Stores)
	if a.Upload != nil {
		opts.Upload = &server.Uploads{Store: a.Upload, Tokens: a.Tokens, MaxNARSize: cfg.Limits.Values().UploadBody()}
	}
	if cfg.CompressionCache.Dir != "" && cfg.CompressionCache.MaxSize > 0 {
		cc, err := zstdcache.Open(cfg.CompressionCache.Dir, int64(cfg.CompressionCache.MaxSize), cfg.Zstd.Level, a.logger)
		if err != nil {
			return opts, err
		}
		a.closers = append(a.closers, cc.Close)
		opts.Cache = server.CompressCache(cc)
		opts.Listings = opts.Cache
		opts.Collectors = cc.Collectors()
		return opts, nil
	}
	// Listings are kept on disk either way: building one reads a whole
	// NAR, and anonymous clients may ask again and again.
	lc, err := zstdcache.Open(filepath.Join(cfg.StateDir, listingCacheName), listingCacheSize, cfg.Zstd.Level, a.logger)
	if err != nil {
		return opts, err
	}
	a.closers = append(a.closers, lc.Close)
	opts.Listings = server.CompressCache(lc)
	return opts, nil
}

// served lists the open stores, the preferred one ("local" or "upload")
// first: it answers when both have a path.
func (a *App) served(prefer string) []store.Store {
	var stores []store.Store
	if a.Upload != nil && prefer != "local" {
		stores = append(stores, a.Upload)
	}
	if a.Local != nil {
		stores = append(stores, a.Local)
	}
	if a.Upload != nil && prefer == "local" {
		stores = append(stores, a.Upload)
	}
	return stores
}

// Close closes what Open opened, last first. Errors are logged, not
// returned: at shutdown nothing more can be done about them.
func (a *App) Close() {
	for i := len(a.closers) - 1; i >= 0; i-- {
		if err := a.closers[i](); err != nil {
			a.logger.Warn("close", "err", err)
		}
	}
	a.closers = nil
}

// tokensWatchInterval is how often the tokens file is reread with no
// request asking (requests reread it at most once a second themselves).
const tokensWatchInterval = 5 * time.Second

// WatchTokens rereads the tokens file when its content changes and on
// each signal from hup (SIGHUP), until ctx ends. The signing keys are not
// reloaded: they are in every cached signed narinfo and in the upload
// store; changing them takes a restart.
func (a *App) WatchTokens(ctx context.Context, hup <-chan os.Signal) {
	if a.Tokens != nil {
		go a.Tokens.Watch(ctx, tokensWatchInterval)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			a.reloadTokens()
		}
	}
}

func (a *App) reloadTokens() {
	if a.Tokens == nil {
		a.logger.Info("SIGHUP: no tokens file to reread (signing keys change with a restart)")
		return
	}
	st := a.Tokens.Reload()
	if st.Err != nil {
		a.logger.Error("SIGHUP: tokens file reread: it cannot be read, no token works", "err", st.Err)
		return
	}
	a.logger.Info("SIGHUP: tokens file reread", "tokens", st.Tokens, "refused_lines", len(st.Refused))
}
