package host_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/host"
	"github.com/bos55/concordia/internal/hostverb"
	"github.com/bos55/concordia/internal/nixcli"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/pkg/narinfo"
)

// fakeNix keeps a profile as Nix does (system-N-link symlinks) in a temp dir.
type fakeNix struct {
	mu    sync.Mutex
	valid map[string]bool
	calls []string
	// reuse makes SetProfile behave as nix-env does when the newest
	// generation already holds the path: it switches to it.
	reuse bool
}

func (f *fakeNix) log(s string) { f.mu.Lock(); f.calls = append(f.calls, s); f.mu.Unlock() }

func (f *fakeNix) Realise(ctx context.Context, paths ...string) error { return nil }

func (f *fakeNix) Valid(ctx context.Context, p string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.valid[p], nil
}

func (f *fakeNix) SetProfile(ctx context.Context, profile, path string) error {
	f.log("set " + path)
	gens, _ := nixcli.Generations(profile)
	n := 1
	if len(gens) > 0 {
		last := gens[len(gens)-1]
		if f.reuse && last.Path == path {
			return repoint(profile, filepath.Base(last.Link))
		}
		n = last.Number + 1
	}
	link := fmt.Sprintf("%s-%d-link", filepath.Base(profile), n)
	if err := os.Symlink(path, filepath.Join(filepath.Dir(profile), link)); err != nil {
		return err
	}
	return repoint(profile, link)
}

func (f *fakeNix) SwitchGeneration(ctx context.Context, profile string, gen int) error {
	f.log("switch-generation " + strconv.Itoa(gen))
	return repoint(profile, fmt.Sprintf("%s-%d-link", filepath.Base(profile), gen))
}

func (f *fakeNix) DeleteGeneration(ctx context.Context, profile string, gen int) error {
	f.log("delete " + strconv.Itoa(gen))
	cur, _, _ := nixcli.CurrentGeneration(profile)
	if cur.Number == gen {
		return errors.New("cannot delete the current generation")
	}
	return os.Remove(fmt.Sprintf("%s-%d-link", profile, gen))
}

func repoint(link, target string) error {
	tmp := link + ".tmp"
	os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		return err
	}
	return os.Rename(tmp, link)
}

// fakeSwitch "activates" by repointing current-system; per-system exit codes
// and an optional gate channel to hold an activation.
type fakeSwitch struct {
	current string
	mu      sync.Mutex
	exit    map[string]int
	hold    map[string]chan struct{}
	calls   []string
	opts    []host.SwitchOptions
	// output is written to the log; failedAfter, when set for a system,
	// is the failed units after switching to it (written to units).
	output      map[string]string
	failedAfter map[string][]string
	units       *fakeUnits
}

func (s *fakeSwitch) Switch(ctx context.Context, system string, action hostverb.Mode, logPath string, so host.SwitchOptions) (int, error) {
	s.mu.Lock()
	s.calls = append(s.calls, string(action)+" "+filepath.Base(system))
	s.opts = append(s.opts, so)
	code, hold, out := s.exit[system], s.hold[system], s.output[system]
	failed, setFailed := s.failedAfter[system]
	s.mu.Unlock()
	if hold != nil {
		<-hold
	}
	if out != "" {
		f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err == nil {
			f.WriteString(out)
			f.Close()
		}
	}
	if setFailed && s.units != nil {
		s.units.set(failed...)
	}
	if action == hostverb.Switch || action == hostverb.Test {
		if err := repoint(s.current, system); err != nil {
			return -1, err
		}
	}
	return code, nil
}

func (s *fakeSwitch) Calls() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.calls...)
}

// goSpawner runs the worker in a goroutine.
type goSpawner struct{ wg sync.WaitGroup }

func (g *goSpawner) Spawn(ctx context.Context, o host.Options, id string, lock *os.File) (int, error) {
	// Like the real spawner, the worker gets its own descriptor of the lock.
	dup, err := os.Open(lock.Name())
	if err != nil {
		return 0, err
	}
	_ = dup.Close()
	g.wg.Add(1)
	l2 := fdDup(lock)
	go func() {
		defer g.wg.Done()
		host.Work(context.Background(), o, id, l2)
	}()
	return 0, nil
}

// fakeTrust is the store's database and the host's trusted keys: paths
// added with add, signed by key (or not), trusted: key.
type fakeTrust struct {
	mu    sync.Mutex
	key   narinfo.SecretKey
	infos map[string]*store.PathInfo
}

func newFakeTrust(t *testing.T) *fakeTrust {
	sk, _, err := narinfo.GenerateKey("host-test-1")
	if err != nil {
		t.Fatal(err)
	}
	return &fakeTrust{key: sk, infos: map[string]*store.PathInfo{}}
}

func (f *fakeTrust) PathInfo(ctx context.Context, p string) (*store.PathInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	info, ok := f.infos[p]
	if !ok {
		return nil, store.ErrNotFound
	}
	c := *info
	return &c, nil
}

func (f *fakeTrust) TrustedKeys(ctx context.Context) ([]narinfo.PublicKey, error) {
	return []narinfo.PublicKey{f.key.Public()}, nil
}

// add registers p as valid with refs (and itself), signed by signer (nil:
// unsigned).
func (f *fakeTrust) add(p string, signer *narinfo.SecretKey, refs ...string) *store.PathInfo {
	f.mu.Lock()
	defer f.mu.Unlock()
	info := &store.PathInfo{StorePath: p, NarHash: make([]byte, 32), NarSize: 120, References: append([]string{p}, refs...)}
	slices.Sort(info.References)
	if signer != nil {
		info.Sigs = []string{signer.Sign(narinfo.Fingerprint(p, narinfo.SHA256(info.NarHash), info.NarSize, info.References))}
	}
	f.infos[p] = info
	return info
}

// fakeUnits is systemd's unit table: failed units, and active ones.
type fakeUnits struct {
	mu             sync.Mutex
	failed, active []string
}

func (u *fakeUnits) Failed(ctx context.Context) ([]string, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.failed), nil
}

func (u *fakeUnits) Active(ctx context.Context, unit string) (bool, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Contains(u.active, unit), nil
}

func (u *fakeUnits) set(failed ...string) { u.mu.Lock(); u.failed = failed; u.mu.Unlock() }

type env struct {
	t     *testing.T
	o     host.Options
	units *fakeUnits
	trust *fakeTrust
	nix   *fakeNix
	sw    *fakeSwitch
	spawn *goSpawner
	store string
	n     int
}

func newEnv(t *testing.T) *env {
	t.Helper()
	root := t.TempDir()
	for _, d := range []string{"store", "profiles", "run"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	e := &env{t: t, store: filepath.Join(root, "store"), nix: &fakeNix{valid: map[string]bool{}}, trust: newFakeTrust(t), units: &fakeUnits{}}
	e.sw = &fakeSwitch{current: filepath.Join(root, "run", "current-system"), exit: map[string]int{}, hold: map[string]chan struct{}{},
		output: map[string]string{}, failedAfter: map[string][]string{}, units: e.units}
	e.spawn = &goSpawner{}
	e.o = host.Options{
		StateDir: filepath.Join(root, "run", "concordia"), StoreDir: e.store,
		Profile:       filepath.Join(root, "profiles", "system"),
		CurrentSystem: e.sw.current, BootedSystem: filepath.Join(root, "run", "booted-system"),
		Nix: e.nix, Trust: e.trust, Units: e.units, Switcher: e.sw, Spawner: e.spawn, Poll: 5 * time.Millisecond,
		NixOSRunDir: filepath.Join(root, "run", "nixos"), BootDir: filepath.Join(root, "boot"),
	}
	t.Cleanup(e.spawn.wg.Wait)
	return e
}

// system makes a fake NixOS system in the fake store.
func (e *env) system(kernel string) string {
	e.n++
	name := fmt.Sprintf("%032d", e.n)
	name = strings.NewReplacer("0", "a", "1", "b", "2", "c", "3", "d", "4", "f", "5", "g", "6", "h", "7", "i", "8", "j", "9", "k").Replace(name)
	p := filepath.Join(e.store, name+"-nixos-system-test")
	os.MkdirAll(filepath.Join(p, "bin"), 0o755)
	os.MkdirAll(filepath.Join(p, "kernel-modules"), 0o755)
	os.WriteFile(filepath.Join(p, "bin", "switch-to-configuration"), []byte("#!/bin/sh\n"), 0o755)
	os.WriteFile(filepath.Join(p, "kernel"), []byte(kernel), 0o644)
	os.WriteFile(filepath.Join(p, "initrd"), []byte("initrd-"+kernel), 0o644)
	os.WriteFile(filepath.Join(p, "kernel-modules", "version"), []byte(kernel), 0o644)
	os.WriteFile(filepath.Join(p, "nixos-version"), []byte("test"), 0o644)
	e.nix.valid[p] = true
	e.trust.add(p, &e.trust.key)
	return p
}

// boot installs sys as generation 1, booted and running.
func (e *env) boot(sys string) {
	e.t.Helper()
	if err := e.nix.SetProfile(context.Background(), e.o.Profile, sys); err != nil {
		e.t.Fatal(err)
	}
	repoint(e.o.BootedSystem, sys)
	repoint(e.o.CurrentSystem, sys)
}

func (e *env) req(id string, mode hostverb.Mode, p string) hostverb.Request {
	return hostverb.Request{ID: id, Mode: mode, Path: p, ConfirmTimeout: time.Second, MagicRollback: true, AutoRollback: true}
}

func (e *env) link(l string) string { p, _ := os.Readlink(l); return p }

func (e *env) profile() (int, string) {
	g, _, err := nixcli.CurrentGeneration(e.o.Profile)
	if err != nil {
		e.t.Fatal(err)
	}
	return g.Number, g.Path
}

func (e *env) waitState(id string, want hostverb.State) *hostverb.Record {
	e.t.Helper()
	r, err := host.Wait(context.Background(), e.o, id, 10*time.Second)
	if err != nil && !errors.Is(err, hostverb.ErrRolledBack) && !errors.Is(err, hostverb.ErrFailed) {
		e.t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); r.State != want && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
		r, _ = host.Load(e.o, id)
	}
	if r.State != want {
		e.t.Fatalf("deploy %s is %s (%s), want %s", id, r.State, r.Reason, want)
	}
	return r
}

func TestSwitchConfirm(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	old, sys := e.system("6.1"), e.system("6.1")
	e.boot(old)
	rec, err := host.Activate(context.Background(), e.o, e.req("d1", hostverb.Switch, sys))
	if err != nil {
		t.Fatal(err)
	}
	if rec.State != hostverb.AwaitingConfirm || rec.ExitCode != 0 || rec.Generation != 2 || !rec.CreatedGeneration {
		t.Fatalf("after activate: %+v", rec)
	}
	if n, p := e.profile(); n != 2 || p != sys {
		t.Fatalf("profile at %d %s", n, p)
	}
	if e.link(e.o.CurrentSystem) != sys {
		t.Fatal("current system not switched")
	}
	st, _ := host.Inspect(context.Background(), e.o)
	if st.Lock == nil || st.Lock.ID != "d1" {
		t.Fatalf("lock while awaiting confirm: %+v", st.Lock)
	}
	if rec, err = host.Confirm(context.Background(), e.o, "d1"); err != nil || rec.State != hostverb.Confirmed {
		t.Fatalf("confirm: %v %+v", err, rec)
	}
	e.spawn.wg.Wait()
	time.Sleep(1200 * time.Millisecond) // past the deadline: nothing may roll back now
	if n, p := e.profile(); n != 2 || p != sys || e.link(e.o.CurrentSystem) != sys {
		t.Fatalf("confirmed deploy changed: profile %d %s", n, p)
	}
	st, _ = host.Inspect(context.Background(), e.o)
	if st.Lock != nil || st.TestActive || st.RebootPending || st.Current.Generation != 2 || st.Booted.Generation != 1 {
		t.Fatalf("status after confirm: %+v", st)
	}
	if got := e.sw.Calls(); strings.Join(got, ",") != "switch "+filepath.Base(sys) {
		t.Fatalf("switch calls %q", got)
	}
}

func TestNoConfirmRollsBack(t *testing.T) {
	t.Parallel()
	for _, mode := range []hostverb.Mode{hostverb.Switch, hostverb.Test} {
		t.Run(string(mode), func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			old, sys := e.system("6.1"), e.system("6.1")
			e.boot(old)
			if _, err := host.Activate(context.Background(), e.o, e.req("d1", mode, sys)); err != nil {
				t.Fatal(err)
			}
			r := e.waitState("d1", hostverb.RolledBack)
			if !r.RolledBack {
				t.Fatalf("record: %+v", r)
			}
			if e.link(e.o.CurrentSystem) != old {
				t.Fatal("running system not restored")
			}
			if n, p := e.profile(); n != 1 || p != old {
				t.Fatalf("profile at %d %s", n, p)
			}
			gens, _ := nixcli.Generations(e.o.Profile)
			if len(gens) != 1 {
				t.Fatalf("generations left: %+v", gens)
			}
			want := map[hostverb.Mode]string{
				hostverb.Switch: "switch " + filepath.Base(sys) + ",switch " + filepath.Base(old),
				hostverb.Test:   "test " + filepath.Base(sys) + ",test " + filepath.Base(old),
			}[mode]
			if got := strings.Join(e.sw.Calls(), ","); got != want {
				t.Fatalf("calls %q want %q", got, want)
			}
			if _, err := host.Confirm(context.Background(), e.o, "d1"); hostverb.ExitCode(err) != hostverb.ExitRolledBack {
				t.Fatalf("late confirm: %v", err)
			}
			e.spawn.wg.Wait()
			// Lock released: a new deploy goes through.
			if _, err := host.Activate(context.Background(), e.o, e.req("d2", hostverb.Switch, sys)); err != nil {
				t.Fatal(err)
			}
			host.Confirm(context.Background(), e.o, "d2")
		})
	}
}

// TestRejectRollsBackNow: a deploy the deployer rejects (its health check
// failed) is rolled back by the watchdog at once, not at its deadline, an
// hour away here; the record says why. Confirming it afterwards fails,
// and rejecting twice or a confirmed deploy is answered as such.
func TestRejectRollsBackNow(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	old, sys := e.system("6.1"), e.system("6.1")
	e.boot(old)
	req := e.req("d1", hostverb.Switch, sys)
	req.ConfirmTimeout = time.Hour
	if _, err := host.Activate(context.Background(), e.o, req); err != nil {
		t.Fatal(err)
	}
	if _, err := host.Reject(context.Background(), e.o, "d1"); err != nil {
		t.Fatal(err)
	}
	r := e.waitState("d1", hostverb.RolledBack)
	if !r.RolledBack || !r.Rejected || !strings.Contains(r.Reason, "rejected by the deployer") {
		t.Fatalf("record: %+v", r)
	}
	if e.link(e.o.CurrentSystem) != old {
		t.Fatal("running system not restored")
	}
	if n, p := e.profile(); n != 1 || p != old {
		t.Fatalf("profile at %d %s", n, p)
	}
	if _, err := host.Reject(context.Background(), e.o, "d1"); err != nil {
		t.Fatalf("second reject: %v", err)
	}
	if _, err := host.Confirm(context.Background(), e.o, "d1"); hostverb.ExitCode(err) != hostverb.ExitRolledBack {
		t.Fatalf("confirm after reject: %v", err)
	}
	e.spawn.wg.Wait()
	if _, err := host.Activate(context.Background(), e.o, e.req("d2", hostverb.Switch, sys)); err != nil {
		t.Fatal(err)
	}
	if _, err := host.Confirm(context.Background(), e.o, "d2"); err != nil {
		t.Fatal(err)
	}
	if _, err := host.Reject(context.Background(), e.o, "d2"); !errors.Is(err, hostverb.ErrFailed) {
		t.Fatalf("reject of a confirmed deploy: %v", err)
	}
}

func TestFailedActivationRollsBackAtOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	old, bad := e.system("6.1"), e.system("6.1")
	e.boot(old)
	e.sw.exit[bad] = 1
	rec, err := host.Activate(context.Background(), e.o, e.req("d1", hostverb.Switch, bad))
	if hostverb.ExitCode(err) != hostverb.ExitFailed || rec == nil || rec.State != hostverb.Failed || !rec.RolledBack {
		t.Fatalf("activate: %v %+v", err, rec)
	}
	if n, p := e.profile(); n != 1 || p != old || e.link(e.o.CurrentSystem) != old {
		t.Fatalf("not rolled back: profile %d %s", n, p)
	}
	if gens, _ := nixcli.Generations(e.o.Profile); len(gens) != 1 {
		t.Fatalf("failed generation kept: %+v", gens)
	}
}

func TestNoAutoRollbackLeavesIt(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	old, bad := e.system("6.1"), e.system("6.1")
	e.boot(old)
	e.sw.exit[bad] = 2
	q := e.req("d1", hostverb.Switch, bad)
	q.AutoRollback = false
	rec, err := host.Activate(context.Background(), e.o, q)
	if hostverb.ExitCode(err) != hostverb.ExitFailed || rec.RolledBack {
		t.Fatalf("activate: %v %+v", err, rec)
	}
	if n, _ := e.profile(); n != 2 {
		t.Fatalf("profile at %d", n)
	}
}

func TestSecondDeployRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	old, sys := e.system("6.1"), e.system("6.1")
	e.boot(old)
	hold := make(chan struct{})
	e.sw.hold[sys] = hold
	done := make(chan error, 1)
	go func() {
		_, err := host.Activate(context.Background(), e.o, e.req("first", hostverb.Switch, sys))
		done <- err
	}()
	for {
		if r, err := host.Load(e.o, "first"); err == nil && r.State == hostverb.Activating {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	_, err := host.Activate(context.Background(), e.o, e.req("second", hostverb.Test, sys))
	var le *host.LockedError
	if !errors.As(err, &le) || hostverb.ExitCode(err) != hostverb.ExitLocked || le.Holder.ID != "first" || !strings.Contains(err.Error(), "first") {
		t.Fatalf("second activate: %v", err)
	}
	// wait with a short timeout sees it still activating.
	if _, err := host.Wait(context.Background(), e.o, "first", 50*time.Millisecond); hostverb.ExitCode(err) != hostverb.ExitTimeout {
		t.Fatalf("wait while activating: %v", err)
	}
	close(hold)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if r, err := host.Wait(context.Background(), e.o, "first", time.Second); err != nil || r.State != hostverb.AwaitingConfirm {
		t.Fatalf("wait: %v %+v", err, r)
	}
	host.Confirm(context.Background(), e.o, "first")
}

func TestKernelChange(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	old, newK := e.system("6.1"), e.system("6.6")
	e.boot(old)
	refuse := e.req("d1", hostverb.Switch, newK)
	refuse.KernelChange = "refuse"
	_, err := host.Activate(context.Background(), e.o, refuse)
	if hostverb.ExitCode(err) != hostverb.ExitKernelChange || !strings.Contains(err.Error(), "kernel") {
		t.Fatalf("refuse: %v", err)
	}
	if n, _ := e.profile(); n != 1 || len(e.sw.Calls()) != 0 {
		t.Fatal("kernel change refusal changed something")
	}
	q := e.req("d2", hostverb.Switch, newK)
	q.KernelChange = "boot"
	rec, err := host.Activate(context.Background(), e.o, q)
	if err != nil || rec.Mode != hostverb.Boot || rec.State != hostverb.Confirmed || !rec.RebootRequired {
		t.Fatalf("boot: %v %+v", err, rec)
	}
	if n, p := e.profile(); n != 2 || p != newK || e.link(e.o.CurrentSystem) != old {
		t.Fatalf("boot mode: profile %d %s", n, p)
	}
	st, _ := host.Inspect(context.Background(), e.o)
	if !st.RebootPending || st.TestActive != true {
		t.Fatalf("status: %+v", st)
	}
}

func TestExit100(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	old, sys := e.system("6.1"), e.system("6.1")
	e.boot(old)
	e.sw.exit[sys] = 100
	q := e.req("d1", hostverb.Switch, sys)
	q.MagicRollback = false
	rec, err := host.Activate(context.Background(), e.o, q)
	if err != nil || rec.ExitCode != hostverb.ExitRebootRequired || !rec.RebootRequired {
		t.Fatalf("%v %+v", err, rec)
	}
}

func TestTestModeThenInspect(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	old, sys := e.system("6.1"), e.system("6.1")
	e.boot(old)
	if _, err := host.Activate(context.Background(), e.o, e.req("d1", hostverb.Test, sys)); err != nil {
		t.Fatal(err)
	}
	if _, err := host.Confirm(context.Background(), e.o, "d1"); err != nil {
		t.Fatal(err)
	}
	st, err := host.Inspect(context.Background(), e.o)
	if err != nil {
		t.Fatal(err)
	}
	if !st.TestActive || st.RebootPending || st.Profile.Generation != 1 || st.Current.Path != sys || st.Current.Generation != 0 {
		t.Fatalf("status: %+v", st)
	}
}

func TestRollbackLocal(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	old, sys := e.system("6.1"), e.system("6.1")
	e.boot(old)
	if err := host.Rollback(context.Background(), e.o); hostverb.ExitCode(err) != hostverb.ExitFailed {
		t.Fatalf("rollback with one generation: %v", err)
	}
	q := e.req("d1", hostverb.Switch, sys)
	q.MagicRollback = false
	if _, err := host.Activate(context.Background(), e.o, q); err != nil {
		t.Fatal(err)
	}
	e.spawn.wg.Wait()
	if err := host.Rollback(context.Background(), e.o); err != nil {
		t.Fatal(err)
	}
	if n, p := e.profile(); n != 1 || p != old || e.link(e.o.CurrentSystem) != old {
		t.Fatalf("rollback: profile %d %s", n, p)
	}
}

func TestValidation(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	old := e.system("6.1")
	e.boot(old)
	notSystem := filepath.Join(e.store, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-hello")
	os.MkdirAll(notSystem, 0o755)
	e.nix.valid[notSystem] = true
	e.trust.add(notSystem, &e.trust.key)
	invalid := filepath.Join(e.store, "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-system")
	cases := []struct {
		name string
		q    hostverb.Request
	}{
		{"empty id", e.req("", hostverb.Switch, old)},
		{"id with slash", e.req("a/b", hostverb.Switch, old)},
		{"id with dots", e.req("..", hostverb.Switch, old)},
		{"long id", e.req(strings.Repeat("a", 65), hostverb.Switch, old)},
		{"mode", e.req("d", "reboot", old)},
		{"outside store", e.req("d", hostverb.Switch, "/tmp/x")},
		{"subpath", e.req("d", hostverb.Switch, old+"/bin")},
		{"dotdot", e.req("d", hostverb.Switch, e.store+"/../etc")},
		{"relative", e.req("d", hostverb.Switch, "nix/store/x")},
		{"bad hash", e.req("d", hostverb.Switch, e.store+"/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-x")},
		{"short hash", e.req("d", hostverb.Switch, e.store+"/aaaa-x")},
		{"dot name", e.req("d", hostverb.Switch, e.store+"/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-.x")},
		{"not valid in store", e.req("d", hostverb.Switch, invalid)},
		{"not a nixos system", e.req("d", hostverb.Switch, notSystem)},
		{"kernel-change", func() hostverb.Request { q := e.req("d", hostverb.Switch, old); q.KernelChange = "yes"; return q }()},
		{"timeout", func() hostverb.Request {
			q := e.req("d", hostverb.Switch, old)
			q.ConfirmTimeout = time.Millisecond
			return q
		}()},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := host.Activate(context.Background(), e.o, tc.q)
			if hostverb.ExitCode(err) != hostverb.ExitInvalid {
				t.Fatalf("got %v, want invalid", err)
			}
		})
	}
	if len(e.sw.Calls()) != 0 {
		t.Fatal("an invalid request activated something")
	}
	if _, err := host.Activate(context.Background(), e.o, func() hostverb.Request {
		q := e.req("once", hostverb.DryActivate, old)
		return q
	}()); err != nil {
		t.Fatal(err)
	}
	e.spawn.wg.Wait()
	if _, err := host.Activate(context.Background(), e.o, e.req("once", hostverb.DryActivate, old)); hostverb.ExitCode(err) != hostverb.ExitInvalid {
		t.Fatalf("reused id: %v", err)
	}
}

// A worker that dies without a word must not leave activate hanging.
type deadSpawner struct{}

func (deadSpawner) Spawn(ctx context.Context, o host.Options, id string, lock *os.File) (int, error) {
	cmd := exec.Command("/bin/true")
	if err := cmd.Run(); err != nil {
		return 0, err
	}
	return cmd.Process.Pid, nil
}

func TestDeadWorker(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	old, sys := e.system("6.1"), e.system("6.1")
	e.boot(old)
	e.o.Spawner = deadSpawner{}
	rec, err := host.Activate(context.Background(), e.o, e.req("d1", hostverb.Switch, sys))
	if hostverb.ExitCode(err) != hostverb.ExitFailed || rec.State != hostverb.Failed || !strings.Contains(rec.Reason, "died") {
		t.Fatalf("%v %+v", err, rec)
	}
}

// A worker that vanished without a trace (no pid known) is noticed by the
// host lock being free.
type lostSpawner struct{}

func (lostSpawner) Spawn(ctx context.Context, o host.Options, id string, lock *os.File) (int, error) {
	return 0, nil // Activate closes its descriptor: nobody holds the lock
}

func TestLostWorker(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	old, sys := e.system("6.1"), e.system("6.1")
	e.boot(old)
	e.o.Spawner = lostSpawner{}
	rec, err := host.Activate(context.Background(), e.o, e.req("d1", hostverb.Switch, sys))
	if hostverb.ExitCode(err) != hostverb.ExitFailed || rec.State != hostverb.Failed {
		t.Fatalf("%v %+v", err, rec)
	}
	if r, err := host.Wait(context.Background(), e.o, "d1", time.Second); hostverb.ExitCode(err) != hostverb.ExitFailed || r.State != hostverb.Failed {
		t.Fatalf("wait: %v %+v", err, r)
	}
}

type failingNix struct{ *fakeNix }

func (failingNix) SetProfile(ctx context.Context, profile, path string) error {
	return errors.New("disk full")
}

func TestSetProfileFailsNothingRuns(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	old, sys := e.system("6.1"), e.system("6.1")
	e.boot(old)
	e.o.Nix = failingNix{e.nix}
	rec, err := host.Activate(context.Background(), e.o, e.req("d1", hostverb.Switch, sys))
	if hostverb.ExitCode(err) != hostverb.ExitFailed || rec.RolledBack || !strings.Contains(rec.Reason, "nothing was changed") {
		t.Fatalf("%v %+v", err, rec)
	}
	if len(e.sw.Calls()) != 0 {
		t.Fatalf("activation ran: %q", e.sw.Calls())
	}
}

// Confirm racing the deadline: exactly one of them wins, and the record,
// the profile and the running system agree with the winner.
func TestConfirmRacesDeadline(t *testing.T) {
	t.Parallel()
	for i := range 6 {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			old, sys := e.system("6.1"), e.system("6.1")
			e.boot(old)
			rec, err := host.Activate(context.Background(), e.o, e.req("d1", hostverb.Switch, sys))
			if err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Until(rec.Deadline) + time.Duration(i-3)*3*time.Millisecond)
			_, cerr := host.Confirm(context.Background(), e.o, "d1")
			e.spawn.wg.Wait()
			final, _ := host.Load(e.o, "d1")
			switch {
			case cerr == nil:
				if final.State != hostverb.Confirmed || e.link(e.o.CurrentSystem) != sys {
					t.Fatalf("confirm won but state %s, running %s", final.State, e.link(e.o.CurrentSystem))
				}
			case hostverb.ExitCode(cerr) == hostverb.ExitRolledBack:
				if final.State != hostverb.RolledBack || e.link(e.o.CurrentSystem) != old {
					t.Fatalf("rollback won but state %s, running %s", final.State, e.link(e.o.CurrentSystem))
				}
			default:
				t.Fatalf("confirm: %v", cerr)
			}
		})
	}
}
