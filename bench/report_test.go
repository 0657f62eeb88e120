package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPairedRatio: ratios are taken round by round, so a drift of the
// machine between rounds (here the second half three times slower)
// leaves the ratio where each round puts it.
func TestPairedRatio(t *testing.T) {
	ref := []float64{1, 1, 3, 3, 3}
	a := []float64{1.1, 1.3, 3.6, 3.6, 3.3}
	med, lo, hi, ok := pairedRatio(a, ref)
	if !ok || med < 1.19 || med > 1.21 || lo < 1.09 || lo > 1.11 || hi < 1.29 || hi > 1.31 {
		t.Errorf("pairedRatio = %.3f (%.3f–%.3f) %v, want 1.2 (1.1–1.3)", med, lo, hi, ok)
	}
	if _, _, _, ok := pairedRatio(a, ref[:4]); ok {
		t.Error("rounds missing a value: paired anyway")
	}
	if _, _, _, ok := pairedRatio(a, []float64{1, 0, 1, 1, 1}); ok {
		t.Error("a zero reference: paired anyway")
	}
}

// TestReportPaired: a paired group's target row shows the paired ratio
// and its spread; another group's says it is unpaired.
func TestReportPaired(t *testing.T) {
	r := newReport()
	r.pair("upload")
	for i, v := range []float64{2, 2, 6} {
		r.add("upload", "nix copy --to a sink (Nix client floor)", "seconds, closure", v)
		r.add("upload", "concordia (nix copy --to http)", "seconds, closure", v*[]float64{1.5, 1.4, 1.3}[i])
		r.add("upload", "nix copy --to file://", "seconds, closure", 1)
	}
	r.add("e2e", "concordia zstd", "seconds, nix copy --from, closure", 2)
	r.add("e2e", "nginx file:// cache (zstd)", "seconds, nix copy --from, closure", 1)
	dir := t.TempDir()
	if err := r.write(dir, "r.md", true); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "r.md"))
	s := string(b)
	for _, want := range []string{
		// medians 3 and 2 would say 1.50; the rounds say 1.30 to 1.50
		"| upload time vs a do-nothing HTTP sink (server's own share) | 3.000 | 2.000 (nix copy --to a sink (Nix client floor)) | 1.40 | paired, 1.30–1.50 |",
		"| nix copy --from, closure (time ratio) | 2.000 | 1.000 (nginx file:// cache (zstd)) | 2.00 | unpaired |",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("report lacks %q:\n%s", want, s)
		}
	}
}
