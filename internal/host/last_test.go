package host_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/host"
	"github.com/bos55/concordia/internal/hostverb"
)

func writeRecord(t *testing.T, dir string, r hostverb.Record, mod time.Time) {
	t.Helper()
	b, _ := json.Marshal(r)
	p := filepath.Join(dir, r.ID+".json")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(p, mod, mod); err != nil {
		t.Fatal(err)
	}
}

// TestLastDeployManyAndHostile: among more records than it reads, the one
// that started last is found (it is among the last modified); a symlink
// named like a record is not followed; no state directory is no deploy;
// a state directory that is not one is an error.
func TestLastDeployManyAndHostile(t *testing.T) {
	state := t.TempDir()
	o := host.Options{StateDir: state}
	if r, err := host.LastDeploy(o); r != nil || err != nil {
		t.Fatalf("no deploys dir: %v %v", r, err)
	}
	dir := filepath.Join(state, "deploys")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := 0; i < 100; i++ {
		at := t0.Add(time.Duration(i) * time.Minute)
		writeRecord(t, dir, hostverb.Record{ID: fmt.Sprintf("d%03d", i), State: hostverb.Confirmed, Started: at, Updated: at}, at)
	}
	// A record elsewhere, newer than all, linked in under a record's name.
	other := t.TempDir()
	writeRecord(t, other, hostverb.Record{ID: "linked", State: hostverb.Failed, Started: t0.Add(time.Hour * 24)}, t0.Add(24*time.Hour))
	if err := os.Symlink(filepath.Join(other, "linked.json"), filepath.Join(dir, "linked.json")); err != nil {
		t.Fatal(err)
	}
	r, err := host.LastDeploy(o)
	if err != nil || r == nil || r.ID != "d099" {
		t.Fatalf("last deploy: %+v %v, want d099", r, err)
	}

	notDir := filepath.Join(t.TempDir(), "state")
	os.MkdirAll(notDir, 0o700)
	os.WriteFile(filepath.Join(notDir, "deploys"), []byte("x"), 0o600)
	if _, err := host.LastDeploy(host.Options{StateDir: notDir}); err == nil {
		t.Error("a deploys file that is no directory: no error")
	}
}
