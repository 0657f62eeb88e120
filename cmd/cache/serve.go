package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/bos55/concordia/internal/app"
	"github.com/bos55/concordia/internal/cli"
	"github.com/bos55/concordia/internal/config"
	"github.com/bos55/concordia/internal/server"
	"github.com/bos55/concordia/internal/store/local"
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

// loadServeConfig merges the file (or Harmonia's $CONFIG_FILE), the keys
// of Harmonia's environment variables and the flags, which win.
func loadServeConfig(opts serveOptions) (*config.Config, error) {
	cfg, err := config.LoadEnv(opts.config, os.Getenv)
	if err != nil {
		return nil, err
	}
	if opts.bind != "" {
		cfg.Bind = opts.bind
	}
	cfg.SignKeyPaths = append(cfg.SignKeyPaths, opts.signKeys...)
	if opts.compression != "" {
		cfg.Compression = opts.compression
	}
	if opts.stateDir != "" {
		if err := cfg.SetStateDir(opts.stateDir); err != nil {
			return nil, err
		}
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
	log := slog.New(slog.NewTextHandler(env.Stderr, &slog.HandlerOptions{Level: cfg.Level()}))
	if cfg.MemoryLimit > 0 && os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(int64(cfg.MemoryLimit))
	}
	a, err := app.Open(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer a.Close()
	mode, _ := cfg.SocketFileMode()
	ln, err := server.Listen(cfg.Bind, mode)
	if err != nil {
		return err
	}
	go a.WatchTokens(ctx, hup)
	printWelcome(env.Stdout, ln.Addr().String(), cfg, a.Keys, a.GeneratedKey)
	log.Info("serving", "addr", ln.Addr().String(), "stores", a.Stores, "keys", len(a.Keys),
		"compression", cfg.Compression, "tls", cfg.TLSCertPath != "", "private", cfg.Upload.Private)
	err = a.Server.Run(ctx, ln, server.RunOptions{
		TLSCert: cfg.TLSCertPath, TLSKey: cfg.TLSKeyPath,
		ReadHeaderTimeout: time.Duration(cfg.Timeouts.ReadHeader),
		IdleTimeout:       time.Duration(cfg.Timeouts.Idle),
	})
	if err == nil {
		log.Info("stopped")
	}
	return err
}
