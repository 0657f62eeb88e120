package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"strings"

	"github.com/bos55/concordia/internal/app"
	"github.com/bos55/concordia/internal/cacheapi"
	"github.com/bos55/concordia/internal/cli"
	"github.com/bos55/concordia/internal/config"
	"github.com/bos55/concordia/internal/store/upload"
)

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

// uploadFlags say which upload store a maintenance command works on:
// the [upload] dir of the config (or --dir), opened directly, or a
// running server's HTTP API (--cache URL), since a running `cache serve`
// holds the store's lock.
type uploadFlags struct {
	config    string
	dir       string
	cache     string
	tokenFile string
}

func (f *uploadFlags) register(fs *flag.FlagSet) {
	// Current values as defaults, so interspersed can register again.
	fs.StringVar(&f.config, "config", f.config, "read the [upload] and [gc] settings from the TOML config `FILE`")
	fs.StringVar(&f.dir, "dir", f.dir, "the upload store `DIR` (overrides the config's [upload] dir)")
	fs.StringVar(&f.cache, "cache", f.cache, "talk to the running cache at `URL` instead of opening the store")
	fs.StringVar(&f.tokenFile, "token-file", f.tokenFile, "read the token for --cache from `FILE` (or $CONCORDIA_TOKEN): admin for gc, verify and pin --list, pin or admin to pin")
}

func (f *uploadFlags) load() (*config.Config, error) {
	cfg, err := config.Load(f.config)
	if err != nil {
		return nil, err
	}
	if f.dir != "" {
		cfg.Upload.Dir = f.dir
	}
	if cfg.Upload.Dir == "" {
		return nil, cli.Usagef("no upload store: set [upload] dir in --config or pass --dir")
	}
	return cfg, nil
}

// open opens the upload store for maintenance, as the server would.
func (f *uploadFlags) open(ctx context.Context, env *cli.Env) (*upload.Store, func(), error) {
	cfg, err := f.load()
	if err != nil {
		return nil, nil, err
	}
	log := slog.New(slog.NewTextHandler(env.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	us, done, err := app.OpenUploads(ctx, cfg, log)
	if errors.Is(err, upload.ErrLocked) {
		return nil, nil, fmt.Errorf("%w (is `cache serve` running? use --cache URL)", err)
	}
	return us, done, err
}

// client is the API client of --cache, with the token of --token-file
// or $CONCORDIA_TOKEN.
func (f *uploadFlags) client() (*cacheapi.Client, error) {
	tok, err := cacheapi.Token(f.tokenFile, "", f.cache)
	if err != nil {
		return nil, err
	}
	if tok == "" {
		return nil, cli.Usagef("--cache needs a token (admin for gc, verify and pin --list; pin or admin to pin): --token-file FILE or $CONCORDIA_TOKEN")
	}
	return &cacheapi.Client{URL: f.cache, Token: tok}, nil
}
