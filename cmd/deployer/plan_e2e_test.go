package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/fleettest"
	"github.com/bos55/concordia/internal/plan"
)

// TestE2EPlan: deployer plan on a simulated fleet with Concordia's cache,
// for an unchanged host, a package bump (openssl 3.0.14 -> 3.0.15) and a
// kernel change, checked against the real closures (nix-store -qR in the
// machine store); the plan changes nothing on the hosts and fetches no NAR.
func TestE2EPlan(t *testing.T) {
	base := fleettest.System{Label: "base", Packages: []string{"openssl-3.0.14", "hello-2.12"}}
	f := fleettest.New(t, 3, fleettest.Options{Initial: &base})
	bump := f.System(t, fleettest.System{Label: "bump", Packages: []string{"openssl-3.0.15", "hello-2.12"}})
	kernel := f.System(t, fleettest.System{Label: "kernel", Kernel: "6.6.0", Packages: []string{"openssl-3.0.14", "hello-2.12"}})
	unpublished := f.Build(t, fleettest.System{Label: "unpublished", Packages: []string{"openssl-3.0.15"}})
	want := map[string]string{"host1": f.Initial, "host2": bump, "host3": kernel}
	dir := t.TempDir()
	file := nodesFile(t, f, dir, "nodes.json", want)
	args := []string{"--file", file, "--cache", f.Cache.URL(), "--trusted-key", f.Cache.PublicKey()}
	cc, concordia := f.Cache.(*fleettest.ConcordiaCache)
	if concordia {
		args = append(args, "--netrc-file", cc.DeployNetrc())
	}
	type hostState struct {
		gen     int
		profile string
		current string
		log     int
	}
	snapshot := func() map[string]hostState {
		m := map[string]hostState{}
		for _, h := range f.Hosts {
			n, p := f.ProfileGeneration(t, h)
			m[h.Name] = hostState{gen: n, profile: p, current: f.Readlink(t, h, "/run/current-system"), log: len(f.ActivationLog(t, h))}
		}
		return m
	}
	before := snapshot()
	narsBefore := narMetrics(t, f.Cache.URL())
	if concordia && !strings.Contains(narsBefore, `route="nar"`) {
		t.Fatalf("the cache's metrics show no NAR route (the hosts fetched their systems): %q", narsBefore)
	}

	start := time.Now()
	code, out, errs := runDeployer(t, append([]string{"plan", "--json", "-"}, args...)...)
	t.Logf("plan of 3 hosts: %s", time.Since(start).Round(time.Millisecond))
	if code != 0 {
		t.Fatalf("plan: exit %d\n%s\n%s", code, out, errs)
	}
	var p plan.Plan
	if err := json.Unmarshal([]byte(out), &p); err != nil {
		t.Fatalf("plan JSON: %v\n%s", err, out)
	}
	if p.SchemaVersion != plan.SchemaVersion || len(p.Hosts) != 3 {
		t.Fatalf("plan: %s", out)
	}
	env := testNixEnv(t)
	for _, h := range p.Hosts {
		t.Run(h.Node, func(t *testing.T) {
			if h.New != want[h.Node] || h.Current != f.Initial || h.Booted != f.Initial || h.Mode != "switch" || h.Error != "" {
				t.Fatalf("plan %+v", h)
			}
			if h.Closure == nil || !h.Closure.OK || h.Closure.Paths != len(requisites(t, env, h.New)) {
				t.Errorf("closure check %+v, want ok with %d paths", h.Closure, len(requisites(t, env, h.New)))
			}
			if h.Diff == nil {
				t.Fatalf("no diff: %s", h.DiffUnknown)
			}
			cur, next := requisites(t, env, h.Current), requisites(t, env, h.New)
			added, removed := minus(next, cur), minus(cur, next)
			if h.Diff.PathsAdded != len(added) || h.Diff.PathsRemoved != len(removed) {
				t.Errorf("+%d -%d paths, the real closures differ by +%d -%d (%v, %v)", h.Diff.PathsAdded, h.Diff.PathsRemoved, len(added), len(removed), added, removed)
			}
			if (h.Diff.DownloadBytes > 0) != (len(added) > 0) {
				t.Errorf("download %d bytes for %d added paths", h.Diff.DownloadBytes, len(added))
			}
			if concordia && h.Reboot.Source != "cache,cache" {
				t.Errorf("boot links read from %q, want the cache's listings", h.Reboot.Source)
			}
			changes := map[string]string{}
			for _, c := range h.Diff.Changes {
				changes[c.Name] = c.Kind + " " + strings.Join(c.Before, ",") + " -> " + strings.Join(c.After, ",")
			}
			switch h.Node {
			case "host1":
				if !h.Unchanged || len(added)+len(removed) != 0 || len(h.Diff.Changes) != 0 || h.Reboot.Verdict != plan.RebootNo {
					t.Errorf("unchanged host: %+v %+v", h, h.Diff)
				}
			case "host2":
				if changes["openssl"] != "version 3.0.14 -> 3.0.15" || changes["hello"] != "" || changes["linux"] != "" || h.Reboot.Verdict != plan.RebootNo {
					t.Errorf("bump: %v, reboot %+v", changes, h.Reboot)
				}
			case "host3":
				if changes["linux"] != "version 6.1.0 -> 6.6.0" || changes["initrd-linux"] != "version 6.1.0 -> 6.6.0" || changes["openssl"] != "" ||
					h.Reboot.Verdict != plan.RebootRequired || strings.Join(h.Reboot.Changed, ",") != "kernel,kernel-modules,initrd" {
					t.Errorf("kernel: %v, reboot %+v", changes, h.Reboot)
				}
			}
		})
	}

	// The table, and push --dry-run printing the same plan.
	code, table, errs := runDeployer(t, append([]string{"plan"}, args...)...)
	if code != 0 || !strings.Contains(table, "openssl: 3.0.14 → 3.0.15") || !strings.Contains(table, "linux: 6.1.0 → 6.6.0") ||
		!strings.Contains(table, "base (unchanged)") || !strings.Contains(table, "required: kernel, kernel-modules, initrd") {
		t.Errorf("plan table: exit %d\n%s\n%s", code, table, errs)
	}
	code, dry, errs := runDeployer(t, append([]string{"push", "--dry-run"}, args...)...)
	if code != 0 || dry != table {
		t.Errorf("push --dry-run: exit %d\n%s\n%s\nwant the plan:\n%s", code, dry, errs, table)
	}
	t.Logf("plan:\n%s", table)

	// Nothing changed on the hosts, no NAR was sent, no host got a new system.
	if after := snapshot(); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("hosts changed: %v, before %v", after, before)
	}
	if got := narMetrics(t, f.Cache.URL()); got != narsBefore {
		t.Errorf("NAR traffic during the plan: %s, before %s", got, narsBefore)
	}
	for _, h := range f.Hosts {
		for _, sys := range []string{bump, kernel} {
			if out, err := f.Exec(h, "nix-store", "--check-validity", sys); err == nil {
				t.Errorf("%s has %s after the plan %s", h.Name, sys, out)
			}
		}
	}

	// A closure not in the cache: the plan says so and fails, naming it.
	bad := nodesFile(t, f, dir, "bad.json", map[string]string{"host1": unpublished, "host2": bump})
	code, out, errs = runDeployer(t, "plan", "--file", bad, "--cache", f.Cache.URL(), "--trusted-key", f.Cache.PublicKey())
	if code == 0 || !strings.Contains(errs, "host1 (closure not deployable: ") || strings.Contains(errs, "host2 (") || !strings.Contains(out, "NOT DEPLOYABLE") {
		t.Errorf("unpublished closure: exit %d\n%s\n%s", code, out, errs)
	}
}

func nodesFile(t *testing.T, f *fleettest.Fleet, dir, name string, paths map[string]string) string {
	t.Helper()
	ns := map[string]any{}
	for host, p := range paths {
		ns[host] = map[string]any{"hostname": host, "profiles": map[string]any{"system": map[string]any{"path": p}}}
	}
	doc, _ := json.Marshal(map[string]any{"sshOpts": []string{"-F", f.SSHConfig}, "nodes": ns})
	file := filepath.Join(dir, name)
	if err := os.WriteFile(file, doc, 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// testNixEnv gives the test's nix-store its own HOME and cache dir.
func testNixEnv(t *testing.T) []string {
	home := t.TempDir()
	return append(os.Environ(), "HOME="+home, "XDG_CACHE_HOME="+filepath.Join(home, ".cache"))
}

// requisites is the real closure: nix-store -qR in the machine's store.
func requisites(t *testing.T, env []string, p string) map[string]bool {
	t.Helper()
	cmd := exec.Command("nix-store", "--query", "--requisites", p)
	cmd.Env = env
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("nix-store -qR %s: %v", p, err)
	}
	m := map[string]bool{}
	for _, l := range strings.Fields(string(out)) {
		m[l] = true
	}
	return m
}

func minus(a, b map[string]bool) []string {
	var out []string
	for p := range a {
		if !b[p] {
			out = append(out, p)
		}
	}
	return out
}

// narMetrics is the cache's NAR traffic: the NAR routes' requests and the
// NAR bytes sent, as its /metrics says (empty for a cache without).
func narMetrics(t *testing.T, cache string) string {
	t.Helper()
	resp, err := http.Get(cache + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return ""
	}
	body, _ := io.ReadAll(resp.Body)
	var b bytes.Buffer
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, "concordia_nar_bytes_sent_total") || strings.HasPrefix(line, `concordia_http_requests_total{code=`) &&
			(strings.Contains(line, `route="nar"`) || strings.Contains(line, `route="serve"`)) {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}
