package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/bos55/concordia/internal/cli"
	"github.com/bos55/concordia/internal/config"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/local"
	"github.com/bos55/concordia/internal/store/upload"
)

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

func (f *uploadFlags) register(fs *flag.FlagSet, http bool) {
	// Current values as defaults, so interspersed can register again.
	fs.StringVar(&f.config, "config", f.config, "read the [upload] and [gc] settings from the TOML config `FILE`")
	fs.StringVar(&f.dir, "dir", f.dir, "the upload store `DIR` (overrides the config's [upload] dir)")
	if http {
		fs.StringVar(&f.cache, "cache", f.cache, "talk to the running cache at `URL` instead of opening the store")
		fs.StringVar(&f.tokenFile, "token-file", f.tokenFile, "read the token for --cache from `FILE` (or $CONCORDIA_TOKEN): admin for gc, verify and pin --list, pin or admin to pin")
	}
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

// open opens the upload store for maintenance. References are checked
// against the local store too (verify --repair must not drop a path whose
// dependency lives in /nix/store).
func (f *uploadFlags) open(ctx context.Context, env *cli.Env) (*upload.Store, func(), error) {
	cfg, err := f.load()
	if err != nil {
		return nil, nil, err
	}
	log := slog.New(slog.NewTextHandler(env.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var others []store.Store
	closers := []func(){}
	if cfg.LocalStoreEnabled() {
		if ls, err := local.Open(ctx, local.Options{DBPath: cfg.NixDBPath, StoreDir: cfg.VirtualNixStore,
			RealStoreDir: cfg.RealNixStore, Logger: log}); err == nil {
			others = append(others, ls)
			closers = append(closers, func() { ls.Close() })
		}
	}
	us, err := upload.Open(ctx, cfg.Upload.Dir, upload.Options{
		StoreDir: cfg.VirtualNixStore,
		Others:   others,
		MaxSize:  int64(cfg.GC.MaxSize),
		MaxAge:   time.Duration(cfg.GC.MaxAge),
		Remember: time.Duration(cfg.GC.Remember),
		// verify checks blobs against the same limits the server
		// enforces: a bound raised in the config must not make
		// `cache verify --repair` quarantine what the server accepted.
		Limits: cfg.Limits.Values(),
		Logger: log,
	})
	if err != nil {
		for _, c := range closers {
			c()
		}
		if strings.Contains(err.Error(), "timeout") { // bbolt: another process holds the lock
			return nil, nil, fmt.Errorf("%w (is `cache serve` running? use --cache URL)", err)
		}
		return nil, nil, err
	}
	return us, func() {
		us.Close()
		for _, c := range closers {
			c()
		}
	}, nil
}

// token reads the token for the HTTP API.
func (f *uploadFlags) token() (string, error) {
	if f.tokenFile != "" {
		b, err := os.ReadFile(f.tokenFile)
		if err != nil {
			return "", err
		}
		return strings.TrimSpace(string(b)), nil
	}
	if t := os.Getenv("CONCORDIA_TOKEN"); t != "" {
		return t, nil
	}
	return "", cli.Usagef("--cache needs a token (admin for gc, verify and pin --list; pin or admin to pin): --token-file FILE or $CONCORDIA_TOKEN")
}

// call makes one API request with the token; the response body is
// decoded into out when non-nil (a *string gets the text as it is).
func (f *uploadFlags) call(ctx context.Context, method, path string, body io.Reader, out any) error {
	tok, err := f.token()
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(f.cache, "/")+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(data)))
	}
	if text, ok := out.(*string); ok {
		*text = strings.TrimSpace(string(data))
		return nil
	}
	if out != nil {
		return json.Unmarshal(data, out)
	}
	return nil
}

func newGCCommand() *cli.Command {
	var f uploadFlags
	var dryRun bool
	var maxSize, maxAge string
	return &cli.Command{
		Name:  "gc",
		Usage: "[--dry-run] [--config FILE | --dir DIR | --cache URL] [--max-size SIZE] [--max-age AGE]",
		Short: "garbage-collect the upload store without breaking a closure",
		Long: `Deletes uploaded paths by the [gc] policy (max_size, max_age), least
recently used first, never a pinned path or anything in a pinned path's
closure, and never a path that a kept path refers to. Build logs and
realisations go with the paths they belong to (and count in max_size); the
NAR hash of each deleted path is remembered for [gc] remember, so the same
store path cannot be uploaded again with another NAR meanwhile (cache
forget). --dry-run prints what would go. With --cache the running server
does it (needs an admin token).`,
		Flags: func(fs *flag.FlagSet) {
			f.register(fs, true)
			fs.BoolVar(&dryRun, "dry-run", false, "print what would be deleted, delete nothing")
			fs.StringVar(&maxSize, "max-size", "", "override [gc] max_size (e.g. 50G)")
			fs.StringVar(&maxAge, "max-age", "", "override [gc] max_age (e.g. 30d)")
		},
		Run: func(ctx context.Context, env *cli.Env, args []string) error {
			if len(args) != 0 {
				return cli.Usagef("gc takes no arguments")
			}
			var p upload.Policy
			if maxSize != "" {
				n, err := config.ParseSize(maxSize)
				if err != nil {
					return cli.Usagef("--max-size: %v", err)
				}
				p.MaxSize = n
			}
			if maxAge != "" {
				d, err := config.ParseDuration(maxAge)
				if err != nil {
					return cli.Usagef("--max-age: %v", err)
				}
				p.MaxAge = d
			}
			var rep upload.Report
			if f.cache != "" {
				q := fmt.Sprintf("/api/gc?dry-run=%t", dryRun)
				if p.MaxSize > 0 {
					q += fmt.Sprintf("&max-size=%d", p.MaxSize)
				}
				if p.MaxAge > 0 {
					q += "&max-age=" + p.MaxAge.String()
				}
				if err := f.call(ctx, http.MethodPost, q, nil, &rep); err != nil {
					return err
				}
			} else {
				cfg, err := f.load()
				if err != nil {
					return err
				}
				if p.MaxSize == 0 {
					p.MaxSize = int64(cfg.GC.MaxSize)
				}
				if p.MaxAge == 0 {
					p.MaxAge = time.Duration(cfg.GC.MaxAge)
				}
				us, done, err := f.open(ctx, env)
				if err != nil {
					return err
				}
				defer done()
				r, err := us.GCWith(ctx, p, dryRun)
				if err != nil {
					return err
				}
				rep = *r
			}
			printReport(env.Stdout, &rep)
			return nil
		},
	}
}

func printReport(w io.Writer, rep *upload.Report) {
	verb := "deleted"
	if rep.DryRun {
		verb = "would delete"
	}
	for _, p := range rep.Deleted {
		fmt.Fprintf(w, "%s %s\n", verb, p)
	}
	fmt.Fprintf(w, "%s %d of %d paths, %s in %d NAR files; %s -> %s",
		verb, len(rep.Deleted), rep.PathsBefore, humanBytes(rep.Freed), rep.BlobsDeleted,
		humanBytes(rep.SizeBefore), humanBytes(rep.SizeAfter))
	if rep.LogsDeleted > 0 || rep.RealisationsDeleted > 0 {
		fmt.Fprintf(w, "; %d build logs and %d realisations with them", rep.LogsDeleted, rep.RealisationsDeleted)
	}
	if rep.Pending > 0 {
		fmt.Fprintf(w, "; %d abandoned uploads removed", rep.Pending)
	}
	if rep.Tombstones > 0 || rep.TombstonesPruned > 0 {
		fmt.Fprintf(w, "; %d NAR hashes remembered, %d forgotten (gc.remember)", rep.Tombstones, rep.TombstonesPruned)
	}
	fmt.Fprintln(w)
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
