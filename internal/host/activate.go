package host

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/bos55/concordia/internal/hostverb"
	"github.com/bos55/concordia/internal/nixcli"
)

// Activate is the activate verb: it validates, checks the system, locks
// the host, refuses while another switch runs or the switch inhibitors
// change (unless NoCheck), applies the kernel policy, then hands the deploy
// to a detached worker (Work) and waits for it to finish activating. The
// returned record says what happened; err is nil only when the system was
// activated (awaiting confirmation or done). If this process dies (the SSH
// session dropped), the worker carries on and the wait verb reports the
// outcome.
func Activate(ctx context.Context, o Options, q hostverb.Request) (*hostverb.Record, error) {
	o = o.withDefaults()
	q.Verb = hostverb.VerbActivate
	if q.ConfirmTimeout == 0 {
		q.ConfirmTimeout = 30 * time.Second
	}
	if q.KernelChange == "" {
		q.KernelChange = hostverb.KernelSwitch
	}
	if err := q.Validate(o.StoreDir); err != nil {
		return nil, err
	}
	// Checked before the lock, so a refused system leaves no trace.
	if err := checkSystem(ctx, o, q.Path); err != nil {
		return nil, err
	}
	lock, err := lockHost(o, &hostverb.Holder{ID: q.ID, Mode: q.Mode, Path: q.Path, Started: time.Now().UTC(), PID: os.Getpid()})
	if err != nil {
		return nil, err
	}
	spawned := false
	defer func() {
		if !spawned {
			lock.Close()
		}
	}()
	if q.Mode != hostverb.DryActivate {
		if err := switchBusy(ctx, o); err != nil {
			return nil, err
		}
	}
	rec, err := newRecord(o, q)
	if err != nil {
		return nil, err
	}
	rec.Set(hostverb.Activating, "")
	if err := create(o, rec); err != nil {
		return nil, err
	}
	pid, err := o.Spawner.Spawn(ctx, o, q.ID, lock)
	if err != nil {
		update(o, q.ID, func(r *hostverb.Record) error {
			r.Set(hostverb.Failed, "could not start the worker: "+err.Error())
			return nil
		})
		return nil, fmt.Errorf("%w: %v", hostverb.ErrFailed, err)
	}
	spawned = true
	lock.Close() // the worker has its own descriptor of the lock now
	update(o, q.ID, func(r *hostverb.Record) error { r.WorkerPID = pid; return nil })
	r, err := waitFor(ctx, o, q.ID, func(s hostverb.State) bool { return s != hostverb.Activating }, pid)
	if err != nil {
		return r, err
	}
	return r, r.Err()
}

// newRecord is the activation record of q before anything changed: what
// runs now (the previous system and generation, the rollback targets), and
// the refusals that need them (inhibitors, kernel policy).
func newRecord(o Options, q hostverb.Request) (*hostverb.Record, error) {
	rec := &hostverb.Record{
		ID: q.ID, Mode: q.Mode, RequestedMode: q.Mode, Path: q.Path, ActivationExit: -1,
		MagicRollback: q.MagicRollback && q.Mode.NeedsConfirm(),
		AutoRollback:  q.AutoRollback, ConfirmTimeout: q.ConfirmTimeout.String(),
		NoCheck: q.NoCheck, InstallBootloader: q.Install,
		Log: LogPath(o, q.ID), Started: time.Now().UTC(),
	}
	if cur, err := os.Readlink(o.CurrentSystem); err == nil {
		rec.Previous = cur
	}
	if g, ok, err := nixcli.CurrentGeneration(o.Profile); err != nil {
		return nil, err
	} else if ok {
		rec.PreviousGeneration, rec.PreviousProfile = g.Number, g.Path
	}
	if q.Mode.NeedsConfirm() {
		if !q.NoCheck && rec.Previous != "" {
			if diff := inhibitorChanges(rec.Previous, q.Path); len(diff) > 0 {
				return nil, fmt.Errorf("%w: switch inhibitors changed (%s): switching into this system live is not recommended; nothing changed. Deploy with --mode boot and reboot, or pass --no-check to switch anyway",
					hostverb.ErrPreSwitch, strings.Join(diff, "; "))
			}
		}
		if err := kernelCheck(o, q, rec); err != nil {
			return nil, err
		}
	}
	return rec, nil
}

// kernelCheck compares the new system's kernel, modules and initrd with the
// booted system's. A kernel or module change is switched into by default
// (it works: the booted kernel's modules stay reachable) and recorded as
// reboot required; KernelBoot turns a switch into boot, KernelRefuse
// refuses (nothing changed). An initrd-only change (most nixpkgs bumps) is
// only recorded: reboot recommended.
func kernelCheck(o Options, q hostverb.Request, rec *hostverb.Record) error {
	booted, err := os.Readlink(o.BootedSystem)
	if err != nil {
		o.Logger.Warn("no booted system to compare the kernel with", "err", err)
		return nil
	}
	bc, err := compareBoot(booted, q.Path)
	if err != nil {
		return err
	}
	rec.RebootRecommended = bc.initrd && !bc.required()
	if !bc.required() {
		return nil
	}
	rec.KernelChanged = true
	switch q.KernelChange {
	case hostverb.KernelBoot:
		if q.Mode == hostverb.Switch {
			rec.Mode, rec.RebootRequired, rec.MagicRollback = hostverb.Boot, true, false
			o.Logger.Info("kernel change: switch becomes boot", "changed", bc.names())
			return nil
		}
	case hostverb.KernelRefuse, hostverb.KernelReport:
		return fmt.Errorf("%w (%s differ from the booted system); nothing changed: deploy with mode boot, --kernel-change boot, or the default (switch, then reboot)",
			hostverb.ErrKernelChange, strings.Join(bc.names(), ", "))
	}
	rec.RebootRequired = true
	o.Logger.Info("kernel change: switching live, reboot required", "changed", bc.names())
	return nil
}

// preSwitchFailed reports whether switch-to-configuration's output (the
// deploy log) says its pre-switch checks refused the switch.
func preSwitchFailed(logPath string) bool {
	b, _ := readTail(logPath, 16<<10)
	return strings.Contains(string(b), "Pre-switch checks failed")
}

// checkDetail is what the pre-switch checks printed about the change
// (the inhibitors' "key : old -> new" lines), as ": a; b".
func checkDetail(logPath string) string {
	b, _ := readTail(logPath, 16<<10)
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, " -> ") && strings.Contains(l, " : ") {
			lines = append(lines, strings.TrimSpace(l))
		}
	}
	if len(lines) == 0 {
		return ""
	}
	return ": " + strings.Join(lines, "; ")
}

// readTail reads at most the last n bytes of path.
func readTail(path string, n int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > n {
		f.Seek(fi.Size()-n, io.SeekStart)
	}
	return io.ReadAll(io.LimitReader(f, n))
}

// watch waits for confirmation and rolls back at the deadline.
func watch(ctx context.Context, o Options, rec *hostverb.Record) error {
	t := time.NewTicker(o.Poll)
	defer t.Stop()
	for {
		r, err := Load(o, rec.ID)
		if err != nil {
			return err
		}
		if r.State != hostverb.AwaitingConfirm {
			return nil // confirmed (or changed by hand): the watchdog is done
		}
		if time.Now().After(r.Deadline) {
			break
		}
		<-t.C
	}
	won := false
	why := ""
	r, err := update(o, rec.ID, func(r *hostverb.Record) error {
		if r.State != hostverb.AwaitingConfirm {
			return nil
		}
		won = true
		why = "no confirmation within " + r.ConfirmTimeout
		if r.Rejected {
			why = "rejected by the deployer"
		}
		r.Set(hostverb.RollingBack, why)
		return nil
	})
	if err != nil || !won {
		return err
	}
	reason := why + ": rolled back"
	if err := rollbackDeploy(ctx, o, r); err != nil {
		reason = why + ": rollback failed: " + err.Error()
	}
	o.Logger.Warn("magic rollback", "id", r.ID, "reason", reason)
	_, err = update(o, rec.ID, func(r *hostverb.Record) error {
		r.RolledBack = !strings.Contains(reason, "rollback failed")
		r.Set(hostverb.RolledBack, reason)
		return nil
	})
	return err
}

// rollbackDeploy undoes deploy rec. switch/boot: the profile goes back to
// the previous generation, the deploy's generation (only one it created) is
// deleted and the previous generation is activated the same way; test: the
// previously running system is activated with test, the profile untouched.
// A switch back that exits 4 only for units that were failed before the
// deploy has rolled back fine.
func rollbackDeploy(ctx context.Context, o Options, rec *hostverb.Record) error {
	switchBack := func(system string, action hostverb.Mode) error {
		code, err := o.Switcher.Switch(ctx, system, action, rec.Log, SwitchOptions{NoCheck: true})
		if err != nil {
			return err
		}
		if code == 4 {
			after, lerr := o.Units.Failed(ctx)
			if lerr == nil && len(minus(after, rec.FailedBefore)) == 0 {
				return nil
			}
			if lerr == nil {
				return fmt.Errorf("previous system's switch-to-configuration %s: units still failed: %s", action, strings.Join(minus(after, rec.FailedBefore), ", "))
			}
		}
		if code != 0 && code != hostverb.ExitRebootRequired {
			return fmt.Errorf("previous system's switch-to-configuration %s: status %d", action, code)
		}
		return nil
	}
	switch rec.Mode {
	case hostverb.DryActivate:
		return nil
	case hostverb.Test:
		if rec.Previous == "" {
			return errors.New("no previously running system to go back to")
		}
		return switchBack(rec.Previous, hostverb.Test)
	}
	var errs []error
	if err := restoreProfile(ctx, o, rec); err != nil {
		if !errors.Is(err, errDeleteGeneration) {
			return err // without the profile back, activating would make things worse
		}
		errs = append(errs, err)
	}
	target, action := rec.PreviousProfile, rec.Mode
	if target == "" {
		// First deploy on a profile-less host: put the running system back.
		target, action = rec.Previous, hostverb.Test
		if rec.Mode == hostverb.Boot {
			return nil
		}
	}
	if target == "" {
		return errors.Join(append(errs, errors.New("no previous generation or system to go back to"))...)
	}
	if err := switchBack(target, action); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// restoreProfile points the profile back at the generation it had before
// the deploy, when the deploy moved it, and deletes the deploy's generation
// only if the deploy created it (Nix reuses the newest generation when it
// already holds the path: that one was there before). A failed delete
// wraps errDeleteGeneration: the profile is back all the same.
func restoreProfile(ctx context.Context, o Options, rec *hostverb.Record) error {
	if !profileMoved(rec) || rec.PreviousGeneration <= 0 {
		return nil
	}
	if err := o.Nix.SwitchGeneration(ctx, o.Profile, rec.PreviousGeneration); err != nil {
		return err
	}
	if rec.CreatedGeneration {
		if err := o.Nix.DeleteGeneration(ctx, o.Profile, rec.Generation); err != nil {
			return fmt.Errorf("%w: %w", errDeleteGeneration, err)
		}
	}
	return nil
}

var errDeleteGeneration = errors.New("delete the deploy's generation")

// profileMoved: the deploy set the profile to another generation.
func profileMoved(rec *hostverb.Record) bool {
	return rec.Generation != 0 && rec.Generation != rec.PreviousGeneration
}

// Confirm is `deployer confirm`: it stops the watchdog of deploy id. A deploy
// that was already rolled back (or failed) cannot be confirmed.
func Confirm(ctx context.Context, o Options, id string) (*hostverb.Record, error) {
	o = o.withDefaults()
	if err := hostverb.ValidID(id); err != nil {
		return nil, err
	}
	r, err := update(o, id, func(r *hostverb.Record) error {
		switch r.State {
		case hostverb.AwaitingConfirm:
			r.Set(hostverb.Confirmed, "confirmed by the deployer")
			return nil
		case hostverb.Confirmed:
			return nil
		case hostverb.Activating:
			return fmt.Errorf("%w: deploy %s is still activating", hostverb.ErrFailed, id)
		}
		return r.Err()
	})
	if err != nil {
		return r, err
	}
	return r, nil
}

// Reject is `deployer confirm --reject`: the deployer refuses deploy id (a
// health check failed), so its watchdog rolls back now instead of at the
// deadline. Rejecting a deploy that is already rolled back (or rolling
// back) is not an error; one that is confirmed or still activating is.
func Reject(ctx context.Context, o Options, id string) (*hostverb.Record, error) {
	o = o.withDefaults()
	if err := hostverb.ValidID(id); err != nil {
		return nil, err
	}
	return update(o, id, func(r *hostverb.Record) error {
		switch r.State {
		case hostverb.AwaitingConfirm:
			r.Rejected = true
			r.Deadline = time.Now().UTC()
			return nil
		case hostverb.RollingBack, hostverb.RolledBack:
			return nil
		case hostverb.Activating:
			return fmt.Errorf("%w: deploy %s is still activating", hostverb.ErrFailed, id)
		case hostverb.Confirmed:
			return fmt.Errorf("%w: deploy %s is already confirmed", hostverb.ErrFailed, id)
		}
		return r.Err()
	})
}

// Wait is `deployer wait`: it blocks until deploy id has finished activating
// (awaiting confirmation, or a final state) or timeout passes, then returns
// its record; err tells failed, rolled back or timed out apart.
func Wait(ctx context.Context, o Options, id string, timeout time.Duration) (*hostverb.Record, error) {
	o = o.withDefaults()
	if err := hostverb.ValidID(id); err != nil {
		return nil, err
	}
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	r, err := Load(o, id)
	if err != nil {
		return nil, err
	}
	r, err = waitFor(ctx, o, id, func(s hostverb.State) bool { return s != hostverb.Activating && s != hostverb.RollingBack }, r.WorkerPID)
	if err != nil {
		return r, err
	}
	return r, r.Err()
}

// workerGone reports whether nobody works on deploy id any more: its worker
// process is gone, or the host lock (which the worker holds until the deploy
// ends) is free or held by another deploy. The lock test also covers a
// worker whose pid was never known or was reused.
func workerGone(o Options, id string, pid int) bool {
	if !alive(pid) {
		return true
	}
	if pid > 0 {
		if held, ok := workerHolds(pid, filepath.Join(o.StateDir, "lock")); ok {
			h := readHolder(o)
			return !held || h == nil || h.ID != id
		}
	}
	h := lockHolder(o)
	return h == nil || h.ID != id
}

// waitFor polls the record until done(state) or ctx ends. A worker that
// died leaving the deploy unfinished is reported as failed rather than
// waited for forever.
func waitFor(ctx context.Context, o Options, id string, done func(hostverb.State) bool, pid int) (*hostverb.Record, error) {
	t := time.NewTicker(o.Poll)
	defer t.Stop()
	for {
		r, err := Load(o, id)
		if err != nil {
			return nil, err
		}
		if done(r.State) {
			return r, nil
		}
		if !r.State.Final() && workerGone(o, id, pid) {
			time.Sleep(o.Poll) // it may have written its last word just now
			if r2, err := Load(o, id); err == nil && done(r2.State) {
				return r2, nil
			}
			r, _ = update(o, id, func(r *hostverb.Record) error {
				if !r.State.Final() {
					r.Set(hostverb.Failed, fmt.Sprintf("the deploy's worker (pid %d) died in state %s", pid, r.State))
				}
				return nil
			})
			return r, nil
		}
		select {
		case <-ctx.Done():
			return r, fmt.Errorf("%w: deploy %s is %s", hostverb.ErrTimeout, id, r.State)
		case <-t.C:
		}
	}
}
