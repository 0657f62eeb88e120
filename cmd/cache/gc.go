package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/bos55/concordia/internal/cli"
	"github.com/bos55/concordia/internal/config"
	"github.com/bos55/concordia/internal/store"
)

type gcOptions struct {
	uploadFlags
	dryRun          bool
	maxSize, maxAge string
}

func newGCCommand() *cli.Command {
	var opts gcOptions
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
			opts.register(fs)
			fs.BoolVar(&opts.dryRun, "dry-run", false, "print what would be deleted, delete nothing")
			fs.StringVar(&opts.maxSize, "max-size", "", "override [gc] max_size (e.g. 50G)")
			fs.StringVar(&opts.maxAge, "max-age", "", "override [gc] max_age (e.g. 30d)")
		},
		Run: func(ctx context.Context, env *cli.Env, args []string) error {
			if len(args) != 0 {
				return cli.Usagef("gc takes no arguments")
			}
			return runGC(ctx, env, &opts)
		},
	}
}

func runGC(ctx context.Context, env *cli.Env, opts *gcOptions) error {
	p, err := opts.policy()
	if err != nil {
		return err
	}
	var rep *store.GCReport
	if opts.cache != "" {
		c, err := opts.client()
		if err != nil {
			return err
		}
		if rep, err = c.GC(ctx, p, opts.dryRun); err != nil {
			return err
		}
	} else {
		cfg, err := opts.load()
		if err != nil {
			return err
		}
		// The flags bound this run; the config bounds what they leave.
		if p.MaxSize == 0 {
			p.MaxSize = int64(cfg.GC.MaxSize)
		}
		if p.MaxAge == 0 {
			p.MaxAge = time.Duration(cfg.GC.MaxAge)
		}
		us, done, err := opts.open(ctx, env)
		if err != nil {
			return err
		}
		defer done()
		if rep, err = us.GCWith(ctx, p, opts.dryRun); err != nil {
			return err
		}
	}
	printReport(env.Stdout, rep)
	return nil
}

// policy is the bounds the flags set.
func (opts *gcOptions) policy() (store.Policy, error) {
	var p store.Policy
	if opts.maxSize != "" {
		n, err := config.ParseSize(opts.maxSize)
		if err != nil {
			return p, cli.Usagef("--max-size: %v", err)
		}
		p.MaxSize = n
	}
	if opts.maxAge != "" {
		d, err := config.ParseDuration(opts.maxAge)
		if err != nil {
			return p, cli.Usagef("--max-age: %v", err)
		}
		p.MaxAge = d
	}
	return p, nil
}

func printReport(w io.Writer, rep *store.GCReport) {
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
	if rep.KeptForWriters > 0 {
		fmt.Fprintf(w, "; %d paths kept: an uploader was told they exist within gc.writer_ttl", rep.KeptForWriters)
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
