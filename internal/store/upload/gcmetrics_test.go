package upload_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bos55/concordia/internal/store/upload"
)

// gcValues registers the store's collectors and returns the named
// series' values.
func gcValues(t *testing.T, s *upload.Store, names ...string) map[string]float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	for _, c := range s.Collectors() {
		reg.MustRegister(c)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			switch {
			case m.GetGauge() != nil:
				got[mf.GetName()] = m.GetGauge().GetValue()
			case m.GetCounter() != nil:
				got[mf.GetName()] = m.GetCounter().GetValue()
			}
		}
	}
	for _, n := range names {
		if _, ok := got[n]; !ok {
			t.Errorf("%s not exported", n)
		}
	}
	return got
}

// TestGCMetrics: the size bounds are exported (the hard one defaulted as
// GC computes it), and a GC run sets the success or the failure time, so
// "the last GC failed" is last failure > last success.
func TestGCMetrics(t *testing.T) {
	ctx := context.Background()
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	s := openStore(t, t.TempDir(), upload.Options{Now: clock.Now, MaxSize: 1000})
	v := gcValues(t, s, "concordia_gc_max_size_bytes", "concordia_gc_hard_max_size_bytes", "concordia_gc_failures_total",
		"concordia_gc_last_success_timestamp_seconds", "concordia_gc_last_failure_timestamp_seconds")
	if v["concordia_gc_max_size_bytes"] != 1000 || v["concordia_gc_hard_max_size_bytes"] != 1500 {
		t.Errorf("bounds: %v", v)
	}
	if _, err := s.GCWith(ctx, upload.Policy{MaxSize: 1000}, true); err != nil {
		t.Fatal(err)
	}
	if v := gcValues(t, s); v["concordia_gc_last_success_timestamp_seconds"] != 0 || v["concordia_gc_runs_total"] != 0 {
		t.Errorf("a dry run counted: %v", v)
	}
	if _, err := s.GC(ctx, false); err != nil {
		t.Fatal(err)
	}
	v = gcValues(t, s)
	if v["concordia_gc_last_success_timestamp_seconds"] != 1_700_000_000 || v["concordia_gc_runs_total"] != 1 || v["concordia_gc_failures_total"] != 0 {
		t.Errorf("after a GC: %v", v)
	}

	// A store that was closed under it: the GC fails and says so.
	clock.Advance(time.Hour)
	s.Close()
	if _, err := s.GC(ctx, false); err == nil {
		t.Fatal("GC of a closed store succeeded")
	}
	v = gcValues(t, s)
	if v["concordia_gc_failures_total"] != 1 || v["concordia_gc_last_failure_timestamp_seconds"] != 1_700_003_600 || v["concordia_gc_runs_total"] != 1 {
		t.Errorf("after a failed GC: %v", v)
	}
}

// TestGCBoundsExplicitHard: a configured hard bound is exported as is.
func TestGCBoundsExplicitHard(t *testing.T) {
	s := openStore(t, t.TempDir(), upload.Options{MaxSize: 1000, HardMaxSize: 4000})
	if v := gcValues(t, s); v["concordia_gc_max_size_bytes"] != 1000 || v["concordia_gc_hard_max_size_bytes"] != 4000 {
		t.Errorf("bounds: %v", v)
	}
	s2 := openStore(t, t.TempDir(), upload.Options{})
	if v := gcValues(t, s2); v["concordia_gc_max_size_bytes"] != 0 || v["concordia_gc_hard_max_size_bytes"] != 0 {
		t.Errorf("no bound: %v", v)
	}
}
