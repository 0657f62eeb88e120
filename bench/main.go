// Command bench measures Concordia side by side with its references on one
// machine, in one run: nginx serving a file:// binary cache (the floor for
// serving bytes that already exist), Nix's own ssh transport, a minimal Go
// handler (the floor of net/http here), and the reference tools on the same
// bytes (nix-store --dump, zstd -1 -T1, sha256sum). Every figure is reported
// as a ratio to its reference measured in the same run, because this machine
// is shared and noisy and lone seconds mean little.
//
// It also checks correctness: every NAR a system returns is hashed and
// compared with the NarHash Nix recorded (the hash of nix-store --dump), so a
// wrong byte fails the run. Timings never fail it.
//
//	go run ./bench            # full run, report in bench/results/
//	go run ./bench --quick    # smoke run for CI (small workloads, one repetition)
//	go run ./bench agree A/report.md B/report.md   # do two runs' ratios agree?
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

type options struct {
	quick   bool
	runs    int
	out     string
	work    string
	keep    bool
	only    string
	dur     time.Duration
	verbose bool
	vsBin   string
	compare string
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "minimal-server" {
		minimalServer(os.Args[2:])
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "upload-sink" {
		uploadSink(os.Args[2:])
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "agree" {
		agreeMain(os.Args[2:])
		return
	}
	var o options
	flag.BoolVar(&o.quick, "quick", false, "smoke run: small workloads, one repetition, short durations")
	flag.IntVar(&o.runs, "runs", 5, "repetitions of each measurement (medians are reported)")
	flag.StringVar(&o.out, "out", "", "report directory (default bench/results, or a temp dir with --quick)")
	flag.StringVar(&o.work, "work", "", "work directory (default: a fresh temp dir, removed at the end)")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory")
	flag.StringVar(&o.only, "only", "", "comma-separated groups to run: narinfo,nar,e2e,upload,upload-rtt,rss,deploy,pull,shared (default all)")
	flag.DurationVar(&o.dur, "duration", 4*time.Second, "length of each load measurement")
	flag.BoolVar(&o.verbose, "v", false, "verbose logs")
	flag.StringVar(&o.vsBin, "vs-bin", "", "a second cache binary (e.g. another commit's), measured in the same rounds as this tree's in the narinfo, nar, e2e, upload and upload-rtt groups")
	flag.StringVar(&o.compare, "compare", "", "a git commit (or branch, tag) whose cache binary is built and measured as --vs-bin: this tree's speed against it in one run")
	flag.Parse()
	if o.quick {
		o.runs = 1
		o.dur = time.Second
	}
	lvl := slog.LevelInfo
	if o.verbose {
		lvl = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o, log); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options, log *slog.Logger) error {
	procs := &procSet{log: log}
	defer procs.stopAll()

	work := o.work
	if work == "" {
		d, err := os.MkdirTemp("", "concordia-bench-")
		if err != nil {
			return err
		}
		work = d
		if !o.keep {
			defer os.RemoveAll(d)
		}
	}
	if o.out == "" {
		if o.quick {
			o.out = filepath.Join(work, "results")
		} else {
			o.out = filepath.Join("bench", "results")
		}
	}
	// The groups with a results file of their own write it when run alone.
	name := "report.md"
	if o.only == "pull" || o.only == "shared" || o.only == "deploy" {
		name = o.only + "-report.md"
	}
	b := &bench{o: o, log: log, work: work, procs: procs, rep: newReport()}
	if o.compare != "" {
		if o.vsBin != "" {
			return errors.New("--compare and --vs-bin both name the other binary: give one")
		}
		bin, err := b.buildAt(ctx, o.compare)
		if err != nil {
			return fmt.Errorf("--compare %s: %w", o.compare, err)
		}
		b.o.vsBin = bin
	}
	err := b.all(ctx)
	if ctx.Err() != nil {
		return errors.New("interrupted")
	}
	if werr := b.rep.write(o.out, name, o.quick); werr != nil && err == nil {
		err = werr
	}
	if err == nil {
		fmt.Printf("report: %s\n", filepath.Join(o.out, name))
	}
	if b.wrong > 0 {
		return fmt.Errorf("%d system(s) returned wrong bytes (see report)", b.wrong)
	}
	return err
}
