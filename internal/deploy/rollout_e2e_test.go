package deploy_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/deploy"
	"github.com/bos55/concordia/internal/fleettest"
	"github.com/bos55/concordia/internal/hostverb"
)

// rolloutNodes is e.nodes with fleet-wide settings on the deploy attribute
// and per-host settings on the nodes (canary, wave), through Parse as the
// flake's would come.
func (e *e2e) rolloutNodes(path string, top map[string]any, per map[string]map[string]any, hosts ...*fleettest.Host) []deploy.Node {
	e.t.Helper()
	ns := map[string]any{}
	for _, h := range hosts {
		n := map[string]any{"hostname": h.Name, "profiles": map[string]any{"system": map[string]any{"path": path}}}
		for k, v := range per[h.Name] {
			n[k] = v
		}
		ns[h.Name] = n
	}
	doc := map[string]any{"sshOpts": []string{"-F", e.f.SSHConfig}, "confirmTimeout": 30, "activationTimeout": 120, "nodes": ns}
	for k, v := range top {
		doc[k] = v
	}
	b, _ := json.Marshal(doc)
	nodes, err := deploy.Parse(b, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	return nodes
}

// activations returns the times (unix seconds) h's switch-to-configuration
// logged an activation of sys: "<action> <system> <unix time>".
func (e *e2e) activations(h *fleettest.Host, sys string) []float64 {
	e.t.Helper()
	var out []float64
	for _, l := range e.f.ActivationLog(e.t, h) {
		f := strings.Fields(l)
		if len(f) != 3 || f[1] != sys {
			continue
		}
		ts, err := strconv.ParseFloat(f[2], 64)
		if err != nil {
			e.t.Fatalf("%s: activation log line %q: %v", h.Name, l, err)
		}
		out = append(out, ts)
	}
	return out
}

// interval is when a host was certainly mid-deploy.
type interval struct {
	host       string
	start, end float64
}

// maxOverlap is the most intervals open at one instant (an end at the
// same instant as a start does not overlap it).
func maxOverlap(iv []interval) int {
	type ev struct {
		t float64
		d int
	}
	var evs []ev
	for _, i := range iv {
		evs = append(evs, ev{i.start, 1}, ev{i.end, -1})
	}
	sort.Slice(evs, func(a, b int) bool {
		if evs[a].t != evs[b].t {
			return evs[a].t < evs[b].t
		}
		return evs[a].d < evs[b].d
	})
	cur, peak := 0, 0
	for _, e := range evs {
		cur += e.d
		peak = max(peak, cur)
	}
	return peak
}

func TestMaxOverlap(t *testing.T) {
	for _, tt := range []struct {
		iv   []interval
		want int
	}{
		{nil, 0},
		{[]interval{{"a", 0, 2}}, 1},
		{[]interval{{"a", 0, 2}, {"b", 2, 4}}, 1},
		{[]interval{{"a", 0, 2}, {"b", 1, 4}, {"c", 3, 5}}, 2},
		{[]interval{{"a", 0, 10}, {"b", 1, 2}, {"c", 1.5, 3}, {"d", 2.5, 4}}, 3},
	} {
		if got := maxOverlap(tt.iv); got != tt.want {
			t.Errorf("maxOverlap(%v) = %d, want %d", tt.iv, got, tt.want)
		}
	}
}

// TestE2ERollout: canaries and waves on one simulated fleet of four hosts,
// with the rollout settings coming from the deploy attribute as a flake
// has them.
func TestE2ERollout(t *testing.T) {
	e := newE2E(t, 4, fleettest.Options{})
	canary, others := e.f.Hosts[0], e.f.Hosts[1:]

	// (a) The new system fails on the canary: it rolls back, and no other
	// host ever runs, or gets in its profile, the new system.
	t.Run("CanaryFailureStopsTheRollout", func(t *testing.T) {
		e := e.sub(t)
		before := map[string]state{}
		for _, h := range e.f.Hosts {
			before[h.Name] = e.state(h)
		}
		bad := e.f.System(t, fleettest.Failing)
		nodes := e.rolloutNodes(bad, nil, map[string]map[string]any{canary.Name: {"canary": true}}, e.f.Hosts...)
		rep := e.run(hostverb.Switch, "e2e-canary", nodes, nil)
		byNode := map[string]deploy.HostReport{}
		for _, h := range rep.Hosts {
			byNode[h.Node] = h
		}
		if r := byNode[canary.Name].Result; r != deploy.RolledBack {
			t.Fatalf("canary %s: %s (%s)", canary.Name, r, byNode[canary.Name].Error)
		}
		if len(e.activations(canary, bad)) == 0 {
			t.Fatalf("the canary's activation log does not show the new system: %v", e.f.ActivationLog(t, canary))
		}
		for _, h := range others {
			hr := byNode[h.Name]
			if hr.Result != deploy.NotStarted || !strings.Contains(hr.Error, "canary "+canary.Name+" failed") || len(hr.Steps) != 0 {
				t.Errorf("%s: %s %q steps %v, want not started because the canary failed", h.Name, hr.Result, hr.Error, hr.Steps)
			}
			if a := e.activations(h, bad); len(a) != 0 {
				t.Errorf("%s activated the failing system: %v", h.Name, e.f.ActivationLog(t, h))
			}
			if got := e.state(h); got != before[h.Name] {
				t.Errorf("%s changed: %+v, before %+v", h.Name, got, before[h.Name])
			}
		}
		if got := e.state(canary); got.current != before[canary.Name].current || got.profile != before[canary.Name].profile {
			t.Errorf("canary after rollback %+v, before %+v", got, before[canary.Name])
		}
		if len(rep.Failed) != 4 || rep.Err() == nil || !strings.Contains(rep.Err().Error(), "rollout stopped: canary "+canary.Name) {
			t.Errorf("failed %v, err %v", rep.Failed, rep.Err())
		}
	})

	// (b) maxUnavailable 50% of 4 hosts: wave 0 (three hosts) two at a
	// time, then wave 1. Each host's switch-to-configuration sleeps before
	// it logs the activation, so a host is certainly mid-deploy from its
	// log time minus the sleep until the deploy report says it ended; the
	// hosts' logs must never show more than two such intervals at once,
	// and wave 1's must begin after wave 0's all ended.
	t.Run("WavesNeverExceedMaxUnavailable", func(t *testing.T) {
		e := e.sub(t)
		const sleep = 2 * time.Second
		slow := e.f.System(t, fleettest.System{Label: "rollout-slow", Sleep: sleep})
		late := e.f.Hosts[1]
		nodes := e.rolloutNodes(slow, map[string]any{"maxUnavailable": "50%"},
			map[string]map[string]any{late.Name: {"wave": 1}}, e.f.Hosts...)
		rep := e.run(hostverb.Switch, "e2e-waves", nodes, nil)
		if err := rep.Err(); err != nil {
			t.Fatal(err)
		}
		if rep.Rollout.MaxUnavailable != 2 || len(rep.Rollout.Waves) != 2 || fmt.Sprint(rep.Rollout.Waves[1].Nodes) != "["+late.Name+"]" {
			t.Fatalf("rollout %+v", rep.Rollout)
		}
		var iv []interval
		ends := map[string]float64{}
		for _, hr := range rep.Hosts {
			h := e.f.Host(hr.Node)
			acts := e.activations(h, slow)
			if len(acts) != 1 {
				t.Fatalf("%s: %d activations of the new system: %v", h.Name, len(acts), e.f.ActivationLog(t, h))
			}
			end := float64(hr.Start.Add(hr.Duration).UnixNano()) / 1e9
			start := acts[0] - sleep.Seconds()
			if start < float64(hr.Start.UnixNano())/1e9 || acts[0] > end {
				t.Fatalf("%s: activation logged at %.3f outside its deploy [%s, +%s]", h.Name, acts[0], hr.Start, hr.Duration)
			}
			iv = append(iv, interval{h.Name, start, end})
			ends[h.Name] = end
		}
		peak := maxOverlap(iv)
		t0 := iv[0].start
		for _, i := range iv {
			t0 = min(t0, i.start)
		}
		for _, i := range iv {
			t.Logf("%s mid-deploy from +%.2fs to +%.2fs", i.host, i.start-t0, i.end-t0)
		}
		t.Logf("at most %d hosts mid-deploy at once", peak)
		if peak > 2 {
			t.Fatalf("%d hosts mid-deploy at once, max unavailable 2", peak)
		}
		if peak < 2 {
			t.Fatalf("never two hosts at once (peak %d): the bound is not what limited them", peak)
		}
		for _, i := range iv {
			if i.host == late.Name {
				continue
			}
			for _, j := range iv {
				if j.host == late.Name && j.start < ends[i.host] {
					t.Errorf("wave 1 (%s) began at %.3f, before %s of wave 0 ended at %.3f", late.Name, j.start, i.host, ends[i.host])
				}
			}
		}
	})

	// (c) The same through the command line: --canary picks the canary by
	// name among the selected nodes, the report records the rollout.
	t.Run("CLI", func(t *testing.T) {
		e := e.sub(t)
		bad := e.f.System(t, fleettest.System{Label: "rollout-cli-bad", FailUnits: []string{"broken.service"}})
		first := e.f.Hosts[2]
		dir := t.TempDir()
		ns := map[string]any{}
		for _, h := range e.f.Hosts {
			ns[h.Name] = map[string]any{"hostname": h.Name, "profiles": map[string]any{"system": map[string]any{"path": bad}}}
		}
		doc, _ := json.Marshal(map[string]any{"sshOpts": []string{"-F", e.f.SSHConfig}, "confirmTimeout": 20, "maxFailures": 1, "nodes": ns})
		file := filepath.Join(dir, "nodes.json")
		if err := os.WriteFile(file, doc, 0o600); err != nil {
			t.Fatal(err)
		}
		report := filepath.Join(dir, "report.json")
		args := []string{"push", "--file", file, "--canary", first.Name, "--max-unavailable", "1", "--json", report,
			"--cache", e.f.Cache.URL(), "--trusted-key", e.f.Cache.PublicKey()}
		if cc, ok := e.f.Cache.(*fleettest.ConcordiaCache); ok {
			args = append(args, "--netrc-file", cc.DeployNetrc())
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, e.f.Deployer, args...)
		var errb strings.Builder
		cmd.Stdout, cmd.Stderr = &errb, &errb
		err := cmd.Run()
		t.Logf("deployer %s: %v\n%s", strings.Join(args, " "), err, errb.String())
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 {
			t.Fatalf("push: %v, want exit 1", err)
		}
		if out := errb.String(); !strings.Contains(out, "1 not ok, 3 not started") || !strings.Contains(out, "NOT STARTED (canary "+first.Name+" failed: rolled-back") {
			t.Fatalf("summary lacks the hosts not started")
		}
		var rep deploy.Report
		b, _ := os.ReadFile(report)
		if err := json.Unmarshal(b, &rep); err != nil || rep.Rollout == nil {
			t.Fatalf("report %s: %v", b, err)
		}
		if fmt.Sprint(rep.Rollout.Canary) != "["+first.Name+"]" || rep.Rollout.MaxUnavailable != 1 || rep.Rollout.MaxFailures != 1 || len(rep.Failed) != 4 {
			t.Fatalf("rollout %+v failed %v", rep.Rollout, rep.Failed)
		}
		for _, h := range e.f.Hosts {
			if h != first && len(e.activations(h, bad)) != 0 {
				t.Errorf("%s activated the failing system", h.Name)
			}
		}
	})
}
