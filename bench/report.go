package main

import (
	"context"
	"fmt"
	"image/color"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

type series struct {
	group, system, metric string
	vals                  []float64
}

// comparison is one row of the targets table: a Concordia figure over its
// reference, both measured in this run.
type comparison struct {
	group, metric, system, ref string
	lowerBetter                bool
	target                     float64 // minimum ratio (or maximum when lowerBetter)
	what                       string
}

type report struct {
	order  []string
	series map[string]*series
	notes  []string
	mach   []string
	loads  []string
	// targets are rows a group adds at run time (its figures' names
	// depend on the run, e.g. the deploy group's fleet size).
	targets []comparison
	// paired are the groups measured in rounds, one run of each system
	// per round: their ratios are taken pair by pair (pairedRatio).
	paired  map[string]bool
	started time.Time
}

func newReport() *report {
	return &report{series: map[string]*series{}, started: time.Now()}
}

func (r *report) add(group, system, metric string, v float64) {
	k := group + "\x00" + system + "\x00" + metric
	s, ok := r.series[k]
	if !ok {
		s = &series{group: group, system: system, metric: metric}
		r.series[k] = s
		r.order = append(r.order, k)
	}
	s.vals = append(s.vals, v)
}

func (r *report) note(s string) { r.notes = append(r.notes, s) }

// pair marks group as measured in rounds: the i-th value of each of its
// series was measured in round i, next to the i-th of the others.
func (r *report) pair(group string) {
	if r.paired == nil {
		r.paired = map[string]bool{}
	}
	r.paired[group] = true
}

// pairedRatio is the median of the ratios of a and ref taken round by
// round, with the lowest and highest of them; ok is false unless both
// have a value in every round. The machine's speed drifts over minutes,
// so a ratio of runs seconds apart is steadier than one of two medians
// taken minutes apart.
func pairedRatio(a, ref []float64) (med, lo, hi float64, ok bool) {
	if len(a) == 0 || len(a) != len(ref) {
		return 0, 0, 0, false
	}
	ratios := make([]float64, 0, len(a))
	for i := range a {
		if ref[i] == 0 {
			return 0, 0, 0, false
		}
		ratios = append(ratios, a[i]/ref[i])
	}
	lo, hi = minmax(ratios)
	return median(ratios), lo, hi, true
}

func (r *report) get(group, system, metric string) *series {
	return r.series[group+"\x00"+system+"\x00"+metric]
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func minmax(v []float64) (float64, float64) {
	lo, hi := v[0], v[0]
	for _, x := range v {
		if x < lo {
			lo = x
		}
		if x > hi {
			hi = x
		}
	}
	return lo, hi
}

func (r *report) machine(ctx context.Context) {
	mem := "?"
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		mem = strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0])
	}
	cpu := "?"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				cpu = strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
				break
			}
		}
	}
	r.mach = append(r.mach, fmt.Sprintf("%d cores (%s), %s, %s/%s", runtime.NumCPU(), cpu, mem, runtime.GOOS, runtime.GOARCH))
	for _, v := range [][]string{{"go", "version"}, {"nix-store", "--version"}, {"nginx", "-v"}, {"zstd", "--version"}, {"wrk", "-v"}, {"ssh", "-V"}} {
		out, _ := exec.CommandContext(ctx, v[0], v[1:]...).CombinedOutput()
		line := strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
		r.mach = append(r.mach, fmt.Sprintf("`%s`: %s", strings.Join(v, " "), line))
	}
}

func (r *report) workloads(w workloads) {
	var total int64
	for _, p := range w.closure {
		total += p.NarSize
	}
	r.loads = []string{
		fmt.Sprintf("big path: `%s`, NAR %.1f MB", w.big.Path, float64(w.big.NarSize)/1e6),
		fmt.Sprintf("many small files: `%s`, NAR %.1f MB", w.small.Path, float64(w.small.NarSize)/1e6),
		fmt.Sprintf("closure: %d paths, NAR %.1f MB in all", len(w.closure), float64(total)/1e6),
	}
}

// comparisons are the targets the cache issues set, as ratios.
var comparisons = []comparison{
	{"narinfo", "req/s, 1 connection", "concordia-narinfo", "minimal Go handler", false, 0.8, "narinfo req/s vs minimal Go handler, 1 conn"},
	{"narinfo", "req/s, 64 connections", "concordia-narinfo", "minimal Go handler", false, 0.8, "narinfo req/s vs minimal Go handler, 64 conns"},
	// Harmonia's ratio to nginx in the public cache shootout, on one
	// connection; 1.0 at 64 (the performance issue's targets).
	{"narinfo", "req/s, 1 connection", "concordia-narinfo", "nginx-narinfo", false, 0.83, "narinfo req/s vs nginx, 1 conn"},
	{"narinfo", "req/s, 64 connections", "concordia-narinfo", "nginx-narinfo", false, 1.0, "narinfo req/s vs nginx, 64 conns"},
	{"nar", "MB/s, 1 stream", "concordia none", "nix-store --dump (pipe)", false, 1.0, "NAR none vs nix-store --dump into a pipe"},
	{"nar", "MB/s, 1 stream", "concordia none", "nginx .nar", false, 0.5, "NAR none vs nginx serving the same NAR file"},
	// Parallel frames on 2 cores: one stream at least one zstd -1 -T1.
	{"nar", "MB/s, 1 stream", "concordia zstd cold", "zstd -1 -T1", false, 1.0, "zstd cold, 1 stream vs zstd -1 -T1"},
	{"nar", "MB/s, 2 streams", "concordia zstd cold", "zstd -1 -T1", false, 0.9, "zstd cold, 2 streams vs two zstd -1 -T1"},
	{"nar", "MB/s, 1 stream", "concordia zstd warm", "nginx .nar.zst", false, 0.8, "zstd warm vs nginx serving the .nar.zst"},
	{"nar", "MB/s, 8 streams", "concordia zstd warm", "nginx .nar.zst", false, 0.8, "zstd warm, 8 streams vs nginx"},
	{"rss", "peak RSS MiB, 16 downloads", "concordia none", "", true, 64, "peak RSS (MiB), 16 downloads, none"},
	{"rss", "peak RSS MiB, 16 downloads", "concordia zstd cold", "", true, 64, "peak RSS (MiB), 16 downloads, zstd cold"},
	{"e2e", "seconds, nix copy --from, closure", "concordia zstd", "nginx file:// cache (zstd)", true, 0, "nix copy --from, closure (time ratio)"},
	{"e2e", "seconds, nix copy --from, big path", "concordia zstd", "nginx file:// cache (zstd)", true, 0, "nix copy --from, big path (time ratio)"},
	{"e2e", "seconds, nix copy --from, closure", "concordia zstd", "nix copy --from ssh://", true, 0, "nix copy --from, closure vs ssh:// (time ratio)"},
	{"upload", "seconds, closure", "concordia (nix copy --to http)", "nix copy --to file://", true, 1.2, "upload time vs nix copy --to file://"},
	{"upload", "seconds, closure", "concordia (nix copy --to http)", "nix copy --to a sink (Nix client floor)", true, 1.3, "upload time vs a do-nothing HTTP sink (server's own share)"},
	{"upload", "seconds, closure", "nix copy --to a sink (Nix client floor)", "nix copy --to file://", true, 0, "do-nothing HTTP sink vs file:// (Nix's HTTP client cost)"},
	{"pull", "seconds, NAR fetch, 1 stream", "concordia cold (pulled through)", "nginx upstream (direct)", true, 1.1, "cold pull-through NAR fetch vs the upstream nginx directly (time ratio)"},
	{"pull", "seconds, NAR fetch over a 100 MB/s link", "concordia cold (pulled through)", "nginx upstream (direct)", true, 1.1, "cold pull-through NAR fetch, upstream over a 100 MB/s link, vs fetching it directly over that link (time ratio)"},
	{"pull", "MB/s, NAR fetch, 1 stream", "concordia warm (kept copy)", "nginx upstream (direct)", false, 0.8, "pulled NAR, warm, 1 stream vs nginx serving the file"},
	{"pull", "MB/s, NAR fetch, 8 streams", "concordia warm (kept copy)", "nginx upstream (direct)", false, 0.8, "pulled NAR, warm, 8 streams vs nginx"},
	{"pull", "narinfo p50 us", "concordia miss (asks the upstream)", "nginx upstream 404 (direct)", true, 0, "narinfo miss asking the upstream vs the upstream's own 404, p50"},
	{"pull", "narinfo p99 us", "concordia miss (asks the upstream)", "nginx upstream 404 (direct)", true, 0, "narinfo miss asking the upstream vs the upstream's own 404, p99"},
	{"pull", "narinfo p50 us", "concordia miss (asks the upstream)", "concordia hit (kept path)", true, 0, "narinfo miss asking the upstream vs a local hit, p50"},
	{"pull", "narinfo p99 us", "concordia miss (asks the upstream)", "concordia hit (kept path)", true, 0, "narinfo miss asking the upstream vs a local hit, p99"},
	{"shared", "MB/s, 1 stream", sysShared, sysDisk, false, 0.7, "NAR download, S3+PostgreSQL vs disk backend, 1 stream"},
	{"shared", "MB/s, 8 streams", sysShared, sysDisk, false, 0.7, "NAR download, S3+PostgreSQL vs disk backend, 8 streams"},
	{"shared", "req/s, 1 connection, one path", sysShared, sysDisk, false, 0.8, "narinfo req/s, PostgreSQL vs pebble, 1 conn, one path"},
	{"shared", "req/s, 64 connections, one path", sysShared, sysDisk, false, 0.8, "narinfo req/s, PostgreSQL vs pebble, 64 conns, one path"},
	{"shared", sharedP99, sysShared, sysDisk, true, 0, "narinfo p99, PostgreSQL vs pebble, 1 conn, one path"},
	{"shared", "req/s, 1 connection, " + distinctMetric, sysShared, sysDisk, false, 0, "narinfo req/s, PostgreSQL vs pebble, 1 conn, every closure path in turn"},
	{"shared", "req/s, 64 connections, " + distinctMetric, sysShared, sysDisk, false, 0, "narinfo req/s, PostgreSQL vs pebble, 64 conns, every closure path in turn"},
	{"shared", "req/s, 64 connections, absent paths (404)", sysShared, sysDisk, false, 0, "narinfo req/s, PostgreSQL vs pebble, 64 conns, absent paths (an index lookup each)"},
	{"shared", "seconds, upload closure", sysShared, sysDisk, true, 0, "closure upload (nix copy --to), S3+PostgreSQL vs disk backend (time ratio)"},
	{"shared", "MB/s, 16 downloads", sysTwo, sysOne, false, 0, "16 concurrent downloads, split over 2 replicas vs all on 1"},
	{"shared", "MB/s, 16 downloads", sysOne, sysDisk, false, 0, "16 concurrent downloads, 1 S3+PostgreSQL replica vs disk backend"},
	{"shared", "peak RSS MiB, 16 downloads", sysOne, sysDisk, true, 0, "peak RSS, 1 replica serving 16 downloads vs disk backend"},
	{"shared", "peak RSS MiB, 16 downloads", sysRep1, sysDisk, true, 0, "peak RSS, replica 1 of 2 serving 8 downloads vs disk backend serving 16"},
	{"shared", "peak RSS MiB, 16 downloads", sysRep2, sysDisk, true, 0, "peak RSS, replica 2 of 2 serving 8 downloads vs disk backend serving 16"},
}

func (r *report) write(dir, name string, quick bool) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var sb strings.Builder
	title := "Concordia benchmark"
	if quick {
		title += " (--quick smoke run: small workloads, one repetition; not for comparison)"
	}
	fmt.Fprintf(&sb, "# %s\n\nRun %s, took %s. Medians of each measurement's runs, min and max beside.\n\n",
		title, r.started.UTC().Format("2006-01-02 15:04 UTC"), time.Since(r.started).Round(time.Second))
	sb.WriteString("## Machine\n\n")
	for _, m := range r.mach {
		fmt.Fprintf(&sb, "- %s\n", m)
	}
	sb.WriteString("\n## Workloads\n\n")
	for _, l := range r.loads {
		fmt.Fprintf(&sb, "- %s\n", l)
	}
	sb.WriteString("\n## Targets (ratios measured in this run)\n\nA paired ratio is the median of the ratios of runs made in the same round, one of each system after another; its spread is the lowest and highest of them. The others are the ratio of the two systems' medians.\n\n| figure | Concordia | reference | ratio | spread | target | met |\n|---|---|---|---|---|---|---|\n")
	for _, c := range append(comparisons[:len(comparisons):len(comparisons)], r.targets...) {
		s := r.get(c.group, c.system, c.metric)
		if s == nil {
			continue
		}
		v := median(s.vals)
		if c.ref == "" {
			met := v <= c.target
			fmt.Fprintf(&sb, "| %s | %.1f | - | - | - | <= %.0f | %s |\n", c.what, v, c.target, yes(met))
			continue
		}
		ref := r.get(c.group, c.ref, c.metric)
		if ref == nil || median(ref.vals) == 0 {
			continue
		}
		rv := median(ref.vals)
		ratio, spread := v/rv, "unpaired"
		if r.paired[c.group] {
			if m, lo, hi, ok := pairedRatio(s.vals, ref.vals); ok {
				ratio, spread = m, fmt.Sprintf("paired, %.2f–%.2f", lo, hi)
			}
		}
		tgt, met := "-", true
		if c.target > 0 {
			if c.lowerBetter {
				tgt, met = fmt.Sprintf("<= %.2f", c.target), ratio <= c.target
			} else {
				tgt, met = fmt.Sprintf(">= %.2f", c.target), ratio >= c.target
			}
		}
		fmt.Fprintf(&sb, "| %s | %s | %s (%s) | %.2f | %s | %s | %s |\n", c.what, fmtv(v), fmtv(rv), c.ref, ratio, spread, tgt, yes(met))
	}
	groups := []string{"narinfo", "nar", "rss", "e2e", "upload", "deploy", "pull", "shared"}
	for _, g := range groups {
		var rows []*series
		for _, k := range r.order {
			if s := r.series[k]; s.group == g {
				rows = append(rows, s)
			}
		}
		if len(rows) == 0 {
			continue
		}
		fmt.Fprintf(&sb, "\n## %s\n\n| system | figure | median | min | max | runs |\n|---|---|---|---|---|---|\n", g)
		sort.SliceStable(rows, func(i, j int) bool { return rows[i].metric < rows[j].metric })
		for _, s := range rows {
			lo, hi := minmax(s.vals)
			fmt.Fprintf(&sb, "| %s | %s | %s | %s | %s | %d |\n", s.system, s.metric, fmtv(median(s.vals)), fmtv(lo), fmtv(hi), len(s.vals))
		}
		if png, err := r.chart(dir, g, rows); err == nil && png != "" {
			fmt.Fprintf(&sb, "\n![%s](%s)\n", g, png)
		}
	}
	if len(r.notes) > 0 {
		sb.WriteString("\n## Notes\n\n")
		for _, n := range r.notes {
			fmt.Fprintf(&sb, "- %s\n", n)
		}
	}
	return os.WriteFile(filepath.Join(dir, name), []byte(sb.String()), 0o644)
}

func yes(b bool) string {
	if b {
		return "yes"
	}
	return "**no**"
}

func fmtv(v float64) string {
	switch {
	case v >= 1000:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.3f", v)
	}
}

// chart draws one horizontal-ish bar chart per figure of a group.
func (r *report) chart(dir, group string, rows []*series) (string, error) {
	byMetric := map[string][]*series{}
	var metrics []string
	for _, s := range rows {
		if _, ok := byMetric[s.metric]; !ok {
			metrics = append(metrics, s.metric)
		}
		byMetric[s.metric] = append(byMetric[s.metric], s)
	}
	p := plot.New()
	p.Title.Text = "Concordia bench: " + group
	w := vg.Points(12)
	var names []string
	seen := map[string]int{}
	for _, s := range rows {
		if _, ok := seen[s.system]; !ok {
			seen[s.system] = len(names)
			names = append(names, s.system)
		}
	}
	// One chart per group would mix units; draw the first metric only when
	// units differ, listing it in the title.
	m := metrics[0]
	for _, cand := range metrics {
		if strings.HasPrefix(cand, "MB/s, 1 stream") || strings.HasPrefix(cand, "req/s, 64") || strings.HasPrefix(cand, "seconds, nix copy --from, closure") {
			m = cand
		}
	}
	p.Title.Text += " (" + m + ")"
	vals := make(plotter.Values, 0)
	var labels []string
	for _, s := range byMetric[m] {
		vals = append(vals, median(s.vals))
		labels = append(labels, s.system)
	}
	bars, err := plotter.NewBarChart(vals, w)
	if err != nil {
		return "", err
	}
	bars.Horizontal = true
	bars.Color = color.RGBA{R: 0x2b, G: 0x6c, B: 0xb0, A: 0xff}
	bars.LineStyle.Width = 0
	p.Add(bars)
	// the value at the end of each bar
	xys := make(plotter.XYs, len(vals))
	texts := make([]string, len(vals))
	for i, v := range vals {
		xys[i] = plotter.XY{X: v, Y: float64(i)}
		texts[i] = " " + fmtv(v)
	}
	if lbl, err := plotter.NewLabels(plotter.XYLabels{XYs: xys, Labels: texts}); err == nil {
		p.Add(lbl)
	}
	p.NominalY(labels...)
	p.X.Label.Text = m
	p.X.Min = 0
	max := 0.0
	for _, v := range vals {
		if v > max {
			max = v
		}
	}
	p.X.Max = max * 1.25
	name := group + ".png"
	if err := p.Save(170*vg.Millimeter, vg.Length(25+9*len(labels))*vg.Millimeter, filepath.Join(dir, name)); err != nil {
		return "", err
	}
	return name, nil
}
