package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestAgreement: a report's targets table read back from the file
// report.write made, and two runs compared row by row: 10% apart agrees,
// 20% does not, a row in one run only is counted, and a row without a
// reference compares its value.
func TestAgreement(t *testing.T) {
	mk := func(share, rss float64) []targetRow {
		r := newReport()
		r.pair("upload")
		for range 3 {
			r.add("upload", "nix copy --to a sink (Nix client floor)", "seconds, closure", 1)
			r.add("upload", "concordia (nix copy --to http)", "seconds, closure", share)
			r.add("upload", "nix copy --to file://", "seconds, closure", 1)
		}
		r.add("rss", "concordia none", "peak RSS MiB, 16 downloads", rss)
		dir := t.TempDir()
		if err := r.write(dir, "report.md", true); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(filepath.Join(dir, "report.md"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		rows, err := readTargets(f)
		if err != nil {
			t.Fatal(err)
		}
		return rows
	}
	a, b := mk(1.5, 40), mk(1.65, 48)
	if len(a) != 4 {
		t.Fatalf("read %d target rows, want the share rows and a peak RSS row: %+v", len(a), a)
	}
	var out bytes.Buffer
	bad, unmatched := agreement(&out, "A", "B", a, b)
	// upload vs sink 1.50/1.65 (1.10) and vs file:// alike agree; RSS 48/40 (1.20) does not
	if bad != 1 || unmatched != 0 {
		t.Errorf("agreement: %d disagree, %d unmatched, want 1 and 0:\n%s", bad, unmatched, out.String())
	}
	if !strings.Contains(out.String(), "| 1.20 | **no** |") || !strings.Contains(out.String(), "| 1.50 | 1.65 | 1.10 | yes |") {
		t.Errorf("agreement table:\n%s", out.String())
	}
	if _, unmatched = agreement(&out, "A", "B", a, b[1:]); unmatched != 1 {
		t.Errorf("a row missing from B: %d unmatched, want 1", unmatched)
	}
	if _, err := readTargets(strings.NewReader("# no table\n")); err == nil {
		t.Error("a report without a targets table read without error")
	}
}

// TestSteady: a repeatable measurement is run until the runs add up to
// minSteady (a run's time is what it reports, so no test waits), then
// averaged; a failing run fails it; --quick runs it once.
func TestSteady(t *testing.T) {
	b := &bench{}
	n := 0
	d, err := b.steady(func() (time.Duration, error) { n++; return 300 * time.Millisecond, nil })
	if err != nil || n != 4 || d != 300*time.Millisecond {
		t.Errorf("steady of 300 ms runs: %v after %d runs (%v), want 300ms after 4", d, n, err)
	}
	n = 0
	if _, err := b.steady(func() (time.Duration, error) { n++; return time.Microsecond, nil }); err != nil || n != maxSteady {
		t.Errorf("steady of 1 µs runs: %d runs (%v), want %d", n, err, maxSteady)
	}
	if _, err := b.steady(func() (time.Duration, error) { return 0, errors.New("boom") }); err == nil {
		t.Error("a failing run: no error")
	}
	b.o.quick = true
	n = 0
	if _, err := b.steady(func() (time.Duration, error) { n++; return time.Microsecond, nil }); err != nil || n != 1 {
		t.Errorf("--quick: %d runs, want 1", n)
	}
}
