package host_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/host"
	"github.com/bos55/concordia/internal/hostverb"
	"github.com/bos55/concordia/internal/nixcli"
)

type fakeRebooter struct {
	delays []time.Duration
	err    error
}

func (f *fakeRebooter) Reboot(ctx context.Context, d time.Duration) error {
	f.delays = append(f.delays, d)
	return f.err
}

func withBootID(t *testing.T, e *env, id string) *fakeRebooter {
	t.Helper()
	e.o.BootIDFile = filepath.Join(t.TempDir(), "boot_id")
	if err := os.WriteFile(e.o.BootIDFile, []byte(id+"\n"), 0o444); err != nil {
		t.Fatal(err)
	}
	rb := &fakeRebooter{}
	e.o.Rebooter = rb
	return rb
}

// The reboot verb answers the boot id it ran under, then reboots (later,
// through the Rebooter); status shows the same id.
func TestRebootAnswersBootID(t *testing.T) {
	e := newEnv(t)
	e.boot(e.system("6.1"))
	rb := withBootID(t, e, "2d3e4f50-1111-4222-8333-944455556666")
	got, err := host.Reboot(context.Background(), e.o, "r-1")
	if err != nil {
		t.Fatal(err)
	}
	if got.BootIDBefore != "2d3e4f50-1111-4222-8333-944455556666" || len(rb.delays) != 1 || rb.delays[0] != host.DefaultRebootDelay {
		t.Fatalf("%+v, reboots %v", got, rb.delays)
	}
	st, err := host.Inspect(context.Background(), e.o)
	if err != nil || st.BootID != got.BootIDBefore {
		t.Fatalf("status boot id %q (%v)", st.BootID, err)
	}
}

// No reboot while a deploy holds the host, or when the boot id cannot be
// read (the push side could not tell the reboot happened).
func TestRebootRefused(t *testing.T) {
	e := newEnv(t)
	e.boot(e.system("6.1"))
	rb := withBootID(t, e, "x")
	if _, err := host.Reboot(context.Background(), e.o, "../x"); !errors.Is(err, hostverb.ErrInvalid) {
		t.Fatalf("bad id: %v", err)
	}
	release := holdLock(t, e)
	if _, err := host.Reboot(context.Background(), e.o, "r-1"); !errors.Is(err, hostverb.ErrLocked) {
		t.Fatalf("locked: %v", err)
	}
	release()
	e.o.BootIDFile = filepath.Join(t.TempDir(), "missing")
	if _, err := host.Reboot(context.Background(), e.o, "r-1"); err == nil {
		t.Fatal("rebooted without a boot id")
	}
	if len(rb.delays) != 0 {
		t.Fatalf("rebooted %d times", len(rb.delays))
	}
}

// holdLock takes the host lock as a running deploy does.
func holdLock(t *testing.T, e *env) func() {
	t.Helper()
	hold := make(chan struct{})
	sys := e.system("6.1")
	e.sw.mu.Lock()
	e.sw.hold[sys] = hold
	e.sw.mu.Unlock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		host.Activate(context.Background(), e.o, hostverb.Request{Verb: hostverb.VerbActivate, ID: "d-hold", Mode: hostverb.Boot, Path: sys, ConfirmTimeout: time.Minute})
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, _ := host.Inspect(context.Background(), e.o)
		if st != nil && st.Lock != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the deploy never took the lock")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return func() { close(hold); <-done }
}

// rollback --boot moves the profile to an existing older generation and
// runs that generation's boot action; the running system is not touched.
func TestRollbackBoot(t *testing.T) {
	e := newEnv(t)
	a, b := e.system("6.1"), e.system("6.6")
	e.boot(a)
	if err := e.nix.SetProfile(context.Background(), e.o.Profile, b); err != nil {
		t.Fatal(err)
	}
	o := e.o
	o.ID = "rb-boot"
	for _, bad := range []struct {
		gen  int
		want string
	}{{0, "generation 0"}, {3, "no generation 3"}, {-1, "generation -1"}, {hostverb.MaxGeneration + 1, "generation"}} {
		if err := host.RollbackBoot(context.Background(), o, bad.gen); !errors.Is(err, hostverb.ErrInvalid) || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("generation %d: %v", bad.gen, err)
		}
	}
	if err := host.RollbackBoot(context.Background(), o, 1); err != nil {
		t.Fatal(err)
	}
	cur, _, _ := nixcli.CurrentGeneration(e.o.Profile)
	if cur.Number != 1 || cur.Path != a {
		t.Fatalf("profile at %+v, want generation 1", cur)
	}
	if calls := e.sw.Calls(); calls[len(calls)-1] != "boot "+filepath.Base(a) {
		t.Fatalf("switch calls %v, want boot of generation 1 last", calls)
	}
	// Generation 2 is newer than the profile's current one now: refused.
	if err := host.RollbackBoot(context.Background(), o, 2); !errors.Is(err, hostverb.ErrInvalid) || !strings.Contains(err.Error(), "newer") {
		t.Fatalf("newer generation: %v", err)
	}
	// The current one again (a retry after a lost answer) is fine.
	if err := host.RollbackBoot(context.Background(), o, 1); err != nil {
		t.Fatalf("again: %v", err)
	}
}
