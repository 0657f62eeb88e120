package deploy_test

// switch-to-configuration-ng on the simulated fleet, through the real ssh
// path: failed units new vs from before, another switch in progress,
// switch inhibitors, kernel and initrd changes, exit 100 on test, a
// rollback to a reused generation, and the exporter after each.

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/bos55/concordia/internal/deploy"
	"github.com/bos55/concordia/internal/fleettest"
	"github.com/bos55/concordia/internal/hostverb"
	"github.com/bos55/concordia/internal/remote"
)

// metrics is what the generation exporter says on h.
func (e *e2e) metrics(h *fleettest.Host) string {
	e.t.Helper()
	file := filepath.Join(e.t.TempDir(), "gen.prom")
	e.f.MustExec(e.t, h, e.f.Deployer, "metrics", "--textfile", file)
	b, err := os.ReadFile(file)
	if err != nil {
		e.t.Fatal(err)
	}
	return string(b)
}

func (e *e2e) wantMetrics(h *fleettest.Host, lines ...string) {
	e.t.Helper()
	got := e.metrics(h)
	for _, l := range lines {
		if !strings.Contains(got, "\n"+l+"\n") {
			e.t.Errorf("%s: exporter lacks %q:\n%s", h.Name, l, got)
		}
	}
}

func TestNgFailedUnits(t *testing.T) {
	e := newE2E(t, 2, fleettest.Options{})
	h, h2 := e.f.Hosts[0], e.f.Hosts[1]
	e.f.FailUnit(t, h, "crashy.service") // failing for weeks
	e.f.FailUnit(t, h2, "crashy.service")
	good := e.f.System(t, fleettest.System{Label: "v2"})
	bad := e.f.System(t, fleettest.System{Label: "bad", FailUnits: []string{"broken.service"}})

	t.Run("failed before: the deploy stands", func(t *testing.T) {
		e := e.sub(t)
		rep := e.run(hostverb.Switch, "ng-units-old", e.nodes(good, 30, h), nil)
		hr := rep.Hosts[0]
		if rep.Err() != nil || !slices.Equal(hr.FailedUnits, []string{"crashy.service"}) || len(hr.NewFailedUnits) != 0 {
			t.Fatalf("%s %s %+v", hr.Result, hr.Error, hr)
		}
		if e.current(h) != good {
			t.Fatal("not switched")
		}
		e.wantMetrics(h, "nixos_failed_units 1", "nixos_current_generation 2")
	})
	t.Run("new failure: rolled back, and the rollback's own exit 4 is no failure", func(t *testing.T) {
		e := e.sub(t)
		before := e.state(h)
		rep := e.run(hostverb.Switch, "ng-units-new", e.nodes(bad, 30, h), nil)
		hr := rep.Hosts[0]
		if hr.Result != deploy.RolledBack || !slices.Equal(hr.NewFailedUnits, []string{"broken.service"}) ||
			!strings.Contains(hr.Error, "units failed: broken.service") || strings.Contains(hr.Error, "rollback failed") {
			t.Fatalf("%s %s", hr.Result, hr.Error)
		}
		if after := e.state(h); after != before {
			t.Fatalf("after the rollback %+v, want %+v", after, before)
		}
		if got := e.f.FailedUnits(t, h); !slices.Equal(got, []string{"crashy.service"}) {
			t.Fatalf("failed units after the rollback: %v", got)
		}
	})
	t.Run("new failure without auto-rollback: left as is, reported", func(t *testing.T) {
		e := e.sub(t)
		nodes := e.nodes(bad, 30, h2)
		nodes[0].Settings.AutoRollback = false
		rep := e.run(hostverb.Switch, "ng-units-noauto", nodes, nil)
		hr := rep.Hosts[0]
		if hr.Result != deploy.Failed || !slices.Equal(hr.NewFailedUnits, []string{"broken.service"}) || !strings.Contains(hr.Error, "left as is") {
			t.Fatalf("%s %s", hr.Result, hr.Error)
		}
		if e.current(h2) != bad {
			t.Fatal("auto-rollback off, yet the system was rolled back")
		}
		e.wantMetrics(h2, "nixos_failed_units 2")
	})
}

func TestNgAnotherSwitch(t *testing.T) {
	e := newE2E(t, 1, fleettest.Options{})
	h := e.f.Hosts[0]
	v2 := e.f.System(t, fleettest.System{Label: "v2"})
	before := e.state(h)
	for _, tc := range []struct {
		name, want string
		hold       func() func()
	}{
		{"nixos-rebuild's unit", "nixos-rebuild is switching", func() func() {
			return e.f.StartUnit(t, h, "nixos-rebuild-switch-to-configuration.service")
		}},
		{"ng's lock", "holds its lock", func() func() { return e.f.HoldSwitchLock(t, h) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := e.sub(t)
			release := tc.hold()
			rep := e.run(hostverb.Switch, "ng-busy-"+strings.ReplaceAll(strings.ReplaceAll(tc.name, " ", "-"), "'", ""), e.nodes(v2, 30, h), nil)
			release()
			hr := rep.Hosts[0]
			if hr.Result != deploy.Refused || !strings.Contains(hr.Error, tc.want) {
				t.Fatalf("%s %s", hr.Result, hr.Error)
			}
			if after := e.state(h); after != before {
				t.Fatalf("another switch was running, yet %+v, want %+v", after, before)
			}
		})
	}
	// And with nothing in the way it goes through, in the same transient
	// unit nixos-rebuild uses.
	if rep := e.run(hostverb.Switch, "ng-busy-free", e.nodes(v2, 30, h), nil); rep.Err() != nil {
		t.Fatal(rep.Err())
	}
}

func TestNgInhibitors(t *testing.T) {
	e := newE2E(t, 1, fleettest.Options{})
	h := e.f.Hosts[0]
	a := e.f.System(t, fleettest.System{Label: "dbus", Inhibitors: map[string]string{"dbus-implementation": "dbus"}})
	b := e.f.System(t, fleettest.System{Label: "broker", Inhibitors: map[string]string{"dbus-implementation": "broker"}})
	if rep := e.run(hostverb.Switch, "ng-inh-a", e.nodes(a, 30, h), nil); rep.Err() != nil {
		t.Fatal(rep.Err())
	}
	before := e.state(h)
	rep := e.run(hostverb.Switch, "ng-inh-b", e.nodes(b, 30, h), nil)
	hr := rep.Hosts[0]
	if hr.Result != deploy.Refused || !strings.Contains(hr.Error, "dbus-implementation : dbus -> broker") || !strings.Contains(hr.Error, "--mode boot") {
		t.Fatalf("%s %s", hr.Result, hr.Error)
	}
	if after := e.state(h); after != before {
		t.Fatalf("refused by the inhibitors, yet %+v, want %+v", after, before)
	}
	// The override reaches switch-to-configuration (through systemd-run's
	// -E): its own check would refuse otherwise.
	rep = e.run(hostverb.Switch, "ng-inh-b-nocheck", e.nodes(b, 30, h), nil, func(o *deploy.Options) { o.NoCheck = true })
	if err := rep.Err(); err != nil || e.current(h) != b {
		t.Fatalf("--no-check: %v, running %s", err, e.current(h))
	}
}

func TestNgKernelAndInitrd(t *testing.T) {
	e := newE2E(t, 1, fleettest.Options{})
	h := e.f.Hosts[0]
	nk := e.f.System(t, fleettest.NewKernel)
	rep := e.run(hostverb.Switch, "ng-kernel", e.nodes(nk, 30, h), nil)
	hr := rep.Hosts[0]
	if rep.Err() != nil || hr.Result != deploy.OK || !hr.RebootRequired {
		t.Fatalf("a kernel change switches by default and reports the reboot: %s %s %+v", hr.Result, hr.Error, hr)
	}
	if e.current(h) != nk {
		t.Fatal("not switched")
	}
	e.wantMetrics(h, "nixos_reboot_required 1", "nixos_current_generation 2", `nixos_boot_generation{source="systemd-boot"} 2`)
	e.f.Reboot(t, h)
	e.reconnect(h)
	e.wantMetrics(h, "nixos_reboot_required 0", "nixos_booted_generation 2")
	// Most nixpkgs bumps: same kernel, new initrd. Recommended, not required.
	bump := e.f.System(t, fleettest.System{Label: "bump", Kernel: "6.6.0", Initrd: "initrd-6.6.0-new-systemd"})
	rep = e.run(hostverb.Switch, "ng-initrd", e.nodes(bump, 30, h), nil)
	hr = rep.Hosts[0]
	if rep.Err() != nil || hr.RebootRequired || !hr.RebootRecommended {
		t.Fatalf("initrd only: %s %s %+v", hr.Result, hr.Error, hr)
	}
	e.wantMetrics(h, "nixos_reboot_required 0", "nixos_reboot_recommended 1")
}

func TestNgInitInterface(t *testing.T) {
	e := newE2E(t, 1, fleettest.Options{})
	h := e.f.Hosts[0]
	sys := e.f.System(t, fleettest.System{Label: "new-init", InitInterface: "systemd-2"})
	before := e.state(h)
	rep := e.run(hostverb.Test, "ng-init-test", e.nodes(sys, 30, h), nil)
	hr := rep.Hosts[0]
	if hr.Result != deploy.RebootRequired || rep.Err() == nil || !strings.Contains(hr.Error, "can only be booted") {
		t.Fatalf("test with a new init interface: %s %s", hr.Result, hr.Error)
	}
	if after := e.state(h); after != before {
		t.Fatalf("exit 100 activated something: %+v, want %+v", after, before)
	}
	// switch: the boot loader was installed before ng stopped; the host
	// boots it next, runs the old system now.
	rep = e.run(hostverb.Switch, "ng-init-switch", e.nodes(sys, 30, h), nil)
	hr = rep.Hosts[0]
	if rep.Err() != nil || !hr.RebootRequired {
		t.Fatalf("switch with a new init interface: %s %s", hr.Result, hr.Error)
	}
	if after := e.state(h); after.current != before.current || after.profile != sys || after.boot != after.gen {
		t.Fatalf("after %+v (before %+v): want the new system as the boot default only", after, before)
	}
}

// A rollback to a generation Nix reuses must not delete it: deploy v2,
// roll back by hand, deploy v2 again (Nix reuses generation 2) with a
// failing health check: the host rolls back and keeps generation 2.
func TestNgReusedGeneration(t *testing.T) {
	e := newE2E(t, 1, fleettest.Options{})
	h := e.f.Hosts[0]
	v2 := e.f.System(t, fleettest.System{Label: "v2", Health: []fleettest.HealthCheck{{Name: "web", Script: "test -e /run/web-up"}}})
	e.f.MustExec(t, h, "touch", "/run/web-up")
	nodes := e.nodes(v2, 30, h)
	nodes[0].Settings.HealthChecks = []deploy.HealthCheck{{Command: "web"}}
	if rep := e.run(hostverb.Switch, "ng-reuse-1", nodes, nil); rep.Err() != nil {
		t.Fatal(rep.Err())
	}
	var out strings.Builder
	if err := deploy.Rollback(context.Background(), e.ssh, nodes, "ng-reuse-rb", &out); err != nil {
		t.Fatalf("%v %s", err, out.String())
	}
	if gens := e.f.Generations(t, h); !slices.Equal(gens, []int{1, 2}) {
		t.Fatalf("generations after the rollback %v", gens)
	}
	e.f.MustExec(t, h, "rm", "/run/web-up")
	rep := e.run(hostverb.Switch, "ng-reuse-2", nodes, nil)
	if hr := rep.Hosts[0]; hr.Result != deploy.RolledBack {
		t.Fatalf("%s %s", hr.Result, hr.Error)
	}
	if gens := e.f.Generations(t, h); !slices.Equal(gens, []int{1, 2}) {
		t.Fatalf("the rollback deleted a generation it did not create: %v", gens)
	}
	if n, p := e.f.ProfileGeneration(t, h); n != 1 || p != e.f.Initial {
		t.Fatalf("profile %d %s", n, p)
	}
}

// reconnect drops the shared ssh connection to h (after a reboot).
func (e *e2e) reconnect(h *fleettest.Host) {
	e.ssh.Disconnect(context.Background(), remote.Target{Host: h.Name, Opts: []string{"-F", e.f.SSHConfig}})
}
