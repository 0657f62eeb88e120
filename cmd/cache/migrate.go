package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"path/filepath"

	"github.com/bos55/concordia/internal/app"
	"github.com/bos55/concordia/internal/cli"
	"github.com/bos55/concordia/internal/config"
	"github.com/bos55/concordia/internal/migrate"
	"github.com/bos55/concordia/internal/store/upload"
)

type migrateOptions struct {
	from, to, fromDir, toDir string
	dryRun, json             bool
}

func newMigrateCommand() *cli.Command {
	var o migrateOptions
	return &cli.Command{
		Name:  "migrate",
		Usage: "--from CONFIG|--from-dir DIR --to CONFIG|--to-dir DIR [--dry-run] [--json]",
		Short: "copy one upload store into another (disk to bucket and database, or back), verified",
		Long: `Copies every path of the --from upload store ([upload] dir, or [upload.s3] and
[upload.database]) into the --to one through its verified intake, references
first, signatures kept, with listings, times, logs, realisations, pins and
tombstones. What the destination has is skipped (run again to finish an
interrupted copy), another NAR there is reported; exit 1 if anything was not
copied. Stop the servers of both stores first.`,
		Flags: func(fs *flag.FlagSet) {
			fs.StringVar(&o.from, "from", "", "the config `FILE` naming the source store")
			fs.StringVar(&o.to, "to", "", "the config `FILE` naming the destination store")
			fs.StringVar(&o.fromDir, "from-dir", "", "the source is the disk store in `DIR` (overrides --from's)")
			fs.StringVar(&o.toDir, "to-dir", "", "the destination is the disk store in `DIR` (overrides --to's)")
			fs.BoolVar(&o.dryRun, "dry-run", false, "say what would be copied, copy nothing")
			fs.BoolVar(&o.json, "json", false, "print the report as JSON")
		},
		Run: func(ctx context.Context, env *cli.Env, args []string) error {
			if len(args) != 0 {
				return cli.Usagef("migrate takes no arguments")
			}
			return runMigrate(ctx, env, &o)
		},
	}
}

func runMigrate(ctx context.Context, env *cli.Env, o *migrateOptions) error {
	from, to, err := o.load()
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(env.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	src, closeSrc, err := openForMigrate(ctx, from, log)
	if err != nil {
		return fmt.Errorf("source: %w", err)
	}
	defer closeSrc()
	dst, closeDst, err := openForMigrate(ctx, to, log)
	if err != nil {
		return fmt.Errorf("destination: %w", err)
	}
	defer closeDst()
	progress := func(p migrate.Progress) {
		if p.Done == p.Total || p.Done%100 == 0 {
			fmt.Fprintf(env.Stderr, "migrate: %d of %d paths\n", p.Done, p.Total)
		}
	}
	rep, err := migrate.Run(ctx, src, dst, migrate.Options{Logger: log, DryRun: o.dryRun, Progress: progress})
	if rep != nil {
		rep.Write(env.Stdout, o.json)
	}
	if errors.Is(err, migrate.ErrIncomplete) {
		return &cli.ExitError{Code: 1}
	}
	return err
}

// load reads both ends' configs; the destination looks in the source's
// machine store, so the references the source found there count.
func (o *migrateOptions) load() (from, to *config.Config, err error) {
	if from, err = loadStoreConfig("--from", o.from, o.fromDir); err != nil {
		return nil, nil, err
	}
	if to, err = loadStoreConfig("--to", o.to, o.toDir); err != nil {
		return nil, nil, err
	}
	if sameStore(from.Upload, to.Upload) {
		return nil, nil, cli.Usagef("--from and --to name the same upload store")
	}
	if from.VirtualNixStore != to.VirtualNixStore {
		return nil, nil, cli.Usagef("--from names paths in %s, --to in %s", from.VirtualNixStore, to.VirtualNixStore)
	}
	to.NixDBPath, to.RealNixStore = from.NixDBPath, from.RealNixStore
	return from, to, nil
}

// loadStoreConfig reads the config of one end; dir, when set, makes
// that end the disk store in dir.
func loadStoreConfig(flagName, path, dir string) (*config.Config, error) {
	if path == "" && dir == "" {
		return nil, cli.Usagef("%s CONFIG or %s-dir DIR is needed", flagName, flagName)
	}
	cfg, err := config.Load(path)
	if err != nil {
		return nil, err
	}
	if dir != "" {
		cfg.Upload.Dir, cfg.Upload.S3, cfg.Upload.Database = dir, nil, nil
	}
	if cfg.Upload.Dir == "" {
		return nil, cli.Usagef("%s: no upload store: set [upload] dir", flagName)
	}
	return cfg, nil
}

// sameStore reports whether two configs name one store (the same bucket
// or database, or the same directory of a disk store): it cannot be
// copied into itself, and opening it twice would wait for its own lock.
func sameStore(a, b config.Upload) bool {
	if a.S3 != nil || b.S3 != nil {
		return a.S3 != nil && b.S3 != nil &&
			(a.S3.Endpoint == b.S3.Endpoint && a.S3.Bucket == b.S3.Bucket && a.S3.Prefix == b.S3.Prefix ||
				a.Database != nil && b.Database != nil && a.Database.URL == b.Database.URL)
	}
	real := func(dir string) string {
		abs, _ := filepath.Abs(dir)
		if r, err := filepath.EvalSymlinks(abs); err == nil {
			return r
		}
		return abs
	}
	return real(a.Dir) == real(b.Dir)
}

// openForMigrate opens the upload store cfg names, as maintenance
// commands do: without signing keys (the signatures copied are the
// source's) and without periodic GC.
func openForMigrate(ctx context.Context, cfg *config.Config, logger *slog.Logger) (*upload.Store, func(), error) {
	us, done, err := app.OpenUploads(ctx, cfg, logger)
	if errors.Is(err, upload.ErrLocked) {
		err = fmt.Errorf("%w: stop the server using it (`cache serve`) and migrate again", err)
	}
	return us, done, err
}
