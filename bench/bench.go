package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"
)

type bench struct {
	o     options
	log   *slog.Logger
	work  string
	procs *procSet
	rep   *report
	wrong int

	cacheBin       string
	keySec, keyPub string // files
	pubKey         string
	w              workloads
	fcNone, fcZstd string // file:// caches written by nix copy
	homes          atomic.Int64
}

// nixEnv gives each Nix invocation a fresh HOME and XDG_CACHE_HOME: Nix keeps
// narinfo answers in ~/.cache and a stale one would hide a server bug.
func (b *bench) nixEnv() []string {
	n := b.homes.Add(1)
	home := filepath.Join(b.work, "homes", fmt.Sprint(n))
	_ = os.MkdirAll(home, 0o700)
	env := []string{"HOME=" + home, "XDG_CACHE_HOME=" + filepath.Join(home, "cache")}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "HOME=") && !strings.HasPrefix(kv, "XDG_CACHE_HOME=") {
			env = append(env, kv)
		}
	}
	return env
}

func (b *bench) want(group string) bool {
	if b.o.only == "" {
		return true
	}
	for _, g := range strings.Split(b.o.only, ",") {
		if g == group {
			return true
		}
	}
	return false
}

func (b *bench) fail(system string, err error) {
	b.wrong++
	b.rep.note(fmt.Sprintf("WRONG BYTES from %s: %v", system, err))
	b.log.Error("wrong bytes", "system", system, "err", err)
}

func (b *bench) all(ctx context.Context) error {
	for _, t := range []string{"nix-store", "nix", "nginx", "wrk", "zstd", "sha256sum", "go"} {
		if _, err := exec.LookPath(t); err != nil {
			return fmt.Errorf("%s is needed (apt-get install nix-bin nginx wrk zstd): %w", t, err)
		}
	}
	b.rep.machine(ctx)
	if b.o.only == "deploy" {
		// The fleet builds its own cache and deployer.
		return b.benchDeploy(ctx)
	}

	b.cacheBin = filepath.Join(b.work, "cache")
	if _, err := b.runCmd(ctx, nil, "go", "build", "-o", b.cacheBin, "./cmd/cache"); err != nil {
		return err
	}
	b.keySec, b.keyPub = filepath.Join(b.work, "key.sec"), filepath.Join(b.work, "key.pub")
	if _, err := os.Stat(b.keySec); err != nil {
		if _, err := b.runCmd(ctx, nil, "nix-store", "--generate-binary-cache-key", "bench-1", b.keySec, b.keyPub); err != nil {
			return err
		}
	}
	pub, err := os.ReadFile(b.keyPub)
	if err != nil {
		return err
	}
	b.pubKey = strings.TrimSpace(string(pub))

	// The pull and deploy groups make their own workloads; the others
	// share these.
	if b.o.only != "pull" && b.o.only != "deploy" {
		if err := b.sharedWorkloads(ctx); err != nil {
			return err
		}
	}

	steps := []struct {
		group string
		fn    func(context.Context) error
	}{
		{"tools", b.benchTools},
		{"narinfo", b.benchNarinfo},
		{"nar", b.benchNAR},
		{"rss", b.benchRSS},
		{"e2e", b.benchE2E},
		{"upload", b.benchUpload},
		{"upload-rtt", b.benchUploadRTT},
		{"deploy", b.benchDeploy},
		{"pull", b.benchPull},
		{"shared", b.benchShared},
	}
	for _, s := range steps {
		if !b.want(s.group) {
			continue
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		b.log.Info("measuring", "group", s.group)
		t0 := time.Now()
		if err := s.fn(ctx); err != nil {
			b.rep.note(fmt.Sprintf("%s: not measured: %v", s.group, err))
			b.log.Error("group failed", "group", s.group, "err", err)
			if ctx.Err() != nil {
				return ctx.Err()
			}
		}
		b.log.Info("done", "group", s.group, "took", time.Since(t0).Round(time.Millisecond))
	}
	return nil
}

// sharedWorkloads builds the big path, the many small files and the
// closure, and writes them to the file:// caches nginx serves.
func (b *bench) sharedWorkloads(ctx context.Context) error {
	var err error
	if b.w, err = b.buildWorkloads(ctx); err != nil {
		return fmt.Errorf("building workloads: %w", err)
	}
	b.rep.workloads(b.w)

	paths := []string{b.w.big.Path, b.w.small.Path}
	for _, p := range b.w.closure {
		paths = append(paths, p.Path)
	}
	b.fcNone = filepath.Join(b.work, "filecache-none")
	b.fcZstd = filepath.Join(b.work, "filecache-zstd")
	if !b.want("narinfo") && !b.want("nar") && !b.want("rss") && !b.want("e2e") {
		return nil // only those groups serve the file:// caches
	}
	for dir, comp := range map[string]string{b.fcNone: "none", b.fcZstd: "zstd"} {
		b.log.Info("writing a file:// cache for nginx", "compression", comp)
		url := fmt.Sprintf("file://%s?compression=%s&secret-key=%s", dir, comp, b.keySec)
		args := append([]string{"--extra-experimental-features", "nix-command", "copy", "--to", url}, paths...)
		if _, err := b.runCmd(ctx, nil, "nix", args...); err != nil {
			return err
		}
	}
	return nil
}

func mbps(bytes int64, d time.Duration) float64 {
	return float64(bytes) / 1e6 / d.Seconds()
}

// benchTools measures the references on the big path's bytes.
func (b *bench) benchTools(ctx context.Context) error {
	narFile := filepath.Join(b.work, "big.nar")
	if fileSize(narFile) != b.w.big.NarSize {
		if _, err := b.runCmd(ctx, nil, "sh", "-c", "nix-store --dump \"$1\" > \"$2\"", "sh", b.w.big.Path, narFile); err != nil {
			return err
		}
	}
	size := b.w.big.NarSize
	for i := 0; i < b.o.runs; i++ {
		d, n, err := dumpToPipe(ctx, b.w.big.Path)
		if err != nil {
			return err
		}
		b.rep.add("nar", "nix-store --dump (pipe)", "MB/s, 1 stream", mbps(n, d))
		d, err = b.timeCmd(ctx, nil, "sh", "-c", "zstd -1 -T1 -q -c \"$1\" > /dev/null", "sh", narFile)
		if err != nil {
			return err
		}
		b.rep.add("nar", "zstd -1 -T1", "MB/s, 1 stream", mbps(size, d))
		d, err = b.timeCmd(ctx, nil, "sh", "-c", "zstd -1 -T1 -q -c \"$1\" > /dev/null & zstd -1 -T1 -q -c \"$1\" > /dev/null & wait", "sh", narFile)
		if err != nil {
			return err
		}
		b.rep.add("nar", "zstd -1 -T1", "MB/s, 2 streams", mbps(2*size, d))
		d, err = b.timeCmd(ctx, nil, "sha256sum", narFile)
		if err != nil {
			return err
		}
		b.rep.add("nar", "sha256sum", "MB/s, 1 stream", mbps(size, d))
	}
	return nil
}

// benchNarinfo: latency on one keep-alive connection and throughput with 64.
func (b *bench) benchNarinfo(ctx context.Context) error {
	p := b.w.closure[len(b.w.closure)/2]
	conc, err := b.startConcordia(ctx, "concordia-narinfo", "zstd", filepath.Join(b.work, "state-narinfo"))
	if err != nil {
		return err
	}
	defer b.procs.stop(conc.cmd)
	ngx, err := b.startNginx(ctx, "nginx-narinfo", b.fcZstd)
	if err != nil {
		return err
	}
	defer b.procs.stop(ngx.cmd)
	body, err := os.ReadFile(filepath.Join(b.fcZstd, p.hashPart()+".narinfo"))
	if err != nil {
		return err
	}
	min, err := b.startMinimal(ctx, string(body))
	if err != nil {
		return err
	}
	defer b.procs.stop(min.cmd)
	if err := checkNAR(ctx, conc.base, p); err != nil {
		b.fail("concordia", err)
	}
	// Each round measures the three one after another: paired ratios.
	b.rep.pair("narinfo")
	for i := 0; i < b.o.runs; i++ {
		for _, s := range []*server{conc, ngx, min} {
			url := s.base + "/" + p.hashPart() + ".narinfo"
			r1, err := b.runWrk(ctx, url, 1, 1)
			if err != nil {
				return err
			}
			r64, err := b.runWrk(ctx, url, 2, 64)
			if err != nil {
				return err
			}
			if r1.errors+r64.errors > 0 {
				b.fail(s.name, fmt.Errorf("%d failed narinfo requests under load", r1.errors+r64.errors))
			}
			b.rep.add("narinfo", s.name, "req/s, 1 connection", r1.rps)
			b.rep.add("narinfo", s.name, "p50 us, 1 connection", float64(r1.p50.Microseconds()))
			b.rep.add("narinfo", s.name, "p99 us, 1 connection", float64(r1.p99.Microseconds()))
			b.rep.add("narinfo", s.name, "req/s, 64 connections", r64.rps)
		}
	}
	return nil
}

// benchNAR: NAR throughput per system and encoding, 1 and 8 streams.
func (b *bench) benchNAR(ctx context.Context) error {
	big := b.w.big
	none, err := b.startConcordia(ctx, "concordia none", "none", filepath.Join(b.work, "state-none"))
	if err != nil {
		return err
	}
	defer b.procs.stop(none.cmd)
	ngxNone, err := b.startNginx(ctx, "nginx .nar", b.fcNone)
	if err != nil {
		return err
	}
	defer b.procs.stop(ngxNone.cmd)
	ngxZstd, err := b.startNginx(ctx, "nginx .nar.zst", b.fcZstd)
	if err != nil {
		return err
	}
	defer b.procs.stop(ngxZstd.cmd)
	for _, s := range []*server{none, ngxNone, ngxZstd} {
		for _, p := range []pathInfo{big, b.w.small, b.w.closure[0]} {
			if err := checkNAR(ctx, s.base, p); err != nil {
				b.fail(s.name, err)
			}
		}
	}
	measure := func(s *server, streams int) error {
		url, _, err := fetchNarinfo(ctx, s.base, big.hashPart())
		if err != nil {
			return err
		}
		d, _, err := download(ctx, url, streams)
		if err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		b.rep.add("nar", s.name, fmt.Sprintf("MB/s, %d stream%s", streams, plural(streams)), mbps(big.NarSize*int64(streams), d))
		return nil
	}
	for i := 0; i < b.o.runs; i++ {
		for _, s := range []*server{none, ngxNone, ngxZstd} {
			for _, n := range []int{1, 8} {
				if err := measure(s, n); err != nil {
					return err
				}
			}
		}
		// zstd cold: a fresh server with an empty compression cache per run.
		for _, n := range []int{1, 2, 8} {
			cold, err := b.startConcordia(ctx, "concordia zstd cold", "zstd", filepath.Join(b.work, fmt.Sprintf("state-cold-%d-%d", i, n)))
			if err != nil {
				return err
			}
			if i == 0 && n == 1 {
				if err := checkNAR(ctx, cold.base, big); err != nil {
					b.fail(cold.name, err)
				}
				b.procs.stop(cold.cmd)
				_ = os.RemoveAll(filepath.Join(b.work, fmt.Sprintf("state-cold-%d-%d", i, n)))
				cold, err = b.startConcordia(ctx, "concordia zstd cold", "zstd", filepath.Join(b.work, fmt.Sprintf("state-cold-%d-%d", i, n)))
				if err != nil {
					return err
				}
			}
			err = measure(cold, n)
			if err == nil && n == 1 {
				// the same server, now warm
				cold.name = "concordia zstd warm"
				for _, m := range []int{1, 8} {
					if err = measure(cold, m); err != nil {
						break
					}
				}
				if i == 0 {
					if cerr := checkNAR(ctx, cold.base, big); cerr != nil {
						b.fail("concordia zstd warm", cerr)
					}
				}
			}
			b.procs.stop(cold.cmd)
			_ = os.RemoveAll(filepath.Join(b.work, fmt.Sprintf("state-cold-%d-%d", i, n)))
			if err != nil {
				return err
			}
		}
	}
	return nil
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// benchRSS: peak RSS of each server while 16 clients download the big NAR.
func (b *bench) benchRSS(ctx context.Context) error {
	type mk func() (*server, error)
	systems := []mk{
		func() (*server, error) {
			return b.startConcordia(ctx, "concordia none", "none", filepath.Join(b.work, "state-rss-none"))
		},
		func() (*server, error) {
			return b.startConcordia(ctx, "concordia zstd cold", "zstd", filepath.Join(b.work, "state-rss-zstd"))
		},
		func() (*server, error) { return b.startNginx(ctx, "nginx .nar", b.fcNone) },
	}
	for i := 0; i < b.o.runs; i++ {
		for _, start := range systems {
			s, err := start()
			if err != nil {
				return err
			}
			url, _, err := fetchNarinfo(ctx, s.base, b.w.big.hashPart())
			if err == nil {
				_, _, err = download(ctx, url, 16)
			}
			rss := peakRSS(s.cmd.Process.Pid)
			b.procs.stop(s.cmd)
			_ = os.RemoveAll(filepath.Join(b.work, "state-rss-zstd"))
			if err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
			b.rep.add("rss", s.name, "peak RSS MiB, 16 downloads", float64(rss)/(1<<20))
		}
	}
	return nil
}

// benchE2E: the real client, nix copy --from each system into a fresh
// chroot store, signatures checked (ssh: Nix's own transport, unsigned).
func (b *bench) benchE2E(ctx context.Context) error {
	conc, err := b.startConcordia(ctx, "concordia zstd", "zstd", filepath.Join(b.work, "state-e2e"))
	if err != nil {
		return err
	}
	defer b.procs.stop(conc.cmd)
	concNone, err := b.startConcordia(ctx, "concordia none", "none", filepath.Join(b.work, "state-e2e-none"))
	if err != nil {
		return err
	}
	defer b.procs.stop(concNone.cmd)
	ngx, err := b.startNginx(ctx, "nginx file:// cache (zstd)", b.fcZstd)
	if err != nil {
		return err
	}
	defer b.procs.stop(ngx.cmd)
	_, sshOpts, err := b.startSSHD(ctx)
	if err != nil {
		b.rep.note("ssh transport not measured: " + err.Error())
	}
	top := b.w.closure[len(b.w.closure)-1].Path
	type target struct {
		name, url string
		env       []string
		signed    bool
	}
	targets := []target{
		{conc.name, conc.base, nil, true},
		{concNone.name, concNone.base, nil, true},
		{ngx.name, ngx.base, nil, true},
	}
	if sshOpts != "" {
		targets = append(targets, target{"nix copy --from ssh://", "ssh://root@127.0.0.1", []string{"NIX_SSHOPTS=" + sshOpts}, false})
	}
	// Each round copies from every target in turn: paired ratios (a
	// failed copy leaves its series short, and the row falls back to
	// the ratio of medians).
	b.rep.pair("e2e")
	for i := 0; i < b.o.runs; i++ {
		for _, t := range targets {
			for _, wl := range []struct{ name, path string }{{"closure", top}, {"big path", b.w.big.Path}} {
				dst := filepath.Join(b.work, fmt.Sprintf("dst-%d", time.Now().UnixNano()))
				args := []string{"--extra-experimental-features", "nix-command", "copy", "--from", t.url, "--to", dst}
				if t.signed {
					args = append(args, "--option", "require-sigs", "true", "--option", "trusted-public-keys", b.pubKey)
				} else {
					args = append(args, "--no-check-sigs")
				}
				d, err := b.timeCmd(ctx, t.env, "nix", append(args, wl.path)...)
				_ = exec.Command("chmod", "-R", "u+w", dst).Run()
				_ = os.RemoveAll(dst)
				if err != nil {
					b.fail(t.name, err)
					continue
				}
				b.rep.add("e2e", t.name, "seconds, nix copy --from, "+wl.name, d.Seconds())
			}
		}
	}
	return nil
}

// benchUpload: nix copy --to Concordia against nix copy --to file:// and
// a do-nothing sink, in rounds: each round times the three one after
// another on the same closure, so each ratio is taken pair by pair from
// runs a few seconds apart (the report's paired ratios), not from medians
// of windows minutes apart while the machine's speed drifts. Each
// Concordia run starts from an empty upload store.
func (b *bench) benchUpload(ctx context.Context) error {
	top := b.w.closure[len(b.w.closure)-1].Path
	tokDir := filepath.Join(b.work, "upload")
	if err := os.MkdirAll(tokDir, 0o700); err != nil {
		return err
	}
	sink, err := b.startUploadSink(ctx)
	if err != nil {
		return err
	}
	defer b.procs.stop(sink.cmd)
	b.rep.pair("upload")
	for i := 0; i < b.o.runs; i++ {
		dst := filepath.Join(b.work, fmt.Sprintf("upload-file-%d", i))
		d, err := b.timeCmd(ctx, nil, "nix", "--extra-experimental-features", "nix-command", "copy", "--to",
			"file://"+dst+"?compression=zstd", top)
		_ = os.RemoveAll(dst)
		if err != nil {
			return err
		}
		b.rep.add("upload", "nix copy --to file://", "seconds, closure", d.Seconds())

		d, err = b.timeCmd(ctx, nil, "nix", "--extra-experimental-features", "nix-command", "copy", "--to",
			sink.base+"?compression=zstd", top)
		if err != nil {
			return err
		}
		b.rep.add("upload", "nix copy --to a sink (Nix client floor)", "seconds, closure", d.Seconds())

		if d, err = b.uploadOnce(ctx, b.cacheBin, top); err != nil {
			return err
		}
		b.rep.add("upload", "concordia (nix copy --to http)", "seconds, closure", d.Seconds())
		if b.o.vsBin != "" {
			if d, err = b.uploadOnce(ctx, b.o.vsBin, top); err != nil {
				return fmt.Errorf("--vs-bin: %w", err)
			}
			b.rep.add("upload", vsUpload, "seconds, closure", d.Seconds())
		}
	}
	if b.o.vsBin != "" {
		b.rep.targets = append(b.rep.targets, comparison{"upload", "seconds, closure", "concordia (nix copy --to http)", vsUpload, true, 0,
			"upload time, this tree vs --vs-bin (time ratio)"})
	}
	return nil
}

// vsUpload is the --vs-bin binary's figure in the upload rounds.
const vsUpload = "vs-bin (nix copy --to http)"

// uploadOnce starts an empty upload store on the cache binary bin, times
// one nix copy --to of top into it and stops it again (the next run's
// store must start empty, and a left-over server would hold its dir).
func (b *bench) uploadOnce(ctx context.Context, bin, top string) (time.Duration, error) {
	saved := b.cacheBin
	b.cacheBin = bin
	up, err := b.startUploadCache(ctx)
	b.cacheBin = saved
	if err != nil {
		return 0, fmt.Errorf("concordia uploads: %w", err)
	}
	d, err := b.timeCmd(ctx, nil, "nix", "--extra-experimental-features", "nix-command", "copy", "--to",
		up.srv.base+"?compression=zstd", "--option", "netrc-file", up.netrc, top)
	b.procs.stop(up.srv.cmd)
	_ = os.RemoveAll(up.state)
	return d, err
}
