package host_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/fleettest"
	"github.com/bos55/concordia/internal/hostverb"
)

// The host verbs on the simulated fleet: real sshd, the gate as forced
// command, sudo, a real nix-daemon and store per host.

type result struct {
	rec    hostverb.Record
	raw    map[string]any
	code   int
	stderr string
}

// verb runs `sudo -n <deployer> args...` on h over a fresh SSH login.
func verb(t *testing.T, f *fleettest.Fleet, h *fleettest.Host, args ...string) result {
	t.Helper()
	return sshRun(t, f, h, append([]string{"sudo", "-n", f.Deployer}, args...)...)
}

func sshRun(t *testing.T, f *fleettest.Fleet, h *fleettest.Host, words ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := f.SSH(ctx, h, words...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var r result
	r.stderr = stderr.String()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("ssh %s %q: %v", h.Name, words, err)
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	last := lines[len(lines)-1]
	if strings.HasPrefix(last, "{") {
		json.Unmarshal([]byte(last), &r.rec)
		json.Unmarshal([]byte(last), &r.raw)
	}
	return r
}

func activate(t *testing.T, f *fleettest.Fleet, h *fleettest.Host, mode, id, path string, extra ...string) result {
	t.Helper()
	args := append([]string{"activate", "--mode", mode, "--id", id, "--confirm-timeout", "3s"}, extra...)
	return verb(t, f, h, append(args, path)...)
}

func fetch(t *testing.T, f *fleettest.Fleet, h *fleettest.Host, path string) result {
	t.Helper()
	return sshRun(t, f, h, "deployer", "fetch", path)
}

func mustFetch(t *testing.T, f *fleettest.Fleet, h *fleettest.Host, path string) {
	t.Helper()
	if r := fetch(t, f, h, path); r.code != 0 {
		t.Fatalf("%s: fetch %s: exit %d: %s", h.Name, path, r.code, r.stderr)
	}
}

func waitFinal(t *testing.T, f *fleettest.Fleet, h *fleettest.Host, id string) result {
	t.Helper()
	r := verb(t, f, h, "wait", "--id", id, "--timeout", "1m")
	for deadline := time.Now().Add(time.Minute); !r.rec.State.Final() && time.Now().Before(deadline); {
		time.Sleep(200 * time.Millisecond)
		r = verb(t, f, h, "wait", "--id", id, "--timeout", "1m")
	}
	return r
}

func TestFleetHostVerbs(t *testing.T) {
	f := fleettest.New(t, 6, fleettest.Options{})
	old := f.Initial
	v2 := f.System(t, fleettest.System{Label: "v2"})
	v3 := f.System(t, fleettest.System{Label: "v3", InitInterface: "systemd-next"})
	failing := f.System(t, fleettest.Failing)
	breaks := f.System(t, fleettest.BreaksSSH)
	kernel := f.System(t, fleettest.NewKernel)
	slow := f.System(t, fleettest.System{Label: "slow", Sleep: 4 * time.Second})

	t.Run("switch then confirm", func(t *testing.T) {
		t.Parallel()
		h := f.Hosts[0]
		mustFetch(t, f, h, v2)
		r := activate(t, f, h, "switch", "sw-1", v2)
		if r.code != 0 || r.rec.State != hostverb.AwaitingConfirm || r.rec.Generation != 2 {
			t.Fatalf("activate: exit %d %+v\n%s", r.code, r.rec, r.stderr)
		}
		if got := f.Readlink(t, h, "/run/current-system"); got != v2 {
			t.Fatalf("running %s", got)
		}
		if n, p := f.ProfileGeneration(t, h); n != 2 || p != v2 {
			t.Fatalf("profile %d %s", n, p)
		}
		if n, ok := f.BootDefault(t, h); n != 2 || !ok {
			t.Fatalf("boot default %d %v", n, ok)
		}
		if c := verb(t, f, h, "confirm", "--id", "sw-1"); c.code != 0 || c.rec.State != hostverb.Confirmed {
			t.Fatalf("confirm: %d %+v %s", c.code, c.rec, c.stderr)
		}
		time.Sleep(4 * time.Second) // past the deadline: nothing rolls back
		if got := f.Readlink(t, h, "/run/current-system"); got != v2 {
			t.Fatalf("confirmed system replaced by %s", got)
		}
		st := verb(t, f, h, "status", "--local", "--json")
		if st.code != 0 || st.raw["lock"] != nil || st.raw["testActive"] != false {
			t.Fatalf("status: %d %v", st.code, st.raw)
		}
		// dry-activate changes nothing; boot only the profile and boot entry
		// (switch-to-configuration checks no init interface for boot: it
		// never exits 100 there).
		mustFetch(t, f, h, v3)
		if r := activate(t, f, h, "dry-activate", "dry-1", v3); r.code != 0 || r.rec.State != hostverb.Confirmed {
			t.Fatalf("dry-activate: %d %+v", r.code, r.rec)
		}
		if n, _ := f.ProfileGeneration(t, h); n != 2 || f.Readlink(t, h, "/run/current-system") != v2 {
			t.Fatal("dry-activate changed the host")
		}
		r = activate(t, f, h, "boot", "boot-1", v3)
		if r.code != 0 || r.rec.State != hostverb.Confirmed || r.rec.Mode != hostverb.Boot {
			t.Fatalf("boot: %d %+v", r.code, r.rec)
		}
		if n, _ := f.BootDefault(t, h); n != 3 || f.Readlink(t, h, "/run/current-system") != v2 {
			t.Fatalf("boot: default %d, running %s", n, f.Readlink(t, h, "/run/current-system"))
		}
		log := f.ActivationLog(t, h)
		if len(log) != 4 || !strings.HasPrefix(log[2], "dry-activate "+v3) || !strings.HasPrefix(log[3], "boot "+v3) {
			t.Fatalf("activation log %q", log)
		}
		// rollback --local: back to generation 2, activated with switch.
		if r := verb(t, f, h, "rollback", "--local", "--id", "rb-1"); r.code != 0 {
			t.Fatalf("rollback: %d %s", r.code, r.stderr)
		}
		if n, p := f.ProfileGeneration(t, h); n != 2 || p != v2 {
			t.Fatalf("after rollback profile %d %s", n, p)
		}
		if n, _ := f.BootDefault(t, h); n != 2 {
			t.Fatalf("after rollback boot default %d", n)
		}
		if log := f.ActivationLog(t, h); !strings.HasPrefix(log[len(log)-1], "switch "+v2) {
			t.Fatalf("after rollback activation log %q", log)
		}
	})

	t.Run("test mode then reboot", func(t *testing.T) {
		t.Parallel()
		h := f.Hosts[1]
		mustFetch(t, f, h, v2)
		r := activate(t, f, h, "test", "t-1", v2)
		if r.code != 0 || r.rec.State != hostverb.AwaitingConfirm {
			t.Fatalf("activate: exit %d %+v\n%s", r.code, r.rec, r.stderr)
		}
		if c := verb(t, f, h, "confirm", "--id", "t-1"); c.code != 0 {
			t.Fatalf("confirm: %d %s", c.code, c.stderr)
		}
		if got := f.Readlink(t, h, "/run/current-system"); got != v2 {
			t.Fatalf("running %s", got)
		}
		if n, p := f.ProfileGeneration(t, h); n != 1 || p != old {
			t.Fatalf("test mode changed the profile: %d %s", n, p)
		}
		if n, _ := f.BootDefault(t, h); n != 1 {
			t.Fatalf("test mode changed the boot entry: %d", n)
		}
		st := verb(t, f, h, "status", "--local", "--json")
		if st.raw["testActive"] != true {
			t.Fatalf("status: %v", st.raw)
		}
		f.Reboot(t, h)
		if got := f.Readlink(t, h, "/run/current-system"); got != old {
			t.Fatalf("after reboot running %s, want the old %s", got, old)
		}
	})

	t.Run("no confirm rolls back switch then test", func(t *testing.T) {
		t.Parallel()
		h := f.Hosts[2]
		mustFetch(t, f, h, v2)
		r := activate(t, f, h, "switch", "nc-1", v2)
		if r.code != 0 {
			t.Fatalf("activate: exit %d %s", r.code, r.stderr)
		}
		w := waitFinal(t, f, h, "nc-1")
		if w.rec.State != hostverb.RolledBack || w.code != hostverb.ExitRolledBack || !w.rec.RolledBack {
			t.Fatalf("wait: %d %+v", w.code, w.rec)
		}
		if got := f.Readlink(t, h, "/run/current-system"); got != old {
			t.Fatalf("running %s", got)
		}
		if n, p := f.ProfileGeneration(t, h); n != 1 || p != old {
			t.Fatalf("profile %d %s", n, p)
		}
		if gens := f.Generations(t, h); fmt.Sprint(gens) != "[1]" {
			t.Fatalf("failed generation kept: %v", gens)
		}
		if n, ok := f.BootDefault(t, h); n != 1 || !ok {
			t.Fatalf("boot default %d", n)
		}
		if c := verb(t, f, h, "confirm", "--id", "nc-1"); c.code != hostverb.ExitRolledBack {
			t.Fatalf("late confirm: %d %+v", c.code, c.rec)
		}
		r = activate(t, f, h, "test", "nc-2", v2)
		if r.code != 0 {
			t.Fatalf("activate test: exit %d %s", r.code, r.stderr)
		}
		if w := waitFinal(t, f, h, "nc-2"); w.rec.State != hostverb.RolledBack {
			t.Fatalf("test wait: %+v", w.rec)
		}
		if got := f.Readlink(t, h, "/run/current-system"); got != old {
			t.Fatalf("running %s", got)
		}
		if n, _ := f.ProfileGeneration(t, h); n != 1 {
			t.Fatalf("profile %d", n)
		}
	})

	t.Run("failing activation rolls back at once; ssh-breaking one is undone", func(t *testing.T) {
		t.Parallel()
		h := f.Hosts[3]
		mustFetch(t, f, h, failing)
		r := activate(t, f, h, "switch", "f-1", failing)
		if r.code != hostverb.ExitFailed || r.rec.State != hostverb.Failed || !r.rec.RolledBack {
			t.Fatalf("activate: exit %d %+v %s", r.code, r.rec, r.stderr)
		}
		if got := f.Readlink(t, h, "/run/current-system"); got != old {
			t.Fatalf("running %s", got)
		}
		if gens := f.Generations(t, h); fmt.Sprint(gens) != "[1]" {
			t.Fatalf("generations %v", gens)
		}
		mustFetch(t, f, h, breaks)
		r = activate(t, f, h, "switch", "b-1", breaks)
		if r.code != 0 {
			t.Fatalf("activate: exit %d %s", r.code, r.stderr)
		}
		if f.SSHUp(h) {
			t.Fatal("the breaking system left sshd running")
		}
		if c := sshRun(t, f, h, "deployer", "version"); c.code != 255 {
			t.Fatalf("login while sshd is down: exit %d", c.code)
		}
		deadline := time.Now().Add(30 * time.Second)
		for !f.SSHUp(h) && time.Now().Before(deadline) {
			time.Sleep(200 * time.Millisecond)
		}
		w := waitFinal(t, f, h, "b-1")
		if w.rec.State != hostverb.RolledBack {
			t.Fatalf("after ssh came back: %+v", w.rec)
		}
		if got := f.Readlink(t, h, "/run/current-system"); got != old {
			t.Fatalf("running %s", got)
		}
	})

	t.Run("ssh cut during activation; second deploy refused", func(t *testing.T) {
		t.Parallel()
		h := f.Hosts[4]
		mustFetch(t, f, h, slow)
		mustFetch(t, f, h, v2)
		ctx, cancel := context.WithCancel(context.Background())
		cmd := f.SSH(ctx, h, "sudo", "-n", f.Deployer, "activate", "--mode", "switch", "--id", "cut-1", "--confirm-timeout", "30s", slow)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Wait until the activation runs, then kill the ssh client.
		for i := 0; ; i++ {
			if out, _ := f.Exec(h, "cat", "/run/concordia/deploys/cut-1.json"); strings.Contains(out, `"generation": 2`) {
				break
			}
			if i > 200 {
				t.Fatal("activation did not start")
			}
			time.Sleep(50 * time.Millisecond)
		}
		cancel()
		cmd.Wait()
		second := activate(t, f, h, "test", "cut-2", v2)
		if second.code != hostverb.ExitLocked || !strings.Contains(second.stderr, "cut-1") {
			t.Fatalf("second deploy: exit %d %s", second.code, second.stderr)
		}
		w := verb(t, f, h, "wait", "--id", "cut-1", "--timeout", "1m")
		if w.code != 0 || w.rec.State != hostverb.AwaitingConfirm {
			t.Fatalf("wait: %d %+v %s", w.code, w.rec, w.stderr)
		}
		if got := f.Readlink(t, h, "/run/current-system"); got != slow {
			t.Fatalf("running %s: the activation did not finish", got)
		}
		if c := verb(t, f, h, "confirm", "--id", "cut-1"); c.code != 0 {
			t.Fatalf("confirm: %d", c.code)
		}
	})

	t.Run("kernel change and narrow powers", func(t *testing.T) {
		t.Parallel()
		h := f.Hosts[5]
		mustFetch(t, f, h, kernel)
		r := activate(t, f, h, "switch", "k-1", kernel, "--kernel-change", "report")
		if r.code != hostverb.ExitKernelChange {
			t.Fatalf("kernel change: exit %d %s", r.code, r.stderr)
		}
		if n, _ := f.ProfileGeneration(t, h); n != 1 {
			t.Fatal("kernel change report changed the profile")
		}
		r = activate(t, f, h, "switch", "k-2", kernel, "--kernel-change", "boot")
		if r.code != 0 || r.rec.Mode != hostverb.Boot || r.rec.State != hostverb.Confirmed {
			t.Fatalf("kernel change boot: exit %d %+v %s", r.code, r.rec, r.stderr)
		}
		if n, _ := f.BootDefault(t, h); n != 2 || f.Readlink(t, h, "/run/current-system") != old {
			t.Fatalf("boot: default %d", n)
		}
		if st := verb(t, f, h, "status", "--local", "--json"); st.raw["rebootPending"] != true {
			t.Fatalf("status: %v", st.raw)
		}
		f.Reboot(t, h)
		if got := f.Readlink(t, h, "/run/booted-system"); got != kernel {
			t.Fatalf("booted %s after reboot", got)
		}

		refusedByGate := [][]string{
			{"/bin/sh"}, {"sh", "-c", "id"}, {"id"}, {"sudo", "-n", "/bin/sh"},
			{"sudo", "-n", "/usr/bin/id"}, {"deployer", "fetch", "/nix/store/x;id"},
			{"sudo", "-n", f.Deployer, "watchdog", "--id", "x"},
		}
		for _, words := range refusedByGate {
			if r := sshRun(t, f, h, words...); r.code != 126 {
				t.Errorf("gate let %q through: exit %d %s", words, r.code, r.stderr)
			}
		}
		// Past the gate the deploy user has no sudo at all; the root agent
		// answers it (and root), nobody else.
		as := func(user string, argv ...string) (string, error) {
			return f.Exec(h, append([]string{"runuser", "-u", user, "--"}, argv...)...)
		}
		if out, err := as("deploy", f.Deployer, "host", "status"); err != nil || !strings.Contains(out, contractMarker) {
			t.Fatalf("control: deploy cannot ask the agent for the status: %v %s", err, out)
		}
		// The socket's mode keeps others out before the agent's peer check
		// would (internal/agent tests that check on its own).
		if out, err := as(fleettest.OtherUser, f.Deployer, "host", "status"); err == nil || !strings.Contains(out, "permission denied") {
			t.Errorf("the agent answered another local user: %v %s", err, out)
		}
		for _, argv := range [][]string{{"sudo", "-n", "/bin/sh", "-c", "id"}, {"sudo", "-n", "/usr/bin/id"}, {"sudo", "-n", f.Deployer, "watchdog", "--id", "x"},
			{"sudo", "-n", f.Deployer, "gate"}, {"sudo", "-n", f.Deployer, "status", "--local", "--json"}, {"sudo", "-n", f.Deployer, "host", "status"}} {
			if out, err := as("deploy", argv...); err == nil {
				t.Errorf("sudo allowed %q: %s", argv, out)
			}
		}
		// The gate checks the path against the contract before anything runs.
		for _, p := range []string{"/tmp/x", "/nix/store/../../etc/passwd", old + "/bin"} {
			if r := activate(t, f, h, "switch", "bad", p); r.code != hostverb.ExitRefused {
				t.Errorf("activate %s: exit %d", p, r.code)
			}
		}
	})
}

// The host's daemon takes only signed substitutes from the deploy user: the
// same cache serving a path without a signature gets it refused.
func TestFleetFetchNeedsSignature(t *testing.T) {
	f := fleettest.New(t, 1, fleettest.Options{NoInitial: true, Cache: fleettest.WithFileCache})
	h := f.Hosts[0]
	unsigned := f.Build(t, fleettest.System{Label: "unsigned"})
	f.PublishUnsigned(t, unsigned)
	signed := f.System(t, fleettest.System{Label: "signed"})
	if r := fetch(t, f, h, unsigned); r.code == 0 || !strings.Contains(r.stderr, "not signed") {
		t.Fatalf("unsigned fetch: exit %d %s", r.code, r.stderr)
	}
	if out, _ := f.Exec(h, "nix-store", "--check-validity", unsigned); !strings.Contains(out, "not valid") {
		t.Fatalf("unsigned path is in the host store: %s", out)
	}
	mustFetch(t, f, h, signed)
	if _, err := f.Exec(h, "nix-store", "--check-validity", signed); err != nil {
		t.Fatal("signed path not valid on the host after fetch")
	}
	// Not in the cache at all: refused as well, nothing to activate.
	missing := f.Build(t, fleettest.System{Label: "missing"})
	if r := fetch(t, f, h, missing); r.code == 0 {
		t.Fatal("fetch of a path missing from the cache succeeded")
	}
	if r := activate(t, f, h, "switch", "m-1", missing); r.code != hostverb.ExitInvalid {
		t.Fatalf("activate of a path not in the host store: exit %d", r.code)
	}
}

// contractMarker is what every answer of this contract carries.
var contractMarker = fmt.Sprintf(`"contract":%d`, hostverb.Contract)
