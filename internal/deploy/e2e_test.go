package deploy_test

// End-to-end deploys on the simulated fleet (internal/fleettest): real
// sshd, sudo, gate, nix-daemon and host verbs; the push side runs
// in-process through the real OpenSSH client. They skip where the fleet
// cannot run (not root, no nix/sshd).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/cacheapi"
	"github.com/bos55/concordia/internal/closure"
	"github.com/bos55/concordia/internal/deploy"
	"github.com/bos55/concordia/internal/fleettest"
	"github.com/bos55/concordia/internal/hostverb"
	"github.com/bos55/concordia/internal/remote"
	"github.com/bos55/concordia/pkg/narinfo"
)

// e2e is one push setup against a fleet.
type e2e struct {
	t     *testing.T
	f     *fleettest.Fleet
	ssh   *remote.SSH
	check *closure.Checker
}

func newE2E(t *testing.T, hosts int, opts fleettest.Options) *e2e {
	t.Helper()
	if testing.Short() {
		t.Skip("simulated fleet: skipped with -short")
	}
	f := fleettest.New(t, hosts, opts)
	pk, err := narinfo.ParsePublicKey(f.Cache.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	ssh, err := remote.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ssh.Close() })
	return &e2e{t: t, f: f, ssh: ssh, check: &closure.Checker{Cache: f.Cache.URL(), Trusted: []narinfo.PublicKey{pk}}}
}

// sub returns e for subtest t (logs and failures go to the subtest).
func (e *e2e) sub(t *testing.T) *e2e {
	c := *e
	c.t = t
	return &c
}

// state is what a host runs and boots, to compare before and after.
type state struct {
	current, profile string
	gen, boot        int
}

func (e *e2e) state(h *fleettest.Host) state {
	n, p := e.f.ProfileGeneration(e.t, h)
	b, _ := e.f.BootDefault(e.t, h)
	return state{current: e.current(h), profile: p, gen: n, boot: b}
}

// nodes describes hosts in the deploy-rs schema (through Parse, so the
// schema path is exercised too), every one deploying path.
func (e *e2e) nodes(path string, confirm int, hosts ...*fleettest.Host) []deploy.Node {
	e.t.Helper()
	ns := map[string]any{}
	for _, h := range hosts {
		ns[h.Name] = map[string]any{"hostname": h.Name, "profiles": map[string]any{"system": map[string]any{"path": path}}}
	}
	doc, _ := json.Marshal(map[string]any{
		"sshOpts": []string{"-F", e.f.SSHConfig}, "confirmTimeout": confirm, "activationTimeout": 120, "nodes": ns,
	})
	nodes, err := deploy.Parse(doc, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	return nodes
}

type tlog struct{ t *testing.T }

func (l tlog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func (e *e2e) run(mode hostverb.Mode, id string, nodes []deploy.Node, r remote.Runner, tweak ...func(*deploy.Options)) *deploy.Report {
	e.t.Helper()
	if r == nil {
		r = e.ssh
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	o := deploy.Options{
		Mode: mode, ID: id, Remote: r,
		Checker:  func(deploy.Node) deploy.Checker { return e.check },
		Progress: deploy.NewLines(tlog{e.t}),
		Grace:    30 * time.Second,
		Retry:    500 * time.Millisecond,
	}
	for _, f := range tweak {
		f(&o)
	}
	rep := deploy.Run(ctx, nodes, o)
	b, _ := json.MarshalIndent(rep, "", " ")
	e.t.Logf("report: %s", b)
	return rep
}

func (e *e2e) current(h *fleettest.Host) string {
	return e.f.Readlink(e.t, h, "/run/current-system")
}

// TestE2E runs the deploy scenarios on one simulated fleet of three hosts
// behind Concordia's own cache (a fleet takes a while to set up; each
// scenario checks its own host's state before and after).
func TestE2E(t *testing.T) {
	e := newE2E(t, 3, fleettest.Options{})
	h1, h2, h3 := e.f.Hosts[0], e.f.Hosts[1], e.f.Hosts[2]
	v2 := e.f.System(t, fleettest.System{Label: "v2"})

	t.Run("SwitchParallel", func(t *testing.T) {
		e := e.sub(t)
		rep := e.run(hostverb.Switch, "e2e-switch", e.nodes(v2, 30, e.f.Hosts...), nil)
		if err := rep.Err(); err != nil {
			t.Fatal(err)
		}
		for _, h := range e.f.Hosts {
			if got := e.state(h); got != (state{current: v2, profile: v2, gen: 2, boot: 2}) {
				t.Errorf("%s: %+v, want v2 running, profile generation 2, boot default 2", h.Name, got)
			}
		}
		for _, h := range rep.Hosts {
			var names []string
			for _, s := range h.Steps {
				names = append(names, s.Name)
			}
			if strings.Join(names, ",") != "closure,fetch,activate,confirm" {
				t.Errorf("%s steps %v", h.Node, names)
			}
		}
		for _, s := range deploy.Status(context.Background(), e.ssh, e.nodes(v2, 30, e.f.Hosts...)) {
			if s.Status == nil || s.Status.Current.Path != v2 || s.Status.Profile.Generation != 2 || s.Status.TestActive {
				t.Errorf("status %s: %+v %s", s.Node, s.Status, s.Error)
			}
		}
	})

	t.Run("TestMode", func(t *testing.T) {
		e := e.sub(t)
		before := e.state(h1)
		v3 := e.f.System(t, fleettest.System{Label: "v3"})
		rep := e.run(hostverb.Test, "e2e-test", e.nodes(v3, 30, h1), nil)
		if err := rep.Err(); err != nil {
			t.Fatal(err)
		}
		after := e.state(h1)
		if after.current != v3 || after.gen != before.gen || after.profile != before.profile || after.boot != before.boot {
			t.Fatalf("after test deploy %+v (before %+v): want v3 running, profile and boot entry unchanged", after, before)
		}
		st := deploy.Status(context.Background(), e.ssh, e.nodes(v3, 30, h1))[0]
		if st.Status == nil || !st.Status.TestActive {
			t.Fatalf("status does not show the test deploy: %+v %s", st.Status, st.Error)
		}
		e.f.Reboot(t, h1)
		e.ssh.Disconnect(context.Background(), remote.Target{Host: h1.Name, Opts: []string{"-F", e.f.SSHConfig}})
		if got := e.current(h1); got != before.current {
			t.Fatalf("after reboot runs %s, want %s", got, before.current)
		}
	})

	t.Run("FailingActivation", func(t *testing.T) {
		e := e.sub(t)
		before := e.state(h2)
		bad := e.f.System(t, fleettest.Failing)
		rep := e.run(hostverb.Switch, "e2e-failing", e.nodes(bad, 30, h2), nil)
		hr := rep.Hosts[0]
		if hr.Result != deploy.RolledBack || rep.Err() == nil || !strings.Contains(rep.Err().Error(), h2.Name+": rolled-back") {
			t.Fatalf("result %s (%s), summary %v", hr.Result, hr.Error, rep.Err())
		}
		for _, s := range hr.Steps {
			if s.Name == deploy.StepConfirm || s.Name == deploy.StepWait {
				t.Fatalf("a failed activation must end at once, got step %s", s.Name)
			}
		}
		if after := e.state(h2); after != before {
			t.Fatalf("after the rollback %+v, want %+v", after, before)
		}
	})

	t.Run("BreakSSHRollsBack", func(t *testing.T) {
		e := e.sub(t)
		before := e.state(h3)
		bad := e.f.System(t, fleettest.BreaksSSH)
		const confirm = 5
		start := time.Now()
		rep := e.run(hostverb.Switch, "e2e-breakssh", e.nodes(bad, confirm, h3), nil)
		took := time.Since(start)
		hr := rep.Hosts[0]
		if hr.Result != deploy.RolledBack || rep.Err() == nil {
			t.Fatalf("result %s (%s), want rolled-back and a non-zero exit", hr.Result, hr.Error)
		}
		t.Logf("rolled back and reported in %s (confirm timeout %ds)", took, confirm)
		if !e.f.SSHUp(h3) {
			t.Fatal("sshd not back after the rollback")
		}
		if after := e.state(h3); after != before {
			t.Fatalf("after the rollback %+v, want %+v", after, before)
		}
		if out, err := e.f.SSH(context.Background(), h3, "deployer", "version").CombinedOutput(); err != nil {
			t.Fatalf("host unreachable after rollback: %v %s", err, out)
		}
	})

	slow := e.f.System(t, fleettest.Slow) // switch-to-configuration sleeps 3s

	t.Run("SecondDeployRefused", func(t *testing.T) {
		e := e.sub(t)
		slower := e.f.System(t, fleettest.System{Label: "slower", Sleep: 8 * time.Second})
		// The second deploy starts once the first is activating, so it
		// meets the lock however the two fetches race.
		activating := make(chan struct{})
		var once sync.Once
		first := e.nodes(slower, 30, h1)
		var wg sync.WaitGroup
		reps := make([]*deploy.Report, 2)
		wg.Add(2)
		go func() {
			defer wg.Done()
			reps[0] = e.run(hostverb.Switch, "e2e-lock-1", first, nil, func(o *deploy.Options) {
				o.Progress = stepHook{o.Progress, func(step string) {
					if step == deploy.StepActivate {
						once.Do(func() { close(activating) })
					}
				}}
			})
			once.Do(func() { close(activating) })
		}()
		go func() {
			defer wg.Done()
			<-activating
			reps[1] = e.run(hostverb.Switch, "e2e-lock-2", e.nodes(slower, 30, h1), nil)
		}()
		wg.Wait()
		if hr := reps[0].Hosts[0]; hr.Result != deploy.OK {
			t.Fatalf("first deploy: %s %s", hr.Result, hr.Error)
		}
		if hr := reps[1].Hosts[0]; hr.Result != deploy.Refused || !strings.Contains(hr.Error, "locked") || !strings.Contains(hr.Error, "e2e-lock-1") {
			t.Fatalf("second deploy: %s %s, want refused naming e2e-lock-1", hr.Result, hr.Error)
		}
		if got := e.current(h1); got != slower {
			t.Fatalf("runs %s, want %s", got, slower)
		}
	})

	t.Run("SSHDropDuringActivation", func(t *testing.T) {
		e := e.sub(t)
		before := e.state(h2)
		record := filepath.Join(h2.Dir, "run", "concordia", "deploys", "e2e-drop.json")
		rep := e.run(hostverb.Switch, "e2e-drop", e.nodes(slow, 30, h2), dropActivate{e.ssh, record})
		if err := rep.Err(); err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, s := range rep.Hosts[0].Steps {
			names = append(names, s.Name)
		}
		if strings.Join(names, ",") != "closure,fetch,activate,wait,confirm" {
			t.Fatalf("steps %v, want the wait path", names)
		}
		if after := e.state(h2); after.current != slow || after.profile != slow || after.gen <= before.gen {
			t.Fatalf("after %+v (before %+v): the activation must survive the cut", after, before)
		}
	})

	t.Run("KernelChange", func(t *testing.T) {
		e := e.sub(t)
		before := e.state(h3)
		nk := e.f.System(t, fleettest.NewKernel)
		// The default switches live since contract 3 (kernel-change.go's
		// test covers it); refusing is an explicit choice now.
		rep := e.run(hostverb.Switch, "e2e-kernel-report", e.nodes(nk, 30, h3), nil, func(o *deploy.Options) { o.KernelChange = hostverb.KernelRefuse })
		if hr := rep.Hosts[0]; hr.Result != deploy.RebootRequired || rep.Err() == nil {
			t.Fatalf("refuse: result %s (%s), want reboot-required and a non-zero exit", hr.Result, hr.Error)
		}
		if after := e.state(h3); after != before {
			t.Fatalf("a reported kernel change changed the host: %+v, want %+v", after, before)
		}
		rep = e.run(hostverb.Switch, "e2e-kernel-boot", e.nodes(nk, 30, h3), nil, func(o *deploy.Options) { o.KernelChange = "boot" })
		if err := rep.Err(); err != nil {
			t.Fatal(err)
		}
		after := e.state(h3)
		if after.current != before.current || after.profile != nk || after.boot != after.gen || after.gen <= before.gen {
			t.Fatalf("--kernel-change=boot: %+v (before %+v): want the new system as boot default only", after, before)
		}
		st := deploy.Status(context.Background(), e.ssh, e.nodes(nk, 30, h3))[0]
		if st.Status == nil || !st.Status.RebootPending {
			t.Fatalf("status does not show the pending reboot: %+v %s", st.Status, st.Error)
		}
		e.f.Reboot(t, h3)
		e.ssh.Disconnect(context.Background(), remote.Target{Host: h3.Name, Opts: []string{"-F", e.f.SSHConfig}})
		if got := e.current(h3); got != nk {
			t.Fatalf("after reboot runs %s, want %s", got, nk)
		}
	})

	t.Run("HealthCheckFails", func(t *testing.T) {
		e := e.sub(t)
		before := e.state(h1)
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "service down", http.StatusServiceUnavailable)
		}))
		defer srv.Close()
		v5 := e.f.System(t, fleettest.System{Label: "v5"})
		nodes := e.nodes(v5, 5, h1)
		nodes[0].Settings.HealthChecks = []deploy.HealthCheck{{URL: srv.URL}}
		rep := e.run(hostverb.Switch, "e2e-health", nodes, nil)
		hr := rep.Hosts[0]
		if hr.Result != deploy.RolledBack || !strings.Contains(hr.Error, "503") || !strings.Contains(hr.Error, "host state: rolled-back") {
			t.Fatalf("result %s (%s), want rolled-back naming the failed check", hr.Result, hr.Error)
		}
		// The host took the rejection (through the gate and sudo), so
		// its watchdog rolled back without waiting for the deadline.
		rejected := false
		for _, s := range hr.Steps {
			rejected = rejected || s.Name == deploy.StepReject && s.Error == ""
		}
		if !rejected {
			t.Fatalf("no accepted reject step: %+v", hr.Steps)
		}
		if after := e.state(h1); after.current != before.current || after.profile != before.profile {
			t.Fatalf("after the rollback %+v, want %+v", after, before)
		}
	})

	t.Run("HostHealthChecks", func(t *testing.T) {
		// Command checks ship inside the system and run on the host, as
		// root, through the health verb: one that passes confirms, one
		// that fails rolls the host back at once.
		e := e.sub(t)
		h := h3
		// Whatever kernel h3 booted last (KernelChange rebooted it), so that
		// these are plain switches.
		kernel := strings.TrimSpace(e.f.MustExec(t, h, "cat", "/run/booted-system/kernel"))
		good := e.f.System(t, fleettest.System{Label: "health-ok", Kernel: kernel, Health: []fleettest.HealthCheck{
			{Name: "web", Script: "id -u > /run/health-ran"}}})
		nodes := e.nodes(good, 30, h)
		nodes[0].Settings.HealthChecks = []deploy.HealthCheck{{Command: "systemctl is-active web"}}
		rep := e.run(hostverb.Switch, "e2e-health-cmd-ok", nodes, nil)
		if err := rep.Err(); err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, s := range rep.Hosts[0].Steps {
			names = append(names, s.Name)
		}
		if strings.Join(names, ",") != "closure,fetch,activate,health,confirm" {
			t.Fatalf("steps %v", names)
		}
		if out := e.f.MustExec(t, h, "cat", "/run/health-ran"); strings.TrimSpace(out) != "0" {
			t.Fatalf("the check did not run as root on the host: %q", out)
		}
		before := e.state(h)
		bad := e.f.System(t, fleettest.System{Label: "health-bad", Kernel: kernel, Health: []fleettest.HealthCheck{
			{Name: "web", Script: "echo web is down >&2; exit 3"}}})
		nodes = e.nodes(bad, 30, h)
		nodes[0].Settings.HealthChecks = []deploy.HealthCheck{{Command: "systemctl is-active web"}}
		start := time.Now()
		rep = e.run(hostverb.Switch, "e2e-health-cmd-bad", nodes, nil)
		hr := rep.Hosts[0]
		if hr.Result != deploy.RolledBack || !strings.Contains(hr.Error, "web (exit 3: web is down)") {
			t.Fatalf("result %s (%s), want rolled-back naming the failed check", hr.Result, hr.Error)
		}
		t.Logf("failed check rolled back in %s (confirm timeout 30s)", time.Since(start).Round(time.Millisecond))
		if after := e.state(h); after != before {
			t.Fatalf("after the rollback %+v, want %+v", after, before)
		}
	})

	t.Run("CLI", func(t *testing.T) { testCLI(e.sub(t), h2, h1) })
}

// TestE2EClosureRefused needs a cache that can serve unsigned paths.
func TestE2EClosureRefused(t *testing.T) {
	e := newE2E(t, 2, fleettest.Options{Cache: fleettest.WithFileCache})
	missing := e.f.Build(t, fleettest.System{Label: "not-in-cache"})
	unsigned := e.f.Build(t, fleettest.System{Label: "unsigned"})
	e.f.PublishUnsigned(t, unsigned)
	h1, h2 := e.f.Hosts[0], e.f.Hosts[1]
	before := [2]int{len(e.f.ActivationLog(t, h1)), len(e.f.ActivationLog(t, h2))}
	nodes := append(e.nodes(missing, 30, h1), e.nodes(unsigned, 30, h2)...)
	rep := e.run(hostverb.Switch, "e2e-refused", nodes, nil)
	for i, hr := range rep.Hosts {
		if hr.Result != deploy.Refused {
			t.Errorf("%s: result %s (%s), want refused", hr.Node, hr.Result, hr.Error)
		}
		if len(hr.Steps) != 1 || hr.Steps[0].Name != deploy.StepClosure {
			t.Errorf("%s: steps %+v, want only the closure check", hr.Node, hr.Steps)
		}
		h := e.f.Hosts[i]
		if got := e.current(h); got != e.f.Initial {
			t.Errorf("%s changed: runs %s", h.Name, got)
		}
		if n := len(e.f.ActivationLog(t, h)); n != before[i] {
			t.Errorf("%s activated something", h.Name)
		}
	}
	if m := rep.Hosts[0].Missing; len(m) == 0 || m[0] != missing {
		t.Errorf("missing = %v, want %s", m, missing)
	}
	if u := rep.Hosts[1].Unsigned; len(u) == 0 || !contains(u, unsigned) {
		t.Errorf("unsigned = %v, want %s in it", u, unsigned)
	}
	if rep.Err() == nil {
		t.Error("refused hosts must make the deploy fail")
	}
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// dropActivate tears down the host's ssh connection while activate runs
// (ssh -O exit on the master: the TCP connection and its sessions go, as
// in a network failure), once the host has recorded the deploy (so the cut
// lands mid-activation however slow the machine is); everything else goes
// through.
type dropActivate struct {
	*remote.SSH
	record string // the deploy's state file, seen from outside the host
}

func (d dropActivate) Run(ctx context.Context, t remote.Target, args ...string) (remote.Result, error) {
	for _, a := range args {
		if a == "activate" {
			done := make(chan struct{})
			defer close(done)
			go func() {
				for {
					select {
					case <-done:
						return
					case <-time.After(50 * time.Millisecond):
					}
					if _, err := os.Stat(d.record); err == nil {
						d.SSH.Disconnect(context.Background(), t)
						return
					}
				}
			}()
			break
		}
	}
	return d.SSH.Run(ctx, t, args...)
}

// stepHook calls f on every step change, then passes it on.
type stepHook struct {
	deploy.Progress
	f func(step string)
}

func (s stepHook) Step(node, step string) {
	s.f(step)
	s.Progress.Step(node, step)
}

// testCLI drives the real binary (the one the hosts run, built by the
// fleet) as CI would: push with --json, status, rollback, a failing push.
func testCLI(e *e2e, ha, hb *fleettest.Host) {
	t := e.t
	v4 := e.f.System(t, fleettest.System{Label: "v4"})
	bad := e.f.System(t, fleettest.Failing)
	beforeA := e.state(ha)
	dir := t.TempDir()
	writeNodes := func(path string) string {
		p := filepath.Join(dir, "nodes.json")
		doc := fmt.Sprintf(`{"sshOpts": ["-F", %q], "confirmTimeout": 20,
		  "nodes": {%q: {"hostname": %q, "tags": ["a"], "profiles": {"system": {"path": %q}}},
		            %q: {"hostname": %q, "tags": ["a"], "profiles": {"system": {"path": %q}}}}}`,
			e.f.SSHConfig, ha.Name, ha.Name, path, hb.Name, hb.Name, path)
		if err := os.WriteFile(p, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	deployer := func(args ...string) (int, string, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, e.f.Deployer, args...)
		var out, errb strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		t.Logf("deployer %s -> %d\n%s%s", strings.Join(args, " "), code, out.String(), errb.String())
		return code, out.String(), errb.String()
	}
	cache := []string{"--cache", e.f.Cache.URL(), "--trusted-key", e.f.Cache.PublicKey()}
	cc, concordia := e.f.Cache.(*fleettest.ConcordiaCache)
	if concordia {
		cache = append(cache, "--netrc-file", cc.DeployNetrc())
	}

	nodes := writeNodes(v4)
	report := filepath.Join(dir, "report.json")
	if code, _, _ := deployer(append([]string{"push", "--file", nodes, "--on", "@a", "--json", report}, cache...)...); code != 0 {
		t.Fatalf("push exit %d", code)
	}
	var rep deploy.Report
	b, err := os.ReadFile(report)
	if err != nil || json.Unmarshal(b, &rep) != nil || len(rep.Hosts) != 2 || len(rep.Failed) != 0 {
		t.Fatalf("report %s %v", b, err)
	}
	for _, h := range []*fleettest.Host{ha, hb} {
		if got := e.current(h); got != v4 {
			t.Fatalf("%s runs %s", h.Name, got)
		}
	}

	if concordia {
		// The push sent its report to the real cache's history with the
		// deploy job's token; it reads back as --json wrote it.
		tok, _ := cacheapi.NetrcPassword(cc.DeployNetrc(), cc.URL())
		doc, err := (&cacheapi.Client{URL: cc.URL(), Token: tok}).Deploy(context.Background(), rep.ID)
		var sent, written any
		json.Unmarshal(doc, &sent)
		json.Unmarshal(b, &written)
		if err != nil || !reflect.DeepEqual(sent, written) {
			t.Fatalf("the cache's history has %s (%v), --json wrote %s", doc, err, b)
		}
		code, out, _ := deployer("history", "--cache", cc.URL(), "--netrc-file", cc.DeployNetrc(), "--node", ha.Name)
		if code != 0 || !strings.Contains(out, "last deployed by "+rep.ID) || !strings.Contains(out, v4) {
			t.Fatalf("history --node: exit %d %s", code, out)
		}
	}
	if concordia {
		// Each confirmed host's new system is pinned in the cache, so
		// its GC never removes a running system. The pin list is an
		// index of the fleet: an admin's to read.
		req, _ := http.NewRequest("GET", cc.URL()+"/api/pins", nil)
		req.Header.Set("Authorization", "Bearer "+cc.AdminToken())
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var pins []struct {
			StorePath string `json:"storePath"`
			Owner     string `json:"owner"`
		}
		err = json.NewDecoder(resp.Body).Decode(&pins)
		resp.Body.Close()
		found := false
		for _, p := range pins {
			found = found || p.StorePath == v4 && p.Owner == "fleettest-deploy"
		}
		if err != nil || !found {
			t.Fatalf("the deployed system %s is not pinned in the cache: %+v %v", v4, pins, err)
		}
	}

	code, out, _ := deployer("status", "--file", nodes, "--json", ha.Name)
	var st []deploy.StatusResult
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || len(st) != 1 || st[0].Status == nil || st[0].Status.Profile.Path != v4 {
		t.Fatalf("status: exit %d %s", code, out)
	}
	if code, out, _ := deployer("status", "--file", nodes); code != 0 || !strings.Contains(out, hb.Name) {
		t.Fatalf("status table: exit %d %s", code, out)
	}

	if code, _, _ := deployer("rollback", "--file", nodes, ha.Name); code != 0 {
		t.Fatalf("rollback exit %d", code)
	}
	if got := e.state(ha); got.current != beforeA.current || got.gen != beforeA.gen {
		t.Fatalf("after rollback %+v, want %+v", got, beforeA)
	}

	code, _, errs := deployer(append([]string{"push", "--file", writeNodes(bad), "--on", hb.Name}, cache...)...)
	if code == 0 || !strings.Contains(errs, hb.Name+": ROLLED-BACK") {
		t.Fatalf("failing push: exit %d, stderr lacks the summary", code)
	}
	if got := e.current(hb); got != v4 {
		t.Fatalf("%s runs %s after a failed push, want %s", hb.Name, got, v4)
	}
	if code, _, errs := deployer("push", "--file", nodes, "--branch", "feature/x"); code != 0 || !strings.Contains(errs, "nothing to deploy") {
		t.Fatalf("feature branch: exit %d %s", code, errs)
	}
}

// TestE2EPullThrough: a fleet whose cache stands in front of an upstream
// (a binary cache with its own key, as cache.nixos.org is) and is the
// hosts' only substituter. CI uploads only the system's top path (the
// cache tells `nix copy` the upstream has the rest); the closure check
// passes with the cache's key, the host substitutes the whole system from
// the cache (the upstream's paths pulled through it) and switches.
func TestE2EPullThrough(t *testing.T) {
	e := newE2E(t, 1, fleettest.Options{Cache: fleettest.WithPullThroughCache})
	h := e.f.Hosts[0]
	sys := e.f.System(t, fleettest.System{Label: "pulled", Packages: []string{"glibc", "openssl", "hello"}})
	rep := e.run(hostverb.Switch, "e2e-pull", e.nodes(sys, 30, h), nil)
	if err := rep.Err(); err != nil {
		t.Fatal(err)
	}
	if got := e.current(h); got != sys {
		t.Fatalf("%s runs %s, want %s", h.Name, got, sys)
	}
	resp, err := http.Get(e.f.Cache.URL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	metric := func(series string) (v float64) {
		for _, line := range strings.Split(string(body), "\n") {
			if rest, ok := strings.CutPrefix(line, series+" "); ok {
				fmt.Sscan(rest, &v)
			}
		}
		return v
	}
	// Three packages of the new system, pulled, and the initial system's
	// kernel, modules and initrd (pulled when the host got it; the new
	// system shares them).
	if n := metric(`concordia_pull_through_total{result="ok",upstream="upstream"}`); n != 6 {
		t.Errorf("%v paths pulled through, want the system's 3 packages and the 3 boot paths", n)
	}
	// The two systems' top paths, nothing else.
	if n := metric(`concordia_upload_requests_total{kind="narinfo",result="ok"}`); n != 2 {
		t.Errorf("%v narinfos uploaded, want the 2 systems only", n)
	}
}
