package fleettest_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/fleettest"
)

func TestFleetBoots(t *testing.T) {
	start := time.Now()
	f := fleettest.New(t, 2, fleettest.Options{})
	t.Logf("2 hosts up in %s", time.Since(start))
	for _, h := range f.Hosts {
		if got := f.Readlink(t, h, "/run/current-system"); got != f.Initial {
			t.Fatalf("%s runs %q, want %s", h.Name, got, f.Initial)
		}
		if n, p := f.ProfileGeneration(t, h); n != 1 || p != f.Initial {
			t.Fatalf("%s profile %d %s", h.Name, n, p)
		}
		if n, ok := f.BootDefault(t, h); n != 1 || !ok {
			t.Fatalf("%s boot default %d %v", h.Name, n, ok)
		}
		out, err := f.SSH(context.Background(), h, "deployer", "version").CombinedOutput()
		if err != nil {
			t.Fatalf("%s: ssh deployer version: %v %s", h.Name, err, out)
		}
		out, err = f.SSH(context.Background(), h, "sudo", "-n", f.Deployer, "status", "--local", "--json").CombinedOutput()
		t.Logf("%s status: %v %s", h.Name, err, out)
		// The host's own store is separate from the machine's.
		if out := f.MustExec(t, h, "ls", "/nix/store"); !strings.Contains(out, "nixos-system-fleet") {
			t.Fatalf("host store: %s", out)
		}
	}
}
