package genmetrics_test

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/bos55/concordia/internal/genmetrics"
	"github.com/bos55/concordia/internal/hostverb"
)

// record writes a deploy record where the host keeps it.
func (l *layout) record(r hostverb.Record) {
	l.t.Helper()
	dir := filepath.Join(l.opts.StateDir, "deploys")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		l.t.Fatal(err)
	}
	b, err := json.Marshal(r)
	if err != nil {
		l.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, r.ID+".json"), b, 0o600); err != nil {
		l.t.Fatal(err)
	}
}

const lastHeader = `# HELP nixos_last_deploy_info The deploy that started last since boot: its id, mode and state; value is always 1.
# TYPE nixos_last_deploy_info gauge
# HELP nixos_last_deploy_state 1 for the state of the deploy that started last on this host since boot (activating, awaiting-confirm, confirmed, rolling-back, rolled-back, failed), 0 for the others; absent before the first deploy.
# TYPE nixos_last_deploy_state gauge
`

func lastValues(id, mode, state string) string {
	var b strings.Builder
	b.WriteString(lastHeader)
	b.WriteString(`nixos_last_deploy_info{id="` + id + `",mode="` + mode + `",state="` + state + "\"} 1\n")
	for _, s := range []string{"activating", "awaiting-confirm", "confirmed", "failed", "rolled-back", "rolling-back"} {
		v := "0"
		if s == state {
			v = "1"
		}
		b.WriteString(`nixos_last_deploy_state{state="` + s + `"} ` + v + "\n")
	}
	return b.String()
}

// TestLastDeploy: the deploy that started last is reported, whatever the
// order of the files, and a record that is garbage or names another id
// (a file renamed by hand) is skipped rather than failing the scrape.
func TestLastDeploy(t *testing.T) {
	l := newLayout(t)
	a := l.system("a", "k1", "24.05.1")
	l.generation(1, a)
	l.link(l.opts.CurrentSystem, a)
	l.link(l.opts.BootedSystem, a)
	names := []string{"nixos_last_deploy_state", "nixos_last_deploy_info"}

	// No deploy since boot: no series (a dashboard shows "none").
	if err := testutil.GatherAndCompare(genmetrics.Registry(l.opts), strings.NewReader(""), names...); err != nil {
		t.Error(err)
	}

	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	l.record(hostverb.Record{ID: "zz-first", Mode: hostverb.Switch, State: hostverb.Confirmed, Started: t0, Updated: t0.Add(time.Minute)})
	l.record(hostverb.Record{ID: "aa-second", Mode: hostverb.Test, State: hostverb.RolledBack, Started: t0.Add(time.Hour), Updated: t0.Add(time.Hour + 2*time.Minute)})
	if err := testutil.GatherAndCompare(genmetrics.Registry(l.opts), strings.NewReader(lastValues("aa-second", "test", "rolled-back")), names...); err != nil {
		t.Error(err)
	}
	if got := value(t, l, "nixos_last_deploy_timestamp_seconds"); got != float64(t0.Add(time.Hour+2*time.Minute).Unix()) {
		t.Errorf("nixos_last_deploy_timestamp_seconds = %v", got)
	}

	// Garbage, a record under another id's name, a directory and a file
	// that is no deploy id are all skipped.
	dir := filepath.Join(l.opts.StateDir, "deploys")
	os.WriteFile(filepath.Join(dir, "broken.json"), []byte("{not json"), 0o600)
	forged, _ := json.Marshal(hostverb.Record{ID: "other", State: hostverb.Failed, Started: t0.Add(48 * time.Hour)})
	os.WriteFile(filepath.Join(dir, "renamed.json"), forged, 0o600)
	os.Mkdir(filepath.Join(dir, "dir.json"), 0o700)
	os.WriteFile(filepath.Join(dir, "..json"), forged, 0o600)
	if err := testutil.GatherAndCompare(genmetrics.Registry(l.opts), strings.NewReader(lastValues("aa-second", "test", "rolled-back")), names...); err != nil {
		t.Error(err)
	}

	// A newer deploy that failed takes over.
	l.record(hostverb.Record{ID: "third", Mode: hostverb.Switch, State: hostverb.Failed, Started: t0.Add(2 * time.Hour), Updated: t0.Add(2 * time.Hour)})
	if err := testutil.GatherAndCompare(genmetrics.Registry(l.opts), strings.NewReader(lastValues("third", "switch", "failed")), names...); err != nil {
		t.Error(err)
	}
}

// TestTimestampWhenUnreadable: the computation time goes out even when the
// generation state cannot be read, so the alert rules tell a failing
// exporter (up 0) from a textfile nobody rewrites (an old timestamp).
func TestTimestampWhenUnreadable(t *testing.T) {
	l := newLayout(t)
	if err := os.WriteFile(l.opts.Profile, []byte("not a link"), 0o644); err != nil {
		t.Fatal(err)
	}
	before := float64(time.Now().Unix())
	got := value(t, l, "nixos_generation_metrics_timestamp_seconds")
	if got < before-1 || got > float64(time.Now().Unix())+1 {
		t.Errorf("timestamp %v, want about %v", got, before)
	}
	if up := value(t, l, "nixos_generation_metrics_up"); up != 0 {
		t.Errorf("up = %v with an unreadable profile", up)
	}
}

// value is the one sample of the gauge called name, NaN when absent.
func value(t *testing.T, l *layout, name string) float64 {
	t.Helper()
	mfs, err := genmetrics.Registry(l.opts).Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	return math.NaN()
}
