package deploy_test

// Reboots on the simulated fleet: the host verb reboots a host through its
// (fake) systemctl, the fleet reboots it into the loader's default with a
// new boot id, and the push side waits for it, checks what it booted and
// its health, and rolls a bad boot back.

import (
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/deploy"
	"github.com/bos55/concordia/internal/fleettest"
	"github.com/bos55/concordia/internal/hostverb"
)

func TestE2EReboot(t *testing.T) {
	e := newE2E(t, 3, fleettest.Options{})
	h1, h2, h3 := e.f.Hosts[0], e.f.Hosts[1], e.f.Hosts[2]
	// A kernel update: the new system ships a health check that passes;
	// h3's variant one that fails once booted.
	good := e.f.System(t, fleettest.System{Label: "kernel-6.6", Kernel: "6.6.0",
		Health: []fleettest.HealthCheck{{Name: "web", Script: "test \"$(cat /run/booted-system/kernel)\" = 6.6.0"}}})
	bad := e.f.System(t, fleettest.System{Label: "kernel-6.6-broken", Kernel: "6.6.0",
		Health: []fleettest.HealthCheck{{Name: "web", Script: "echo web is down >&2; exit 3"}}})
	nodes := append(e.nodes(good, 30, h1, h2), e.nodes(bad, 30, h3)...)
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].Name < nodes[j].Name })
	for i := range nodes {
		nodes[i].Settings.HealthChecks = []deploy.HealthCheck{{Command: "systemctl is-active web"}}
	}
	firstBoot := map[string]fleettest.Boot{}
	for _, h := range e.f.Hosts {
		firstBoot[h.Name] = e.f.HostBoots(h)[0]
	}

	t.Run("KernelUpdateInWavesOfOne", func(t *testing.T) {
		e := e.sub(t)
		rep := e.run(hostverb.Boot, "e2e-reboot", nodes, nil, func(o *deploy.Options) {
			o.Reboot, o.Parallel, o.RebootTimeout = true, 1, 2*time.Minute
		})
		byNode := map[string]deploy.HostReport{}
		for _, hr := range rep.Hosts {
			byNode[hr.Node] = hr
		}
		for _, h := range []*fleettest.Host{h1, h2} {
			hr := byNode[h.Name]
			if hr.Result != deploy.OK || hr.RebootRequired {
				t.Errorf("%s: %s (%s), reboot required %v", h.Name, hr.Result, hr.Error, hr.RebootRequired)
			}
			if got := stepNames(hr); got != "closure,fetch,activate,reboot-status,reboot,reboot-wait,boot-check,health" {
				t.Errorf("%s steps %s", h.Name, got)
			}
			if got := e.f.Readlink(t, h, "/run/booted-system"); got != good {
				t.Errorf("%s booted %s, want the new kernel's %s", h.Name, got, good)
			}
			boots := e.f.HostBoots(h)
			if len(boots) != 2 || boots[1].System != good || boots[1].BootID == firstBoot[h.Name].BootID {
				t.Errorf("%s boots %+v, want one reboot into %s with a new boot id", h.Name, boots, good)
			}
		}
		hr := byNode[h3.Name]
		if hr.Result != deploy.RolledBack || !strings.Contains(hr.Error, "web (exit 3: web is down)") || !strings.Contains(hr.Error, "generation 1") {
			t.Errorf("%s: %s (%s), want rolled back to generation 1 after the failed check", h3.Name, hr.Result, hr.Error)
		}
		if got := stepNames(hr); got != "closure,fetch,activate,reboot-status,reboot,reboot-wait,boot-check,health,boot-rollback,reboot,reboot-wait,boot-check" {
			t.Errorf("%s steps %s", h3.Name, got)
		}
		if got := e.f.Readlink(t, h3, "/run/booted-system"); got != e.f.Initial {
			t.Errorf("%s booted %s, want its previous generation %s", h3.Name, got, e.f.Initial)
		}
		if got := e.f.Readlink(t, h3, "/run/current-system"); got != e.f.Initial {
			t.Errorf("%s runs %s", h3.Name, got)
		}
		if n, ok := e.f.BootDefault(t, h3); n != 1 || !ok {
			t.Errorf("%s boot default generation %d (%v), want 1", h3.Name, n, ok)
		}
		boots := e.f.HostBoots(h3)
		if len(boots) != 3 || boots[1].System != bad || boots[2].System != e.f.Initial || boots[2].BootID == boots[1].BootID {
			t.Errorf("%s boots %+v, want the bad system then generation 1 again", h3.Name, boots)
		}
		// Waves of one: no host went down before the previous one was up.
		var reboots []fleettest.Boot
		for _, b := range e.f.Boots() {
			if !b.Requested.IsZero() {
				reboots = append(reboots, b)
			}
		}
		sort.Slice(reboots, func(i, j int) bool { return reboots[i].Requested.Before(reboots[j].Requested) })
		if len(reboots) != 4 {
			t.Fatalf("%d reboots, want 4: %+v", len(reboots), reboots)
		}
		for i := 1; i < len(reboots); i++ {
			if prev := reboots[i-1]; reboots[i].Requested.Before(prev.Up) {
				t.Errorf("%s's reboot began at %s, before %s was up again (%s)", reboots[i].Host, reboots[i].Requested.Format(time.StampMilli), prev.Host, prev.Up.Format(time.StampMilli))
			}
		}
		for _, b := range reboots {
			t.Logf("%s: reboot asked %s, down %s, up %s (%s), booted %s", b.Host, b.Requested.Format(time.StampMilli),
				b.Down.Format(time.StampMilli), b.Up.Format(time.StampMilli), b.Up.Sub(b.Requested).Round(time.Millisecond), b.System)
		}
	})

	t.Run("WhenRequiredLeavesBootedHosts", func(t *testing.T) {
		e := e.sub(t)
		before := len(e.f.Boots())
		rep := e.run("", "e2e-reboot-when", e.nodes(good, 30, h1, h2), nil, func(o *deploy.Options) {
			o.RebootOnly, o.WhenRequired, o.Parallel = true, true, 1
		})
		if err := rep.Err(); err != nil {
			t.Fatal(err)
		}
		if after := len(e.f.Boots()); after != before {
			t.Fatalf("%d boots, were %d: nothing was pending", after, before)
		}
	})

	t.Run("NeverComesBack", func(t *testing.T) {
		e := e.sub(t)
		e.f.NoReturn(h1)
		start := time.Now()
		rep := e.run("", "e2e-reboot-gone", e.nodes(good, 30, h1), nil, func(o *deploy.Options) {
			o.RebootOnly, o.RebootTimeout = true, 8*time.Second
		})
		hr := rep.Hosts[0]
		if hr.Result != deploy.Failed || !strings.Contains(hr.Error, "did not come back within 8s") {
			t.Fatalf("%s: %s", hr.Result, hr.Error)
		}
		t.Logf("reported after %s", time.Since(start).Round(time.Millisecond))
		if b := e.f.HostBoots(h1); b[len(b)-1].Up.IsZero() == false {
			t.Fatalf("the host came back: %+v", b[len(b)-1])
		}
	})
}

// A host whose deployer predates contract 4 (here the contract 1 release,
// with its sudo rules) is not rebooted: the report says to update it.
func TestE2ERebootOldHost(t *testing.T) {
	if testing.Short() {
		t.Skip("simulated fleet")
	}
	fleettest.Need(t)
	old := fleettest.BuildRelease(t, fleettest.Contract1Release)
	e := newE2E(t, 1, fleettest.Options{Deployer: old, Contract: 1})
	h := e.f.Hosts[0]
	rep := e.run("", "compat-reboot", e.nodes(e.f.Initial, 30, h), nil, func(o *deploy.Options) {
		o.RebootOnly, o.RebootTimeout = true, 10*time.Second
	})
	hr := rep.Hosts[0]
	if hr.Result != deploy.Failed || !strings.Contains(hr.Error, "update the host's deployer") || !strings.Contains(hr.Error, "contract 1") {
		t.Fatalf("%s: %s", hr.Result, hr.Error)
	}
	if b := e.f.HostBoots(h); len(b) != 1 {
		t.Fatalf("the old host rebooted: %+v", b)
	}
}
