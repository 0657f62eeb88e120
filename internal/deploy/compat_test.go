package deploy_test

// The host-verb contract across releases, on the simulated fleet with real
// binaries: this push side against hosts that run the contract 1 deployer
// (with its sudo rules), and the contract 1 push side (the CLI of that
// release) against hosts that run this deployer.

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/deploy"
	"github.com/bos55/concordia/internal/fleettest"
	"github.com/bos55/concordia/internal/hostverb"
)

func TestCompatNewPushOldHost(t *testing.T) {
	if testing.Short() {
		t.Skip("simulated fleet")
	}
	fleettest.Need(t)
	old := fleettest.BuildRelease(t, fleettest.Contract1Release)
	e := newE2E(t, 1, fleettest.Options{Deployer: old, Contract: 1})
	h := e.f.Hosts[0]
	v2 := e.f.System(t, fleettest.System{Label: "v2"})
	rep := e.run(hostverb.Switch, "compat-new-push", e.nodes(v2, 30, h), nil)
	if err := rep.Err(); err != nil {
		t.Fatal(err)
	}
	if got := e.state(h); got != (state{current: v2, profile: v2, gen: 2, boot: 2}) {
		t.Fatalf("after the deploy %+v", got)
	}
	st := deploy.Status(context.Background(), e.ssh, e.nodes(v2, 30, h))[0]
	if st.Status == nil || st.Status.Current.Path != v2 || st.Status.Profile.Generation != 2 {
		t.Fatalf("status from the old host: %+v %s", st.Status, st.Error)
	}
	var out strings.Builder
	if err := deploy.Rollback(context.Background(), e.ssh, e.nodes(v2, 30, h), "compat-rb", &out); err != nil {
		t.Fatalf("rollback on the old host: %v %s", err, out.String())
	}
	if got := e.current(h); got != e.f.Initial {
		t.Fatalf("after rollback runs %s", got)
	}
	// Host-side health checks need contract 2: refused clearly, and the
	// host rolls back instead of running a command line.
	v3 := e.f.System(t, fleettest.System{Label: "v3"})
	nodes := e.nodes(v3, 10, h)
	nodes[0].Settings.HealthChecks = []deploy.HealthCheck{{Command: "systemctl is-active web"}}
	rep = e.run(hostverb.Switch, "compat-health", nodes, nil)
	if hr := rep.Hosts[0]; hr.Result != deploy.RolledBack || !strings.Contains(hr.Error, "speaks contract 1") {
		t.Fatalf("health on an old host: %s %s", hr.Result, hr.Error)
	}
}

func TestCompatOldPushNewHost(t *testing.T) {
	if testing.Short() {
		t.Skip("simulated fleet")
	}
	fleettest.Need(t)
	old := fleettest.BuildRelease(t, fleettest.Contract1Release)
	e := newE2E(t, 1, fleettest.Options{})
	h := e.f.Hosts[0]
	v2 := e.f.System(t, fleettest.System{Label: "v2"})
	dir := t.TempDir()
	nodes := filepath.Join(dir, "nodes.json")
	// The old push side names the deployer by a store path the host does
	// not have (a newer release's): the host's gate runs itself anyway.
	doc := map[string]any{"sshOpts": []string{"-F", e.f.SSHConfig}, "confirmTimeout": 20,
		"deployerPath": "/nix/store/0c6kzph7l0dcbfmjap64f0czdafn3b7x-concordia-next/bin/deployer",
		"nodes":        map[string]any{h.Name: map[string]any{"hostname": h.Name, "profiles": map[string]any{"system": map[string]any{"path": v2}}}}}
	b, _ := json.Marshal(doc)
	os.WriteFile(nodes, b, 0o600)
	run := func(args ...string) (int, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, old, args...)
		out, err := cmd.CombinedOutput()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		t.Logf("old deployer %s -> %d\n%s", strings.Join(args, " "), code, out)
		return code, string(out)
	}
	cache := []string{"--cache", e.f.Cache.URL(), "--trusted-key", e.f.Cache.PublicKey(), "--no-pin"}
	if code, _ := run(append([]string{"push", "--file", nodes}, cache...)...); code != 0 {
		t.Fatalf("old push side against the new host: exit %d", code)
	}
	if got := e.state(h); got != (state{current: v2, profile: v2, gen: 2, boot: 2}) {
		t.Fatalf("after the deploy %+v", got)
	}
	if code, out := run("status", "--file", nodes, "--json"); code != 0 || !strings.Contains(out, v2) {
		t.Fatalf("old status: exit %d", code)
	}
	if code, _ := run("rollback", "--file", nodes, h.Name); code != 0 {
		t.Fatalf("old rollback: exit %d", code)
	}
	if got := e.current(h); got != e.f.Initial {
		t.Fatalf("after the old rollback runs %s", got)
	}
}
