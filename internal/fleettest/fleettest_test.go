package fleettest_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/fleettest"
)

func TestFleetBoots(t *testing.T) {
	f := fleettest.New(t, 2, fleettest.Options{})
	for _, h := range f.Hosts {
		if got := f.Readlink(t, h, "/run/current-system"); got != f.Initial {
			t.Fatalf("%s runs %q, want %s", h.Name, got, f.Initial)
		}
		if got := f.Readlink(t, h, "/run/booted-system"); got != f.Initial {
			t.Fatalf("%s booted %q", h.Name, got)
		}
		if n, p := f.ProfileGeneration(t, h); n != 1 || p != f.Initial {
			t.Fatalf("%s profile %d %s", h.Name, n, p)
		}
		if n, ok := f.BootDefault(t, h); n != 1 || !ok {
			t.Fatalf("%s boot default %d %v", h.Name, n, ok)
		}
		if out, err := f.SSH(context.Background(), h, "deployer", "version").CombinedOutput(); err != nil {
			t.Fatalf("%s: ssh deployer version: %v %s", h.Name, err, out)
		}
		// Each host has its own store, seen only inside its namespace.
		if out := f.MustExec(t, h, "ls", "/nix/store"); !strings.Contains(out, filepath.Base(f.Initial)) {
			t.Fatalf("host store: %s", out)
		}
		if _, err := os.Stat(filepath.Join(h.Dir, "nix", "store", filepath.Base(f.Initial))); err != nil {
			t.Fatalf("not in the host's own store dir: %v", err)
		}
		if log := f.ActivationLog(t, h); len(log) != 1 || !strings.HasPrefix(log[0], "boot "+f.Initial+" ") {
			t.Fatalf("activation log %q", log)
		}
	}
	if _, err := os.Stat(filepath.Join("/nix/var/nix/profiles", "system")); err == nil {
		if l, _ := os.Readlink("/nix/var/nix/profiles/system"); strings.Contains(l, "fleet") {
			t.Fatal("the machine's own profile was touched")
		}
	}
}

func TestFleetSSHToggleAndReboot(t *testing.T) {
	f := fleettest.New(t, 1, fleettest.Options{})
	h := f.Hosts[0]
	f.StopSSH(t, h)
	if f.SSHUp(h) {
		t.Fatal("sshd still up")
	}
	if err := f.SSH(context.Background(), h, "deployer", "version").Run(); err == nil {
		t.Fatal("login worked with sshd stopped")
	}
	f.StartSSH(t, h)
	if out, err := f.SSH(context.Background(), h, "deployer", "version").CombinedOutput(); err != nil {
		t.Fatalf("login after StartSSH: %v %s", err, out)
	}
	// A system installed as boot default runs after Reboot; /run is fresh.
	v2 := f.System(t, fleettest.System{Label: "v2", Kernel: "6.6.0"})
	f.MustExec(t, h, "nix-store", "--realise", v2)
	f.MustExec(t, h, "nix-env", "-p", "/nix/var/nix/profiles/system", "--set", v2)
	f.MustExec(t, h, v2+"/bin/switch-to-configuration", "boot")
	if n, ok := f.BootDefault(t, h); n != 2 || !ok {
		t.Fatalf("boot default %d", n)
	}
	f.MustExec(t, h, "touch", "/run/stale")
	f.Reboot(t, h)
	if got := f.Readlink(t, h, "/run/booted-system"); got != v2 {
		t.Fatalf("booted %s", got)
	}
	if got := f.Readlink(t, h, "/run/current-system"); got != v2 {
		t.Fatalf("running %s", got)
	}
	if _, err := f.Exec(h, "test", "-e", "/run/stale"); err == nil {
		t.Fatal("/run survived the reboot")
	}
	if out, err := f.SSH(context.Background(), h, "deployer", "version").CombinedOutput(); err != nil {
		t.Fatalf("login after reboot: %v %s", err, out)
	}
	if out := f.MustExec(t, h, "cat", v2+"/kernel"); strings.TrimSpace(out) != "6.6.0" {
		t.Fatalf("kernel %q", out)
	}
}

// Everything a fleet started is gone after its test: processes in its
// namespaces or in namespaces copied from them, its sudoers rule and its
// files.
func TestFleetCleanup(t *testing.T) {
	var ns []string
	var dir, deployer string
	outer := t
	t.Run("fleet", func(t *testing.T) {
		f := fleettest.New(t, 2, fleettest.Options{NoInitial: true})
		dir, deployer = f.Dir, f.Deployer
		for _, h := range f.Hosts {
			// Held past the fleet's end: the namespace keeps its name, so
			// whatever is found in it below is the fleet's.
			held, err := h.HoldNamespace()
			if err != nil {
				t.Fatal(err)
			}
			outer.Cleanup(func() { held.Close() })
			ns = append(ns, h.Namespace())
			// Leave a detached process behind, as a watchdog would, and one
			// in a private namespace of its own, as a root Nix command
			// (nix-env, nix show-config) makes, that names no host folder.
			f.MustExec(t, h, "/bin/sh", "-c", "setsid -f sleep 300 </dev/null >/dev/null 2>&1")
			f.MustExec(t, h, "/bin/sh", "-c", "env -u NIX_CONF_DIR setsid -f unshare -m sleep 301 </dev/null >/dev/null 2>&1")
		}
		if got := fleetProcs(dir, ns); len(got) < 2*len(f.Hosts) {
			t.Fatalf("the check finds only %d of the fleet's processes: %q", len(got), got)
		}
	})
	for _, p := range fleetProcs(dir, ns) {
		t.Errorf("still runs after the fleet: %s", p)
	}
	if _, err := os.Stat(dir); err == nil {
		t.Errorf("%s left behind", dir)
	}
	rules, _ := filepath.Glob("/etc/sudoers.d/concordia-fleettest-*")
	for _, r := range rules {
		if b, _ := os.ReadFile(r); strings.Contains(string(b), deployer) {
			t.Errorf("sudoers rule %s left behind", r)
		}
	}
}

// fleetProcs lists the processes in one of the namespaces ns, or with a
// mount of the fleet's folder dir, as "pid (cmdline)".
func fleetProcs(dir string, ns []string) []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid))
		if err != nil {
			continue
		}
		mounts, _ := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
		if slices.Contains(ns, l) || strings.Contains(string(mounts), "/"+filepath.Base(dir)+"/") {
			cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			out = append(out, fmt.Sprintf("%d (%q)", pid, cmd))
		}
	}
	return out
}

// TestFleetMany starts FLEETTEST_HOSTS hosts (skipped when unset) to measure
// how the harness scales, e.g. for the 20-host deploy benchmark.
func TestFleetMany(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("FLEETTEST_HOSTS"))
	if n == 0 {
		t.Skip("set FLEETTEST_HOSTS=N to start N hosts")
	}
	start := time.Now()
	f := fleettest.New(t, n, fleettest.Options{})
	t.Logf("%d hosts ready in %s", n, time.Since(start))
	for _, h := range f.Hosts {
		if out, err := f.SSH(context.Background(), h, "deployer", "version").CombinedOutput(); err != nil {
			t.Fatalf("%s: %v %s", h.Name, err, out)
		}
	}
}
