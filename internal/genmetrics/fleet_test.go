package genmetrics_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/fleettest"
)

// TestFleetExporter checks `deployer metrics` on a simulated host after
// switch, test, boot (new kernel) and reboot, with the host verbs driven
// over ssh by the deploy user as the deployer does.
func TestFleetExporter(t *testing.T) {
	f := fleettest.New(t, 1, fleettest.Options{})
	h := f.Hosts[0]
	v2 := f.System(t, fleettest.System{Label: "v2"})
	v3 := f.System(t, fleettest.System{Label: "v3"})
	k := f.System(t, fleettest.NewKernel)

	run := func(words ...string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := f.SSH(ctx, h, words...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			t.Fatalf("%q: %v\n%s", words, err, out.String())
		}
	}
	deploy := func(mode, id, path string) {
		t.Helper()
		run("deployer", "fetch", path)
		run("sudo", "-n", f.Deployer, "activate", "--mode", mode, "--id", id, "--confirm-timeout", "30s", path)
		if mode != "boot" {
			run("sudo", "-n", f.Deployer, "confirm", "--id", id)
		}
	}
	expect := func(step string, want ...string) {
		t.Helper()
		f.MustExec(t, h, f.Deployer, "metrics", "--textfile", "/run/nixos.prom")
		got := f.MustExec(t, h, "cat", "/run/nixos.prom")
		for _, w := range want {
			if !strings.Contains(got, "\n"+w+"\n") {
				t.Errorf("after %s: want %q in\n%s", step, w, got)
			}
		}
	}

	expect("boot", "nixos_current_generation 1", "nixos_boot_generation{source=\"systemd-boot\"} 1", "nixos_booted_generation 1",
		"nixos_test_deployment_active 0", "nixos_reboot_required 0")

	deploy("switch", "m-1", v2)
	expect("switch", "nixos_current_generation 2", "nixos_boot_generation{source=\"systemd-boot\"} 2", "nixos_booted_generation 1",
		"nixos_test_deployment_active 0", "nixos_reboot_required 0")

	deploy("test", "m-2", v3)
	expect("test", "nixos_current_generation 0", "nixos_boot_generation{source=\"systemd-boot\"} 2",
		"nixos_test_deployment_active 1", "nixos_reboot_required 0")

	deploy("boot", "m-3", k)
	expect("boot of a new kernel", "nixos_current_generation 0", "nixos_boot_generation{source=\"systemd-boot\"} 3",
		"nixos_test_deployment_active 1", "nixos_reboot_required 1")

	f.Reboot(t, h)
	expect("reboot", "nixos_current_generation 3", "nixos_boot_generation{source=\"systemd-boot\"} 3", "nixos_booted_generation 3",
		"nixos_test_deployment_active 0", "nixos_reboot_required 0")
	got := f.MustExec(t, h, "cat", "/run/nixos.prom")
	if !strings.Contains(got, `version="new-kernel"`) {
		t.Errorf("info metric lacks the running system's version:\n%s", got)
	}
}
