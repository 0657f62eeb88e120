package fleettest_test

import (
	"strings"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/fleettest"
)

// Each host has its own boot id, a new one per boot; systemctl reboot
// inside a host reboots it (into the loader's default, not the profile's
// current generation), and a NoReturn host stays down.
func TestFleetRebootThroughSystemctl(t *testing.T) {
	f := fleettest.New(t, 2, fleettest.Options{})
	h1, h2 := f.Hosts[0], f.Hosts[1]
	id1, err1 := f.BootID(h1)
	id2, err2 := f.BootID(h2)
	if err1 != nil || err2 != nil || len(id1) != 36 || id1 == id2 {
		t.Fatalf("boot ids %q %q (%v %v)", id1, id2, err1, err2)
	}
	if b := f.HostBoots(h1); len(b) != 1 || b[0].BootID != id1 || b[0].System != f.Initial {
		t.Fatalf("first boot record %+v", b)
	}
	// A second generation made the profile's current one, while the
	// loader's default stays generation 1 (as after rollback --boot).
	v2 := f.System(t, fleettest.System{Label: "v2"})
	f.MustExec(t, h1, "env", "NIX_REMOTE=daemon", "nix-store", "--realise", v2)
	f.MustExec(t, h1, "nix-env", "-p", "/nix/var/nix/profiles/system", "--set", v2)
	f.MustExec(t, h1, "systemctl", "reboot")
	b := waitBoots(t, f, h1, 2)
	if b.BootID == id1 || b.Requested.IsZero() || b.Up.Before(b.Down) || b.System != f.Initial {
		t.Fatalf("reboot record %+v, want a new boot id of the loader's default %s", b, f.Initial)
	}
	if id, _ := f.BootID(h1); id != b.BootID {
		t.Fatalf("boot id %s after reboot, record says %s", id, b.BootID)
	}
	if got := f.Readlink(t, h1, "/run/booted-system"); got != f.Initial {
		t.Fatalf("booted %s", got)
	}
	if !f.SSHUp(h1) {
		t.Fatal("sshd did not come back")
	}
	if id, _ := f.BootID(h2); id != id2 {
		t.Fatalf("the other host's boot id changed: %s", id)
	}

	f.NoReturn(h2)
	f.MustExec(t, h2, "systemctl", "reboot")
	b = waitBoots(t, f, h2, 2)
	if !b.Up.IsZero() || b.System != "" {
		t.Fatalf("NoReturn host came back: %+v", b)
	}
	time.Sleep(500 * time.Millisecond)
	if f.SSHUp(h2) {
		t.Fatal("NoReturn host runs sshd")
	}
}

func waitBoots(t *testing.T, f *fleettest.Fleet, h *fleettest.Host, n int) fleettest.Boot {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		if b := f.HostBoots(h); len(b) >= n {
			return b[n-1]
		}
		if time.Now().After(deadline) {
			out, _ := f.Exec(h, "ls", "-la", "/run/fleettest")
			t.Fatalf("%s: no boot %d: %s", h.Name, n, strings.TrimSpace(out))
		}
		time.Sleep(50 * time.Millisecond)
	}
}
