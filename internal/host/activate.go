package host

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/bos55/concordia/internal/hostverb"
	"github.com/bos55/concordia/internal/nixcli"
)

// Activate is `deployer activate`: it validates, locks the host, checks the
// system, then hands the deploy to a detached worker (Work) and waits for it
// to finish activating. The returned record says what happened; err is nil
// only when the system was activated (awaiting confirmation or done).
// If this process dies (the SSH session dropped), the worker carries on and
// `deployer wait` reports the outcome.
func Activate(ctx context.Context, o Options, q hostverb.Request) (*hostverb.Record, error) {
	o = o.withDefaults()
	q.Verb = hostverb.VerbActivate
	if q.ConfirmTimeout == 0 {
		q.ConfirmTimeout = 30 * time.Second
	}
	if q.KernelChange == "" {
		q.KernelChange = "report"
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
	rec := &hostverb.Record{
		ID: q.ID, Mode: q.Mode, RequestedMode: q.Mode, Path: q.Path, ActivationExit: -1,
		MagicRollback: q.MagicRollback && q.Mode.NeedsConfirm(),
		AutoRollback:  q.AutoRollback, ConfirmTimeout: q.ConfirmTimeout.String(),
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
		if err := kernelCheck(o, q, rec); err != nil {
			return nil, err
		}
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

// kernelCheck compares the new system's kernel, initrd and modules with the
// booted system's: a change is reported (nothing done) or, with
// --kernel-change boot, turns a switch into boot.
func kernelCheck(o Options, q hostverb.Request, rec *hostverb.Record) error {
	booted, err := os.Readlink(o.BootedSystem)
	if err != nil {
		o.Logger.Warn("no booted system to compare the kernel with", "err", err)
		return nil
	}
	diff, err := bootChanges(booted, q.Path)
	if err != nil {
		return err
	}
	if len(diff) == 0 {
		return nil
	}
	rec.KernelChanged = true
	if q.KernelChange == "boot" && q.Mode == hostverb.Switch {
		rec.Mode, rec.RebootRequired, rec.MagicRollback = hostverb.Boot, true, false
		o.Logger.Info("kernel change: switch becomes boot", "changed", diff)
		return nil
	}
	return fmt.Errorf("%w (%s differ from the booted system); nothing changed: deploy with mode boot or --kernel-change boot",
		hostverb.ErrKernelChange, strings.Join(diff, ", "))
}

// Work is the detached worker of deploy id (the hidden `watchdog` verb): it
// sets the profile, runs switch-to-configuration, rolls back at once if that
// fails, and otherwise waits for confirmation until the deadline, rolling
// back when none comes. lock is the host lock; it is closed on return.
func Work(ctx context.Context, o Options, id string, lock *os.File) error {
	o = o.withDefaults()
	if lock != nil {
		// Inherited without close-on-exec: set it, or every daemon the
		// activation starts would hold the host lock forever.
		syscall.CloseOnExec(int(lock.Fd()))
		defer lock.Close()
	}
	// The worker must finish what it started even if asked to stop.
	ctx = context.WithoutCancel(ctx)
	rec, err := Load(o, id)
	if err != nil {
		return err
	}
	log := o.Logger.With("id", id)
	fail := func(reason string) error {
		rolled := ""
		switch {
		case !rec.CreatedGeneration && rec.ActivationExit == -1:
			rolled = "; nothing was changed"
		case rec.AutoRollback:
			if err := rollbackDeploy(ctx, o, rec); err != nil {
				rolled = "; rollback failed too: " + err.Error()
			} else {
				rolled = "; rolled back"
			}
		default:
			rolled = "; auto-rollback disabled: left as is"
		}
		log.Error("activation failed", "reason", reason+rolled)
		_, err := update(o, id, func(r *hostverb.Record) error {
			r.RolledBack = rolled == "; rolled back"
			r.Generation, r.CreatedGeneration, r.ActivationExit = rec.Generation, rec.CreatedGeneration, rec.ActivationExit
			r.Set(hostverb.Failed, reason+rolled)
			return nil
		})
		return err
	}
	if rec.Mode == hostverb.Switch || rec.Mode == hostverb.Boot {
		if err := o.Nix.SetProfile(ctx, o.Profile, rec.Path); err != nil {
			return fail("set profile: " + err.Error())
		}
		g, ok, err := nixcli.CurrentGeneration(o.Profile)
		if err != nil || !ok || g.Path != rec.Path {
			return fail(fmt.Sprintf("profile %s does not point at %s after setting it (%v)", o.Profile, rec.Path, err))
		}
		rec.Generation, rec.CreatedGeneration = g.Number, g.Number != rec.PreviousGeneration
		if _, err := update(o, id, func(r *hostverb.Record) error {
			r.Generation, r.CreatedGeneration = rec.Generation, rec.CreatedGeneration
			return nil
		}); err != nil {
			return err
		}
	}
	code, err := o.Switcher.Switch(ctx, rec.Path, rec.Mode, rec.Log)
	rec.ActivationExit = code
	if err != nil {
		return fail("switch-to-configuration: " + err.Error())
	}
	if code != 0 && code != hostverb.ExitRebootRequired {
		return fail(fmt.Sprintf("switch-to-configuration %s exited with status %d (see %s)", rec.Mode, code, rec.Log))
	}
	if !rec.MagicRollback {
		_, err := update(o, id, func(r *hostverb.Record) error {
			r.ActivationExit, r.RebootRequired = code, r.RebootRequired || code == hostverb.ExitRebootRequired
			r.Set(hostverb.Confirmed, "activated; no confirmation needed")
			return nil
		})
		return err
	}
	timeout, _ := time.ParseDuration(rec.ConfirmTimeout)
	rec, err = update(o, id, func(r *hostverb.Record) error {
		r.ActivationExit, r.RebootRequired = code, r.RebootRequired || code == hostverb.ExitRebootRequired
		r.Deadline = time.Now().UTC().Add(timeout)
		r.Set(hostverb.AwaitingConfirm, "activated; waiting for confirmation until "+r.Deadline.Format(time.RFC3339))
		return nil
	})
	if err != nil {
		return err
	}
	log.Info("activated, watchdog armed", "deadline", rec.Deadline)
	return watch(ctx, o, rec)
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
// the previous generation, the deploy's generation is deleted and the
// previous generation is activated the same way; test: the previously
// running system is activated with test, the profile untouched.
func rollbackDeploy(ctx context.Context, o Options, rec *hostverb.Record) error {
	var errs []error
	switch rec.Mode {
	case hostverb.Test, hostverb.DryActivate:
		if rec.Mode == hostverb.DryActivate {
			return nil
		}
		if rec.Previous == "" {
			return errors.New("no previously running system to go back to")
		}
		if code, err := o.Switcher.Switch(ctx, rec.Previous, hostverb.Test, rec.Log); err != nil || code != 0 {
			return fmt.Errorf("previous system's switch-to-configuration test: status %d %v", code, err)
		}
		return nil
	}
	if rec.CreatedGeneration && rec.PreviousGeneration > 0 {
		if err := o.Nix.SwitchGeneration(ctx, o.Profile, rec.PreviousGeneration); err != nil {
			return err // without the profile back, deleting or activating would make things worse
		}
		if err := o.Nix.DeleteGeneration(ctx, o.Profile, rec.Generation); err != nil {
			errs = append(errs, err)
		}
	}
	target, action := rec.PreviousProfile, rec.Mode
	if target == "" {
		// First deploy on a profile-less host: put the running system back.
		target, action = rec.Previous, hostverb.Test
		if rec.Mode == hostverb.Boot {
			return errors.Join(errs...)
		}
	}
	if target == "" {
		return errors.Join(append(errs, errors.New("no previous generation or system to go back to"))...)
	}
	if code, err := o.Switcher.Switch(ctx, target, action, rec.Log); err != nil || (code != 0 && code != hostverb.ExitRebootRequired) {
		errs = append(errs, fmt.Errorf("previous system's switch-to-configuration %s: status %d %v", action, code, err))
	}
	return errors.Join(errs...)
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
