package host_test

// switch-to-configuration-ng's exit codes and locks, with the fakes:
// failed units new vs from before, another switch in progress, switch
// inhibitors, exit 100, the kernel policy, a reused generation.

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/bos55/concordia/internal/host"
	"github.com/bos55/concordia/internal/hostverb"
	"github.com/bos55/concordia/internal/nixcli"
)

func TestFailedUnitsFromBeforeKeepTheDeploy(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	old, sys := e.system("6.1"), e.system("6.1")
	e.boot(old)
	e.units.set("crashy.service") // failing for weeks
	e.sw.exit[sys], e.sw.exit[old] = 4, 4
	rec, err := host.Activate(context.Background(), e.o, e.req("d1", hostverb.Switch, sys))
	if err != nil || rec.State != hostverb.AwaitingConfirm || !slices.Equal(rec.FailedUnits, []string{"crashy.service"}) || len(rec.NewFailedUnits) != 0 {
		t.Fatalf("%v %+v", err, rec)
	}
	if !strings.Contains(rec.Reason, "1 unit(s) still failed from before: crashy.service") {
		t.Fatalf("reason %q", rec.Reason)
	}
	// No confirm: the rollback's own exit 4 (the same old failure) is a
	// rollback that worked, not "rollback failed too".
	r := e.waitState("d1", hostverb.RolledBack)
	if !r.RolledBack || strings.Contains(r.Reason, "failed") {
		t.Fatalf("rollback: %+v", r)
	}
	if n, p := e.profile(); n != 1 || p != old {
		t.Fatalf("profile %d %s", n, p)
	}
}

func TestNewFailedUnitsRollBack(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	old, sys := e.system("6.1"), e.system("6.1")
	e.boot(old)
	e.units.set("crashy.service")
	e.sw.exit[sys], e.sw.exit[old] = 4, 4
	e.sw.failedAfter[sys] = []string{"broken.service", "crashy.service"}
	e.sw.failedAfter[old] = []string{"crashy.service"}
	rec, err := host.Activate(context.Background(), e.o, e.req("d1", hostverb.Switch, sys))
	if hostverb.ExitCode(err) != hostverb.ExitFailed || !slices.Equal(rec.NewFailedUnits, []string{"broken.service"}) || !rec.RolledBack {
		t.Fatalf("%v %+v", err, rec)
	}
	if !strings.Contains(rec.Reason, "units failed: broken.service") || !strings.HasSuffix(rec.Reason, "; rolled back") {
		t.Fatalf("reason %q", rec.Reason)
	}
	if n, p := e.profile(); n != 1 || p != old || e.link(e.o.CurrentSystem) != old {
		t.Fatalf("not rolled back: %d %s", n, p)
	}
}

func TestAnotherSwitchInProgress(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	old, sys := e.system("6.1"), e.system("6.1")
	e.boot(old)
	// ng's lock held by another switch.
	os.MkdirAll(e.o.NixOSRunDir, 0o755)
	lf, err := os.OpenFile(filepath.Join(e.o.NixOSRunDir, "switch-to-configuration.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	syscall.Flock(int(lf.Fd()), syscall.LOCK_EX)
	_, err = host.Activate(context.Background(), e.o, e.req("d1", hostverb.Switch, sys))
	if hostverb.ExitCode(err) != hostverb.ExitLocked || !strings.Contains(err.Error(), "holds its lock") {
		t.Fatalf("ng lock: %v", err)
	}
	lf.Close()
	// nixos-rebuild's transient unit running.
	e.units.mu.Lock()
	e.units.active = []string{"nixos-rebuild-switch-to-configuration.service"}
	e.units.mu.Unlock()
	_, err = host.Activate(context.Background(), e.o, e.req("d2", hostverb.Switch, sys))
	if hostverb.ExitCode(err) != hostverb.ExitLocked || !strings.Contains(err.Error(), "nixos-rebuild is switching") {
		t.Fatalf("nixos-rebuild: %v", err)
	}
	if n, _ := e.profile(); n != 1 || len(e.sw.Calls()) != 0 {
		t.Fatal("a refused deploy changed the host")
	}
	// The race: ng takes its lock after our check; it exits 11, and only
	// the profile goes back (no switch back into the old system).
	e.units.mu.Lock()
	e.units.active = nil
	e.units.mu.Unlock()
	e.sw.exit[sys] = 11
	rec, err := host.Activate(context.Background(), e.o, e.req("d3", hostverb.Switch, sys))
	if hostverb.ExitCode(err) != hostverb.ExitLocked || rec.Refused != hostverb.RefusedLocked {
		t.Fatalf("exit 11: %v %+v", err, rec)
	}
	if n, p := e.profile(); n != 1 || p != old || len(e.sw.Calls()) != 1 {
		t.Fatalf("exit 11: profile %d %s, calls %v", n, p, e.sw.Calls())
	}
}

func writeInhibitors(t *testing.T, sys, json string) {
	t.Helper()
	os.Chmod(sys, 0o755)
	if err := os.WriteFile(filepath.Join(sys, "switch-inhibitors"), []byte(json), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestSwitchInhibitors(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	old, sys := e.system("6.1"), e.system("6.1")
	writeInhibitors(t, old, `{"dbus-implementation":"dbus","systemd":"/nix/store/a"}`)
	writeInhibitors(t, sys, `{"dbus-implementation":"broker","systemd":"/nix/store/a","new-key":"x"}`)
	e.boot(old)
	_, err := host.Activate(context.Background(), e.o, e.req("d1", hostverb.Switch, sys))
	if hostverb.ExitCode(err) != hostverb.ExitPreSwitch || !strings.Contains(err.Error(), "dbus-implementation : dbus -> broker") || !strings.Contains(err.Error(), "--mode boot") {
		t.Fatalf("inhibitor: %v", err)
	}
	if n, _ := e.profile(); n != 1 || len(e.sw.Calls()) != 0 {
		t.Fatal("refused by the inhibitors but changed the host")
	}
	// boot is fine, and --no-check reaches switch-to-configuration.
	q := e.req("d2", hostverb.Switch, sys)
	q.NoCheck, q.MagicRollback = true, false
	if _, err := host.Activate(context.Background(), e.o, q); err != nil {
		t.Fatal(err)
	}
	if so := e.sw.opts[len(e.sw.opts)-1]; !so.NoCheck {
		t.Fatalf("NIXOS_NO_CHECK did not reach the switch: %+v", so)
	}
	// A pre-switch check the deployer does not know: switch-to-configuration
	// refuses with exit 1, nothing activated, only the profile goes back.
	other := e.system("6.1")
	e.sw.exit[other], e.sw.output[other] = 1, "checking something...\nfoo : a -> b\nPre-switch check 'foo' failed\nPre-switch checks failed\n"
	calls := len(e.sw.Calls())
	rec, err := host.Activate(context.Background(), e.o, e.req("d3", hostverb.Switch, other))
	if hostverb.ExitCode(err) != hostverb.ExitPreSwitch || rec.Refused != hostverb.RefusedChecks || !strings.Contains(rec.Reason, "foo : a -> b") {
		t.Fatalf("ng's own check: %v %+v", err, rec)
	}
	if n, p := e.profile(); n != 2 || p != sys || len(e.sw.Calls()) != calls+1 {
		t.Fatalf("ng's own check: profile %d %s, calls %v", n, p, e.sw.Calls())
	}
}

func TestExit100ActivatesNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	old, sys := e.system("6.1"), e.system("6.1")
	e.boot(old)
	e.sw.exit[sys] = 100
	rec, err := host.Activate(context.Background(), e.o, e.req("t1", hostverb.Test, sys))
	if hostverb.ExitCode(err) != hostverb.ExitKernelChange || rec.Refused != hostverb.RefusedInit || !strings.Contains(rec.Reason, "can only be booted") {
		t.Fatalf("test: %v %+v", err, rec)
	}
	// switch: installed as the boot default, not running, no watchdog.
	rec, err = host.Activate(context.Background(), e.o, e.req("s1", hostverb.Switch, sys))
	if err != nil || rec.Mode != hostverb.Boot || !rec.RebootRequired || rec.State != hostverb.Confirmed || rec.ExitCode != hostverb.ExitRebootRequired || rec.MagicRollback {
		t.Fatalf("switch: %v %+v", err, rec)
	}
	if n, p := e.profile(); n != 2 || p != sys {
		t.Fatalf("switch: profile %d %s", n, p)
	}
}

func TestKernelPolicy(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	old, newK, newInitrd := e.system("6.1"), e.system("6.6"), e.system("6.1")
	os.Chmod(newInitrd, 0o755)
	os.WriteFile(filepath.Join(newInitrd, "initrd"), []byte("initrd-6.1 with a new systemd"), 0o644)
	e.boot(old)
	q := e.req("k1", hostverb.Switch, newK)
	q.MagicRollback = false
	rec, err := host.Activate(context.Background(), e.o, q)
	if err != nil || rec.Mode != hostverb.Switch || !rec.RebootRequired || !rec.KernelChanged || !strings.Contains(rec.Reason, "reboot required") {
		t.Fatalf("default switches into a new kernel: %v %+v", err, rec)
	}
	if e.link(e.o.CurrentSystem) != newK {
		t.Fatal("not switched")
	}
	st, _ := host.Inspect(context.Background(), e.o)
	if !st.RebootPending {
		t.Fatalf("status: %+v", st)
	}
	q = e.req("k2", hostverb.Switch, newInitrd)
	q.MagicRollback = false
	rec, err = host.Activate(context.Background(), e.o, q)
	if err != nil || rec.RebootRequired || !rec.RebootRecommended {
		t.Fatalf("initrd only: %v %+v", err, rec)
	}
	if st, _ := host.Inspect(context.Background(), e.o); st.RebootPending || !st.RebootSuggested {
		t.Fatalf("status after an initrd-only change: %+v", st)
	}
}

// Nix reuses the newest generation when it already points at the path: a
// failed deploy of that path must not delete a generation it did not make.
func TestReusedGenerationNotDeleted(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	old, sys := e.system("6.1"), e.system("6.1")
	e.boot(old)
	ctx := context.Background()
	e.nix.SetProfile(ctx, e.o.Profile, sys)     // generation 2 holds sys
	e.nix.SwitchGeneration(ctx, e.o.Profile, 1) // rolled back by hand to 1
	e.nix.reuse = true
	e.sw.exit[sys] = 1
	rec, err := host.Activate(ctx, e.o, e.req("d1", hostverb.Switch, sys))
	if hostverb.ExitCode(err) != hostverb.ExitFailed || rec.CreatedGeneration {
		t.Fatalf("%v %+v", err, rec)
	}
	gens, _ := nixcli.Generations(e.o.Profile)
	if len(gens) != 2 {
		t.Fatalf("generation 2 was deleted: %+v", gens)
	}
	if n, p := e.profile(); n != 1 || p != old {
		t.Fatalf("the profile was not put back: %d %s", n, p)
	}
}
