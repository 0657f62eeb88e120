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

// toolRound measures the references on the big path's bytes, once: it
// runs inside each round of the nar group, next to the servers it is the
// reference of, so their ratios are paired.
func (b *bench) toolRound(ctx context.Context, narFile string) error {
	size := b.w.big.NarSize
	d, err := b.steady(func() (time.Duration, error) {
		d, n, err := dumpToPipe(ctx, b.w.big.Path)
		if err == nil && n != size {
			err = fmt.Errorf("nix-store --dump: %d bytes, want %d", n, size)
		}
		return d, err
	})
	if err != nil {
		return err
	}
	b.rep.add("nar", "nix-store --dump (pipe)", "MB/s, 1 stream", mbps(size, d))
	tool := func(args ...string) (time.Duration, error) {
		return b.steady(func() (time.Duration, error) { return b.timeCmd(ctx, nil, args[0], args[1:]...) })
	}
	if d, err = tool("sh", "-c", "zstd -1 -T1 -q -c \"$1\" > /dev/null", "sh", narFile); err != nil {
		return err
	}
	b.rep.add("nar", "zstd -1 -T1", "MB/s, 1 stream", mbps(size, d))
	if d, err = tool("sh", "-c", "zstd -1 -T1 -q -c \"$1\" > /dev/null & zstd -1 -T1 -q -c \"$1\" > /dev/null & wait", "sh", narFile); err != nil {
		return err
	}
	b.rep.add("nar", "zstd -1 -T1", "MB/s, 2 streams", mbps(2*size, d))
	if d, err = tool("sha256sum", narFile); err != nil {
		return err
	}
	b.rep.add("nar", "sha256sum", "MB/s, 1 stream", mbps(size, d))
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
	systems := []*server{conc, ngx, min}
	if b.o.vsBin != "" {
		vs, err := b.startConcordiaBin(ctx, b.o.vsBin, vsName+"-narinfo", "zstd", filepath.Join(b.work, "state-narinfo-vs"))
		if err != nil {
			return err
		}
		defer b.procs.stop(vs.cmd)
		if err := checkNAR(ctx, vs.base, p); err != nil {
			b.fail(vs.name, err)
		}
		systems = append(systems, vs)
		for _, m := range []string{"req/s, 1 connection", "req/s, 64 connections"} {
			b.rep.targets = append(b.rep.targets, comparison{"narinfo", m, conc.name, vs.name, false, 0, "narinfo " + m + ", this tree vs " + vsName})
		}
		b.rep.targets = append(b.rep.targets, comparison{"narinfo", "p50 us, 1 connection", conc.name, vs.name, true, 0, "narinfo p50, 1 connection, this tree vs " + vsName + " (latency ratio)"})
	}
	// Each round measures the systems one after another: paired ratios.
	b.rep.pair("narinfo")
	for i := 0; i < b.o.runs; i++ {
		for _, s := range inRound(systems, i) {
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

// benchNAR: NAR throughput per system and encoding, 1 and 8 streams, in
// rounds: each round measures the reference tools (toolRound), the warm
// servers and fresh cold ones one after another, so every ratio of the
// group is paired. With --vs-bin the other binary's servers run in the
// same rounds, right after this tree's.
func (b *bench) benchNAR(ctx context.Context) error {
	big := b.w.big
	narFile := filepath.Join(b.work, "big.nar")
	if fileSize(narFile) != big.NarSize {
		if _, err := b.runCmd(ctx, nil, "sh", "-c", "nix-store --dump \"$1\" > \"$2\"", "sh", big.Path, narFile); err != nil {
			return err
		}
	}
	var servers []*server
	for _, c := range b.cacheBins() {
		none, err := b.startConcordiaBin(ctx, c.bin, c.name+" none", "none", filepath.Join(b.work, "state-none-"+c.name))
		if err != nil {
			return err
		}
		defer b.procs.stop(none.cmd)
		servers = append(servers, none)
	}
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
	servers = append(servers, ngxNone, ngxZstd)
	for _, s := range servers {
		for _, p := range []pathInfo{big, b.w.small, b.w.closure[0]} {
			if err := checkNAR(ctx, s.base, p); err != nil {
				b.fail(s.name, err)
			}
		}
	}
	// measure times a download of the big NAR on streams connections:
	// once when the server is cold (its first download is the figure),
	// else steadily (repeated, see steady).
	measure := func(s *server, streams int, cold bool) error {
		url, _, err := fetchNarinfo(ctx, s.base, big.hashPart())
		if err != nil {
			return err
		}
		get := func() (time.Duration, error) {
			d, n, err := download(ctx, url, streams)
			if err == nil && n != big.NarSize*int64(streams) && !strings.HasSuffix(url, ".zst") {
				err = fmt.Errorf("%d bytes, want %d", n, big.NarSize*int64(streams))
			}
			return d, err
		}
		var d time.Duration
		if cold {
			d, err = get()
		} else {
			d, err = b.steady(get)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		b.rep.add("nar", s.name, fmt.Sprintf("MB/s, %d stream%s", streams, plural(streams)), mbps(big.NarSize*int64(streams), d))
		return nil
	}
	b.rep.pair("nar")
	// More rounds: the NAR figures are a second or less of disk and
	// loopback each, and nginx's sendfile ones the noisiest of all.
	for i := 0; i < b.noisyRounds(); i++ {
		if err := b.toolRound(ctx, narFile); err != nil {
			return err
		}
		for _, s := range inRound(servers, i) {
			for _, n := range []int{1, 8} {
				if err := measure(s, n, false); err != nil {
					return err
				}
			}
		}
		for _, c := range inRound(b.cacheBins(), i) {
			if err := b.coldRound(ctx, c.bin, c.name, i, measure); err != nil {
				return err
			}
		}
	}
	if b.o.vsBin != "" {
		for _, f := range []struct{ sys, metric string }{
			{"none", "MB/s, 1 stream"}, {"none", "MB/s, 8 streams"},
			{"zstd cold", "MB/s, 1 stream"}, {"zstd cold", "MB/s, 2 streams"}, {"zstd cold", "MB/s, 8 streams"},
			{"zstd warm", "MB/s, 1 stream"}, {"zstd warm", "MB/s, 8 streams"},
		} {
			b.rep.targets = append(b.rep.targets, comparison{"nar", f.metric, "concordia " + f.sys, vsName + " " + f.sys, false, 0,
				fmt.Sprintf("NAR %s, %s, this tree vs %s", f.sys, f.metric, vsName)})
		}
	}
	return nil
}

// coldRound measures fresh servers of the binary bin, each with an empty
// compression cache: one per stream count (1, 2, 8), the 1-stream one
// measured again once warm.
func (b *bench) coldRound(ctx context.Context, bin, name string, i int, measure func(*server, int, bool) error) error {
	big := b.w.big
	for _, n := range []int{1, 2, 8} {
		state := filepath.Join(b.work, fmt.Sprintf("state-cold-%s-%d-%d", name, i, n))
		cold, err := b.startConcordiaBin(ctx, bin, name+" zstd cold", "zstd", state)
		if err != nil {
			return err
		}
		if i == 0 && n == 1 {
			// The first round checks the bytes on a server of its own,
			// which leaves its cache warm: the measured one starts
			// afresh.
			if err := checkNAR(ctx, cold.base, big); err != nil {
				b.fail(cold.name, err)
			}
			b.procs.stop(cold.cmd)
			_ = os.RemoveAll(state)
			cold, err = b.startConcordiaBin(ctx, bin, name+" zstd cold", "zstd", state)
			if err != nil {
				return err
			}
		}
		err = measure(cold, n, true)
		if err == nil && n == 1 {
			// the same server, now warm
			cold.name = name + " zstd warm"
			for _, m := range []int{1, 8} {
				if err = measure(cold, m, false); err != nil {
					break
				}
			}
			if i == 0 {
				if cerr := checkNAR(ctx, cold.base, big); cerr != nil {
					b.fail(cold.name, cerr)
				}
			}
		}
		b.procs.stop(cold.cmd)
		_ = os.RemoveAll(state)
		if err != nil {
			return err
		}
	}
	return nil
}

// inRound is the order in which round i measures systems: as given in
// even rounds, reversed in odd ones, so no system always goes first (or
// always runs right after the same other one) in a paired ratio.
func inRound[T any](systems []T, i int) []T {
	if i%2 == 0 {
		return systems
	}
	r := make([]T, len(systems))
	for k, s := range systems {
		r[len(systems)-1-k] = s
	}
	return r
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
	if b.o.vsBin != "" {
		vs, err := b.startConcordiaBin(ctx, b.o.vsBin, vsName+" zstd", "zstd", filepath.Join(b.work, "state-e2e-vs"))
		if err != nil {
			return err
		}
		defer b.procs.stop(vs.cmd)
		targets = append(targets, target{vs.name, vs.base, nil, true})
		for _, wl := range []string{"closure", "big path"} {
			b.rep.targets = append(b.rep.targets, comparison{"e2e", "seconds, nix copy --from, " + wl, conc.name, vs.name, true, 0,
				"nix copy --from, " + wl + ", this tree vs " + vsName + " (time ratio)"})
		}
	}
	if sshOpts != "" {
		targets = append(targets, target{"nix copy --from ssh://", "ssh://root@127.0.0.1", []string{"NIX_SSHOPTS=" + sshOpts}, false})
	}
	// Each round copies from every target in turn: paired ratios (a
	// failed copy leaves its series short, and the row falls back to
	// the ratio of medians).
	b.rep.pair("e2e")
	// More rounds: each copy is a few hundred milliseconds of Nix's
	// client writing to its store, as noisy as the disk.
	for i := 0; i < b.noisyRounds(); i++ {
		for _, t := range inRound(targets, i) {
			for _, wl := range []struct{ name, path string }{{"closure", top}, {"big path", b.w.big.Path}} {
				dst := filepath.Join(b.work, fmt.Sprintf("dst-%d", time.Now().UnixNano()))
				args := []string{"--extra-experimental-features", "nix-command", "copy", "--from", t.url}
				if t.signed {
					args = append(args, "--option", "require-sigs", "true", "--option", "trusted-public-keys", b.pubKey)
				} else {
					args = append(args, "--no-check-sigs")
				}
				// Repeated (steady), each copy into a fresh store: the
				// closure copy from nginx is a tenth of a second, and one
				// copy a round moved the closure ratio by 1.18 between two
				// full runs of one commit. Only the first round's first
				// copy from Concordia compresses cold; the median of the
				// rounds is of warm ones.
				rep := 0
				d, err := b.steady(func() (time.Duration, error) {
					rep++
					dst := fmt.Sprintf("%s-%d", dst, rep)
					d, err := b.timeCmd(ctx, t.env, "nix", append(args[:len(args):len(args)], "--to", dst, wl.path)...)
					_ = exec.Command("chmod", "-R", "u+w", dst).Run()
					_ = os.RemoveAll(dst)
					return d, err
				})
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
// a do-nothing sink, in rounds: each round times the systems one after
// another on the same workload, so each ratio is taken pair by pair from
// runs a few seconds apart (the report's paired ratios), not from medians
// of windows minutes apart while the machine's speed drifts. Each
// Concordia run starts from an empty upload store. The workloads: the
// 200-path closure, one of 1000 paths, and two clients at once, each
// copying a closure of its own (Nix uploads the paths of a closure that
// do not depend on each other in parallel, so several narinfo commits
// meet; with two clients, more do).
func (b *bench) benchUpload(ctx context.Context) error {
	big, second := 1000, len(b.w.closure)-1
	if b.o.quick {
		big = 50
	}
	b.log.Info("building the upload workloads", "paths", big)
	top1000, err := b.buildClosure(ctx, "concordia-bench-w", big, true)
	if err != nil {
		return err
	}
	other, err := b.buildClosure(ctx, "concordia-bench-b", second, false)
	if err != nil {
		return err
	}
	loads := []struct {
		metric string
		tops   []string // one client each, run at once
	}{
		{"seconds, closure", []string{b.w.closure[len(b.w.closure)-1].Path}},
		{fmt.Sprintf("seconds, wide closure of %d", big), []string{top1000}},
		{"seconds, 2 clients at once", []string{b.w.closure[len(b.w.closure)-1].Path, other}},
	}
	b.rep.loads = append(b.rep.loads, fmt.Sprintf("upload: the closure (a chain: each path refers to the one before, so Nix uploads one at a time); a wide closure of %d paths (path i refers to i/2 and i/3, so half of them are ready at once, as in a real system's closure); two clients at once, one copying the closure and one a disjoint chain of %d paths", big+1, second+1))
	sink, err := b.startUploadSink(ctx)
	if err != nil {
		return err
	}
	defer b.procs.stop(sink.cmd)
	b.rep.pair("upload")
	// More rounds: the sink and file:// figures are a fraction of a
	// second of Nix's client each, and their ratio moved by a quarter
	// between two full runs of one commit. Within a round they are also
	// repeated (steady): each file:// copy goes to a fresh directory and
	// each client has a fresh HOME (no narinfo disk cache), so a repeat
	// does the same work; the file:// closure copy is a quarter of a
	// second, and upload vs file:// still moved by 1.18 between two
	// full runs with one copy a round.
	for i := 0; i < b.noisyRounds(); i++ {
		for _, l := range loads {
			rep := 0
			d, err := b.steady(func() (time.Duration, error) {
				rep++
				r := rep
				return b.atOnce(ctx, l.tops, func(k int, top string) (time.Duration, error) {
					dst := filepath.Join(b.work, fmt.Sprintf("upload-file-%d-%d-%d", i, r, k))
					defer os.RemoveAll(dst)
					return b.timeCmd(ctx, nil, "nix", "--extra-experimental-features", "nix-command", "copy", "--to",
						"file://"+dst+"?compression=zstd", top)
				})
			})
			if err != nil {
				return err
			}
			b.rep.add("upload", "nix copy --to file://", l.metric, d.Seconds())

			d, err = b.steady(func() (time.Duration, error) {
				return b.atOnce(ctx, l.tops, func(_ int, top string) (time.Duration, error) {
					return b.timeCmd(ctx, nil, "nix", "--extra-experimental-features", "nix-command", "copy", "--to",
						sink.base+"?compression=zstd", top)
				})
			})
			if err != nil {
				return err
			}
			b.rep.add("upload", "nix copy --to a sink (Nix client floor)", l.metric, d.Seconds())

			for _, c := range inRound(b.cacheBins(), i) {
				if d, err = b.uploadOnce(ctx, c.bin, l.tops...); err != nil {
					return fmt.Errorf("%s: %w", c.name, err)
				}
				sys := "concordia (nix copy --to http)"
				if c.bin != b.cacheBin {
					sys = vsUpload
				}
				b.rep.add("upload", sys, l.metric, d.Seconds())
			}
		}
	}
	for _, l := range loads[1:] {
		b.rep.targets = append(b.rep.targets,
			comparison{"upload", l.metric, "concordia (nix copy --to http)", "nix copy --to a sink (Nix client floor)", true, 1.3,
				"upload time vs a do-nothing HTTP sink (server's own share), " + strings.TrimPrefix(l.metric, "seconds, ")})
	}
	if b.o.vsBin != "" {
		for _, l := range loads {
			b.rep.targets = append(b.rep.targets, comparison{"upload", l.metric, "concordia (nix copy --to http)", vsUpload, true, 0,
				"upload time, " + strings.TrimPrefix(l.metric, "seconds, ") + ", this tree vs " + vsName + " (time ratio)"})
		}
	}
	return nil
}

// atOnce runs one timed client per top, all at once, and returns the
// wall time until the last one is done.
func (b *bench) atOnce(ctx context.Context, tops []string, run func(k int, top string) (time.Duration, error)) (time.Duration, error) {
	start := time.Now()
	errs := make(chan error, len(tops))
	for k, top := range tops {
		go func() {
			_, err := run(k, top)
			errs <- err
		}()
	}
	var first error
	for range tops {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return time.Since(start), first
}

// noisyRounds is the rounds of a group whose figures are short and
// disk-bound (pull, nar, e2e, upload): 2n-1 for --runs n, so the median of its
// paired ratios stands on more pairs; two full runs an hour apart
// disagreed most on these.
func (b *bench) noisyRounds() int {
	if b.o.quick {
		return b.o.runs
	}
	return 2*b.o.runs - 1
}

// vsUpload is the --vs-bin binary's figure in the upload rounds.
const vsUpload = "vs-bin (nix copy --to http)"

// uploadOnce starts an empty upload store on the cache binary bin, times
// one nix copy --to of each of tops into it, all at once, and stops it
// again (the next run's store must start empty, and a left-over server
// would hold its dir).
func (b *bench) uploadOnce(ctx context.Context, bin string, tops ...string) (time.Duration, error) {
	up, err := b.startUploadCache(ctx, bin)
	if err != nil {
		return 0, fmt.Errorf("concordia uploads: %w", err)
	}
	d, err := b.atOnce(ctx, tops, func(_ int, top string) (time.Duration, error) {
		return b.timeCmd(ctx, nil, "nix", "--extra-experimental-features", "nix-command", "copy", "--to",
			up.srv.base+"?compression=zstd", "--option", "netrc-file", up.netrc, top)
	})
	b.procs.stop(up.srv.cmd)
	_ = os.RemoveAll(up.state)
	return d, err
}
