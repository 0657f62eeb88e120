package app

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/bos55/concordia/internal/config"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/local"
	"github.com/bos55/concordia/internal/store/upload"
)

// ErrNoUploadStore is OpenUploads' error for a config without [upload]
// dir.
var ErrNoUploadStore = errors.New("no upload store: set [upload] dir")

// OpenUploads opens the upload store of cfg for a maintenance command
// (gc, verify, pin, forget) run beside or instead of the server: the
// same options as Open, but no signing keys (nothing is published) and
// no periodic GC (the command does its one job and exits). References
// are checked against the local store too when it can be opened, so
// verify --repair never drops a path whose dependency is in /nix/store;
// when it cannot, the upload store alone is still worked on. close
// closes both. A store a running server holds is upload.ErrLocked.
func OpenUploads(ctx context.Context, cfg *config.Config, logger *slog.Logger) (us *upload.Store, close func(), err error) {
	if cfg.Upload.Dir == "" {
		return nil, nil, ErrNoUploadStore
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	var ls *local.Store
	if cfg.LocalStoreEnabled() {
		if ls, err = openLocal(ctx, cfg, logger); err != nil {
			ls = nil
		}
	}
	closeLocal := func() {
		if ls != nil {
			ls.Close()
		}
	}
	us, err = openUploadStore(ctx, cfg, uploadOptions(cfg, ls, logger))
	if err != nil {
		closeLocal()
		return nil, nil, err
	}
	return us, func() { us.Close(); closeLocal() }, nil
}

func openLocal(ctx context.Context, cfg *config.Config, logger *slog.Logger) (*local.Store, error) {
	return local.Open(ctx, local.Options{
		DBPath:       cfg.NixDBPath,
		StoreDir:     cfg.VirtualNixStore,
		RealStoreDir: cfg.RealNixStore,
		LogDir:       cfg.NixLogDir(),
		Logger:       logger,
	})
}

// uploadOptions are the upload store's options every opener shares; ls,
// when not nil, is the store references may also be found in. Limits
// are the server's even for maintenance: a bound raised in the config
// must not make `cache verify --repair` quarantine what the server
// accepted.
func uploadOptions(cfg *config.Config, ls *local.Store, logger *slog.Logger) upload.Options {
	var others []store.Store
	if ls != nil {
		others = append(others, ls)
	}
	var redirect time.Duration
	if s3 := cfg.Upload.S3; s3 != nil && s3.Redirect {
		redirect = time.Duration(s3.RedirectTTL)
	}
	return upload.Options{
		RedirectTTL: redirect,
		StoreDir:    cfg.VirtualNixStore,
		Others:      others,
		MaxSize:     int64(cfg.GC.MaxSize),
		MaxAge:      time.Duration(cfg.GC.MaxAge),
		Remember:    time.Duration(cfg.GC.Remember),
		// Pending NARs and the paths kept for writers (gc.writer_ttl: 0
		// is off, as for the store).
		PendingGrace: time.Duration(cfg.Upload.PendingMaxAge),
		MaxPending:   int64(cfg.Upload.PendingMaxSize),
		InlineMax:    inlineMax(cfg.Upload.InlineMaxSize),
		Index:        cfg.Upload.Index,
		WriterTTL:    time.Duration(cfg.GC.WriterTTL),
		HardMaxSize:  int64(cfg.GC.HardMaxSize),
		Limits:       cfg.Limits.Values(),
		Logger:       logger,

		// The deploy history's bound (each report's is in Limits).
		MaxDeployReports: cfg.Upload.DeployReportsMax,
	}
}

// inlineMax is upload.inline_max_size as the store takes it: 0 is off.
func inlineMax(n config.Size) int64 {
	if n == 0 {
		return -1
	}
	return int64(n)
}
