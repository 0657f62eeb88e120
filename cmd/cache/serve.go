package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/bos55/concordia/internal/auth"
	"github.com/bos55/concordia/internal/cli"
	"github.com/bos55/concordia/internal/config"
	"github.com/bos55/concordia/internal/server"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/local"
	"github.com/bos55/concordia/internal/store/upload"
	"github.com/bos55/concordia/internal/version"
	"github.com/bos55/concordia/internal/zstdcache"
	"github.com/bos55/concordia/pkg/narinfo"
)

type serveOptions struct {
	config      string
	bind        string
	signKeys    stringList
	compression string
	stateDir    string
	logLevel    string
	prepareDB   bool
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

func newServeCommand() *cli.Command {
	var opts serveOptions
	return &cli.Command{
		Name:  "serve",
		Usage: "[--config FILE] [--bind ADDR] [--sign-key FILE]... [--compression zstd|none] [--state-dir DIR]",
		Short: "serve the local Nix store (and uploads) as a binary cache",
		Long: `Serves the machine's /nix/store, read from the Nix database, as a signed,
zstd-compressed binary cache; with [upload] configured it also takes paths
pushed with 'nix copy --to'.

Without any configuration it listens on 127.0.0.1:5000, serves the local
store if /nix/var/nix/db/db.sqlite exists, and signs with a key it creates
on first start in its state directory (named <hostname>-1); it prints the
public key and the nix.conf lines clients need.

The config file is TOML; Harmonia's settings.toml keys are accepted with the
same meaning. Flags override the file. SIGTERM or SIGINT stops accepting and
lets in-flight downloads finish. SIGHUP rereads the tokens file (which is
also reread whenever its content changes); it never stops the server.
With private = true every read needs a token with read; the server
refuses to start without a tokens_file.

An unprivileged server can read the Nix database only while its -wal and
-shm files exist; Nix removes them when its last process exits. Run
'cache serve --prepare-db' as root before starting the server (the NixOS
module does it in ExecStartPre) to create them.`,
		Flags: func(fs *flag.FlagSet) {
			fs.StringVar(&opts.config, "config", "", "read the TOML config `FILE`")
			fs.StringVar(&opts.bind, "bind", "", "listen on `ADDR` (host:port or unix:/path)")
			fs.Var(&opts.signKeys, "sign-key", "sign narinfos with the secret key in `FILE` (repeatable)")
			fs.StringVar(&opts.compression, "compression", "", "announce NARs as zstd or none")
			fs.StringVar(&opts.stateDir, "state-dir", "", "keep the generated key and caches in `DIR`")
			fs.StringVar(&opts.logLevel, "log-level", "", "debug, info, warn or error")
			fs.BoolVar(&opts.prepareDB, "prepare-db", false, "create the Nix database's -wal/-shm files (run as root, e.g. ExecStartPre=+) so an unprivileged server can read it, then exit")
		},
		Run: func(ctx context.Context, env *cli.Env, args []string) error {
			if len(args) != 0 {
				return cli.Usagef("serve takes no arguments")
			}
			return runServe(ctx, env, opts)
		},
	}
}

// loadServeConfig merges the file, Harmonia's environment variables and
// the flags. Like Harmonia, CONFIG_FILE names the file when --config is
// not given, and SIGN_KEY_PATHS (whitespace-separated) and SIGN_KEY_PATH
// add keys: Harmonia's NixOS module passes its keys that way.
func loadServeConfig(opts serveOptions) (*config.Config, error) {
	if opts.config == "" {
		opts.config = os.Getenv("CONFIG_FILE")
	}
	cfg, err := config.Load(opts.config)
	if err != nil {
		return nil, err
	}
	if p := os.Getenv("SIGN_KEY_PATH"); p != "" {
		cfg.SignKeyPaths = append(cfg.SignKeyPaths, p)
	}
	cfg.SignKeyPaths = append(cfg.SignKeyPaths, strings.Fields(os.Getenv("SIGN_KEY_PATHS"))...)
	if opts.bind != "" {
		cfg.Bind = opts.bind
	}
	cfg.SignKeyPaths = append(cfg.SignKeyPaths, opts.signKeys...)
	if opts.compression != "" {
		cfg.Compression = opts.compression
	}
	if opts.stateDir != "" {
		abs, err := filepath.Abs(opts.stateDir)
		if err != nil {
			return nil, err
		}
		if cfg.CompressionCache.Dir == filepath.Join(cfg.StateDir, "zstd") {
			cfg.CompressionCache.Dir = filepath.Join(abs, "zstd")
		}
		cfg.StateDir = abs
	}
	if opts.logLevel != "" {
		cfg.LogLevel = opts.logLevel
	}
	if err := cfg.Validate(); err != nil {
		return nil, cli.Usagef("%v", err)
	}
	return cfg, nil
}

func runServe(ctx context.Context, env *cli.Env, opts serveOptions) error {
	// From the start, so a SIGHUP (systemctl reload) can never end the
	// process: it rereads the tokens file.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	cfg, err := loadServeConfig(opts)
	if err != nil {
		return err
	}
	if opts.prepareDB {
		if !cfg.LocalStoreEnabled() {
			return fmt.Errorf("prepare-db: no Nix database at %q", cfg.NixDBPath)
		}
		return local.Prepare(ctx, cfg.NixDBPath)
	}
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel))
	log := slog.New(slog.NewTextHandler(env.Stderr, &slog.HandlerOptions{Level: level}))
	if cfg.MemoryLimit > 0 && os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(int64(cfg.MemoryLimit))
	}
	a, err := newApp(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer a.close()
	mode, _ := cfg.SocketFileMode()
	ln, err := server.Listen(cfg.Bind, mode)
	if err != nil {
		return err
	}
	go a.reloadOnHUP(ctx, hup)
	if a.tokens != nil {
		go a.tokens.Watch(ctx, tokensWatchInterval)
	}
	printWelcome(env.Stdout, ln.Addr().String(), cfg, a.keys, a.generated)
	log.Info("serving", "addr", ln.Addr().String(), "stores", a.stores, "keys", len(a.keys),
		"compression", cfg.Compression, "tls", cfg.TLSCertPath != "", "private", cfg.Upload.Private)
	err = a.srv.Run(ctx, ln, server.RunOptions{
		TLSCert: cfg.TLSCertPath, TLSKey: cfg.TLSKeyPath,
		ReadHeaderTimeout: time.Duration(cfg.Timeouts.ReadHeader),
		IdleTimeout:       time.Duration(cfg.Timeouts.Idle),
	})
	if err == nil {
		log.Info("stopped")
	}
	return err
}

// tokensWatchInterval is how often the tokens file is reread with no
// request asking (requests reread it at most once a second themselves).
const tokensWatchInterval = 5 * time.Second

// app is a configured cache: the server and what it holds open. runServe
// runs it; tests build it from a config.
type app struct {
	srv       *server.Server
	tokens    *auth.Tokens // nil without tokens_file
	keys      []narinfo.SecretKey
	generated bool
	stores    int
	log       *slog.Logger
	cleanups  []func() error
}

func (a *app) close() {
	for i := len(a.cleanups) - 1; i >= 0; i-- {
		if err := a.cleanups[i](); err != nil {
			a.log.Warn("close", "err", err)
		}
	}
	a.cleanups = nil
}

// reloadOnHUP rereads the tokens file on each SIGHUP. The signing keys
// are not reloaded: they are in every cached signed narinfo and in the
// upload store; changing them takes a restart.
func (a *app) reloadOnHUP(ctx context.Context, hup <-chan os.Signal) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			if a.tokens == nil {
				a.log.Info("SIGHUP: no tokens file to reread (signing keys change with a restart)")
				continue
			}
			st := a.tokens.Reload()
			if st.Err != nil {
				a.log.Error("SIGHUP: tokens file reread: it cannot be read, no token works", "err", st.Err)
				continue
			}
			a.log.Info("SIGHUP: tokens file reread", "tokens", st.Tokens, "refused_lines", len(st.Refused))
		}
	}
}

// newApp opens the stores and builds the server cfg describes. The tokens
// file is loaded whenever it is set, uploads or not, and private = true is
// enforced through it: a private cache of the local store alone needs
// read tokens like any other.
func newApp(ctx context.Context, cfg *config.Config, log *slog.Logger) (*app, error) {
	a := &app{log: log}
	built := false
	defer func() {
		if !built {
			a.close()
		}
	}()
	var err error
	if cfg.Upload.Private && cfg.Upload.TokensFile == "" {
		return nil, errors.New("private = true without tokens_file: nobody could authenticate, and a private cache is never served to everybody")
	}
	a.keys, a.generated, err = signingKeys(cfg, log)
	if err != nil {
		return nil, err
	}
	if cfg.Upload.TokensFile != "" {
		if a.tokens, err = auth.Load(cfg.Upload.TokensFile, log); err != nil {
			return nil, err
		}
	}

	var localStore, uploadStore store.Store
	var uploads *server.Uploads
	if cfg.LocalStoreEnabled() {
		ls, err := local.Open(ctx, local.Options{
			DBPath:       cfg.NixDBPath,
			StoreDir:     cfg.VirtualNixStore,
			RealStoreDir: cfg.RealNixStore,
			LogDir:       logDirFor(cfg.NixDBPath),
			Logger:       log,
		})
		if err != nil {
			return nil, err
		}
		a.cleanups = append(a.cleanups, ls.Close)
		localStore = ls
	} else {
		log.Warn("no local store served", "nix_db_path", cfg.NixDBPath)
	}
	if cfg.Upload.Dir != "" {
		var others []store.Store
		if localStore != nil {
			others = append(others, localStore)
		}
		us, err := upload.Open(ctx, cfg.Upload.Dir, upload.Options{
			StoreDir:   cfg.VirtualNixStore,
			SignKeys:   a.keys,
			Others:     others,
			MaxSize:    int64(cfg.GC.MaxSize),
			MaxAge:     time.Duration(cfg.GC.MaxAge),
			GCInterval: time.Duration(cfg.GC.Interval),
			Remember:   time.Duration(cfg.GC.Remember),
			Limits:     cfg.Limits.Values(),
			Logger:     log,
		})
		if err != nil {
			return nil, err
		}
		a.cleanups = append(a.cleanups, us.Close)
		uploads = &server.Uploads{Store: us, Tokens: a.tokens, MaxNARSize: cfg.Limits.Values().UploadBody()}
		uploadStore = us
	}
	var stores []store.Store
	for _, st := range preferOrder(cfg.Upload.Prefer, localStore, uploadStore) {
		if st != nil {
			stores = append(stores, st)
		}
	}
	a.stores = len(stores)

	sopts := server.Options{
		Stores:            stores,
		Keys:              a.keys,
		Compression:       cfg.Compression,
		NegotiateEncoding: cfg.EnableCompression,
		ZstdLevel:         cfg.Zstd.Level,
		Priority:          cfg.Priority,
		Logger:            log,
		Version:           version.String(),
		Tokens:            a.tokens,
		Private:           cfg.Upload.Private,
		ReadProgress:      time.Duration(cfg.Timeouts.ReadProgress),
		WriteProgress:     time.Duration(cfg.Timeouts.WriteProgress),
		Limits:            cfg.Limits.Values(),
	}
	if uploads != nil {
		sopts.Upload = uploads
	}
	if cfg.CompressionCache.Dir != "" && cfg.CompressionCache.MaxSize > 0 {
		cc, err := zstdcache.Open(cfg.CompressionCache.Dir, int64(cfg.CompressionCache.MaxSize), cfg.Zstd.Level, log)
		if err != nil {
			return nil, err
		}
		a.cleanups = append(a.cleanups, cc.Close)
		sopts.Cache = server.CompressCache(cc)
		sopts.Listings = sopts.Cache
		sopts.Collectors = cc.Collectors()
	} else {
		// Listings are kept on disk either way: building one reads a
		// whole NAR, and anonymous clients may ask again and again.
		lc, err := zstdcache.Open(filepath.Join(cfg.StateDir, listingCacheName), listingCacheSize, cfg.Zstd.Level, log)
		if err != nil {
			return nil, err
		}
		a.cleanups = append(a.cleanups, lc.Close)
		sopts.Listings = server.CompressCache(lc)
	}
	if a.srv, err = server.New(sopts); err != nil {
		return nil, err
	}
	built = true
	return a, nil
}

// The listing cache used when the compression cache is off.
const (
	listingCacheName = "listings"
	listingCacheSize = 1 << 30
)

// preferOrder puts the preferred store first.
func preferOrder(prefer string, localStore, uploadStore store.Store) []store.Store {
	if prefer == "local" {
		return []store.Store{localStore, uploadStore}
	}
	return []store.Store{uploadStore, localStore}
}

// logDirFor finds the build logs beside a database at
// <root>/nix/var/nix/db/db.sqlite: <root>/nix/var/log/nix/drvs.
func logDirFor(dbPath string) string {
	const suffix = "/var/nix/db/db.sqlite"
	if prefix, ok := strings.CutSuffix(dbPath, suffix); ok {
		return prefix + "/var/log/nix/drvs"
	}
	return local.DefaultLogDir
}

// signingKeys loads the configured keys. With none configured it uses the
// state directory's key, creating it (named <hostname>-1) on first start;
// generated reports that.
func signingKeys(cfg *config.Config, log *slog.Logger) (keys []narinfo.SecretKey, generated bool, err error) {
	for _, p := range cfg.SignKeyPaths {
		k, err := narinfo.LoadSecretKeyFile(p)
		if err != nil {
			return nil, false, fmt.Errorf("sign key %s: %w", p, err)
		}
		keys = append(keys, k)
	}
	if len(keys) > 0 {
		return keys, false, nil
	}
	k, generated, err := stateKey(cfg.StateDir)
	if err != nil {
		return nil, false, err
	}
	if generated {
		log.Info("generated a signing key", "name", k.Name(), "dir", cfg.StateDir)
	}
	return []narinfo.SecretKey{k}, generated, nil
}

// stateKey loads <dir>/signing-key.sec, or creates it (0600, atomically,
// never replacing one another process made at the same moment).
func stateKey(dir string) (narinfo.SecretKey, bool, error) {
	secPath := filepath.Join(dir, "signing-key.sec")
	k, err := narinfo.LoadSecretKeyFile(secPath)
	if err == nil {
		return k, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return narinfo.SecretKey{}, false, fmt.Errorf("state key %s: %w", secPath, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return narinfo.SecretKey{}, false, fmt.Errorf("state dir: %w", err)
	}
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "concordia"
	}
	sec, pub, err := narinfo.GenerateKey(host + "-1")
	if err != nil {
		return narinfo.SecretKey{}, false, err
	}
	if err := writeNewFile(secPath, []byte(sec.String()), 0o600); err != nil {
		if k, lerr := narinfo.LoadSecretKeyFile(secPath); lerr == nil {
			return k, false, nil // another server won the race
		}
		return narinfo.SecretKey{}, false, err
	}
	pubPath := filepath.Join(dir, "signing-key.pub")
	if err := writeNewFile(pubPath, []byte(pub.String()), 0o644); err != nil && !errors.Is(err, fs.ErrExist) {
		return narinfo.SecretKey{}, false, err
	}
	return sec, true, nil
}

func printWelcome(w io.Writer, addr string, cfg *config.Config, keys []narinfo.SecretKey, generated bool) {
	scheme := "http"
	if cfg.TLSCertPath != "" {
		scheme = "https"
	}
	url := scheme + "://" + addr
	if network, path, _ := config.SplitBind(cfg.Bind); network == "unix" {
		url = "unix:" + path
	}
	pubs := make([]string, len(keys))
	for i, k := range keys {
		pubs[i] = k.Public().String()
	}
	if generated {
		fmt.Fprintf(w, "Created signing key %s in %s\n", keys[0].Name(), cfg.StateDir)
	}
	fmt.Fprintf(w, "Public key: %s\n", strings.Join(pubs, " "))
	fmt.Fprintf(w, "nix.conf:\n  substituters = %s\n  trusted-public-keys = %s\n", url, strings.Join(pubs, " "))
	// Last, so whoever waits for this line has read the others.
	fmt.Fprintf(w, "Serving %s on %s\n", cfg.VirtualNixStore, url)
}
