package host

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/bos55/concordia/internal/hostverb"
	"github.com/bos55/concordia/internal/nixcli"
)

// Work is the detached worker of deploy id (the hidden `watchdog` verb): it
// sets the profile, runs switch-to-configuration, reads its exit status as
// switch-to-configuration-ng means it, rolls back at once if the switch
// failed, and otherwise waits for confirmation until the deadline, rolling
// back when none comes. lock is the host lock; it is closed on return.
func Work(ctx context.Context, o Options, id string, lock *os.File) error {
	o = o.withDefaults()
	if lock != nil {
		// Inherited without close-on-exec: set it, or every daemon the
		// activation starts would hold the host lock forever.
		syscall.CloseOnExec(int(lock.Fd()))
		defer lock.Close()
	}
	rec, err := Load(o, id)
	if err != nil {
		return err
	}
	// The worker must finish what it started even if asked to stop.
	w := &worker{ctx: context.WithoutCancel(ctx), o: o, id: id, rec: rec, log: o.Logger.With("id", id)}
	if done, err := w.setProfile(); done {
		return err
	}
	code, done, err := w.switchTo()
	if done {
		return err
	}
	return w.arm(code)
}

// worker is one deploy's detached activation; its steps end the deploy
// (done) by recording the outcome, or hand on to the next step.
type worker struct {
	ctx context.Context
	o   Options
	id  string
	rec *hostverb.Record
	log *slog.Logger
}

// update writes fn's changes to the deploy's record.
func (w *worker) update(fn func(r *hostverb.Record) error) (*hostverb.Record, error) {
	return update(w.o, w.id, fn)
}

// fail records a failed activation and undoes what the deploy changed:
// nothing, the profile alone, or a rollback (autoRollback). refused says
// why switch-to-configuration activated nothing ("": it did activate, or
// never ran), in which case only the profile is put back.
func (w *worker) fail(reason, refused string) error {
	rec := w.rec
	activated := refused == ""
	var rolled string
	switch {
	case !profileMoved(rec) && (rec.ActivationExit == -1 || !activated):
		rolled = "; nothing was changed"
	case rec.ActivationExit == -1 || !activated:
		// The switch never ran, or activated nothing: only the profile
		// moved.
		if err := restoreProfile(w.ctx, w.o, rec); err != nil {
			rolled = "; putting the profile back failed: " + err.Error()
		} else {
			rolled = "; nothing was activated, the profile is back"
		}
	case rec.AutoRollback:
		if err := rollbackDeploy(w.ctx, w.o, rec); err != nil {
			rolled = "; rollback failed too: " + err.Error()
		} else {
			rolled = "; rolled back"
		}
	default:
		rolled = "; auto-rollback disabled: left as is"
	}
	w.log.Error("activation failed", "reason", reason+rolled)
	_, err := w.update(func(r *hostverb.Record) error {
		r.RolledBack = rolled == "; rolled back"
		r.Generation, r.CreatedGeneration, r.ActivationExit = rec.Generation, rec.CreatedGeneration, rec.ActivationExit
		r.NewFailedUnits, r.FailedUnits, r.Refused = rec.NewFailedUnits, rec.FailedUnits, refused
		r.Set(hostverb.Failed, reason+rolled)
		return nil
	})
	return err
}

// setProfile notes the units failed before the deploy and, for switch and
// boot, points the system profile at the new system, recording whether the
// generation is this deploy's.
func (w *worker) setProfile() (done bool, err error) {
	rec, o := w.rec, w.o
	if rec.Mode != hostverb.DryActivate {
		if rec.FailedBefore, err = o.Units.Failed(w.ctx); err != nil {
			w.log.Warn("cannot list failed units; every failed unit will count as this deploy's", "err", err)
		}
	}
	if rec.Mode != hostverb.Switch && rec.Mode != hostverb.Boot {
		return false, nil
	}
	before, err := nixcli.Generations(o.Profile)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return true, w.fail("list generations: "+err.Error(), "")
	}
	if err := o.Nix.SetProfile(w.ctx, o.Profile, rec.Path); err != nil {
		return true, w.fail("set profile: "+err.Error(), "")
	}
	g, ok, err := nixcli.CurrentGeneration(o.Profile)
	if err != nil || !ok || g.Path != rec.Path {
		return true, w.fail(fmt.Sprintf("profile %s does not point at %s after setting it (%v)", o.Profile, rec.Path, err), "")
	}
	// Nix reuses the newest generation when it already holds the path:
	// only a number that was not there before is this deploy's.
	rec.Generation, rec.CreatedGeneration = g.Number, !slices.ContainsFunc(before, func(b hostverb.Generation) bool { return b.Number == g.Number })
	_, err = w.update(func(r *hostverb.Record) error {
		r.Generation, r.CreatedGeneration, r.FailedBefore = rec.Generation, rec.CreatedGeneration, rec.FailedBefore
		return nil
	})
	return err != nil, err
}

// switchTo runs switch-to-configuration and reads its exit status the way
// switch-to-configuration-ng means it; done when that ended the deploy.
func (w *worker) switchTo() (code int, done bool, err error) {
	rec := w.rec
	code, err = w.o.Switcher.Switch(w.ctx, rec.Path, rec.Mode, rec.Log, SwitchOptions{NoCheck: rec.NoCheck, InstallBootloader: rec.InstallBootloader})
	rec.ActivationExit = code
	switch {
	case errors.Is(err, ErrSwitchBusy):
		rec.ActivationExit = 11
		return code, true, w.fail("another switch-to-configuration is running (nixos-rebuild?): "+err.Error(), hostverb.RefusedLocked)
	case err != nil:
		return code, true, w.fail("switch-to-configuration: "+err.Error(), "")
	}
	exited := func() error {
		return w.fail(fmt.Sprintf("switch-to-configuration %s exited with status %d (see %s)", rec.Mode, code, rec.Log), "")
	}
	switch code {
	case 0:
		return code, false, nil
	case 11: // EAGAIN: ng's lock, taken between our check and its start
		return code, true, w.fail("another switch-to-configuration holds its lock (nixos-rebuild, system.autoUpgrade, comin?)", hostverb.RefusedLocked)
	case 100:
		if rec.Mode != hostverb.Switch && rec.Mode != hostverb.Test {
			return code, false, nil // boot: ng does not compare init interfaces
		}
		return code, true, w.newInitInterface(code)
	case 4:
		// ng: some unit is failed after the switch. Ours only if it was
		// not failed before.
		after, lerr := w.o.Units.Failed(w.ctx)
		if lerr != nil {
			return code, true, w.fail(fmt.Sprintf("switch-to-configuration %s exited 4 (failed units) and they cannot be listed: %v", rec.Mode, lerr), "")
		}
		rec.NewFailedUnits, rec.FailedUnits = minus(after, rec.FailedBefore), minus(after, minus(after, rec.FailedBefore))
		if len(rec.NewFailedUnits) > 0 {
			return code, true, w.fail(fmt.Sprintf("units failed: %s (see %s)", strings.Join(rec.NewFailedUnits, ", "), rec.Log), "")
		}
		w.log.Warn("activated; units failed before the deploy are still failed", "units", rec.FailedUnits)
		return code, false, nil
	case 1:
		if preSwitchFailed(rec.Log) {
			return code, true, w.fail("pre-switch checks failed"+checkDetail(rec.Log)+" (deploy with --mode boot and reboot, or pass --no-check)", hostverb.RefusedChecks)
		}
		return code, true, exited()
	default:
		return code, true, exited()
	}
}

// newInitInterface: ng saw a new init interface and stopped before
// activating anything (switch or test); a switch had installed the boot
// loader first, so there the new system is the boot default.
func (w *worker) newInitInterface(code int) error {
	if w.rec.Mode == hostverb.Test {
		return w.fail("the new system's init interface differs from the running one's: it can only be booted (deploy with --mode boot and reboot)", hostverb.RefusedInit)
	}
	_, err := w.update(func(r *hostverb.Record) error {
		r.ActivationExit, r.Mode, r.RebootRequired, r.MagicRollback = code, hostverb.Boot, true, false
		r.Set(hostverb.Confirmed, "installed as the boot default but not activated: its init interface differs from the running system's; reboot to run it")
		return nil
	})
	return err
}

// arm records the activation and, with magic rollback, waits for the
// confirmation until the deadline (watch).
func (w *worker) arm(code int) error {
	rec := w.rec
	note := "activated"
	if len(rec.FailedUnits) > 0 {
		note += fmt.Sprintf(", %d unit(s) still failed from before: %s", len(rec.FailedUnits), strings.Join(rec.FailedUnits, ", "))
	}
	if rec.RebootRequired && rec.Mode.NeedsConfirm() {
		note += "; reboot required (kernel or modules differ from the booted system)"
	} else if rec.RebootRecommended {
		note += "; reboot recommended (the initrd differs from the booted one)"
	}
	if !rec.MagicRollback {
		_, err := w.update(func(r *hostverb.Record) error {
			r.ActivationExit, r.FailedUnits = code, rec.FailedUnits
			r.Set(hostverb.Confirmed, note+"; no confirmation needed")
			return nil
		})
		return err
	}
	timeout, _ := time.ParseDuration(rec.ConfirmTimeout)
	rec, err := w.update(func(r *hostverb.Record) error {
		r.ActivationExit, r.FailedUnits = code, rec.FailedUnits
		r.Deadline = time.Now().UTC().Add(timeout)
		r.Set(hostverb.AwaitingConfirm, note+"; waiting for confirmation until "+r.Deadline.Format(time.RFC3339))
		return nil
	})
	if err != nil {
		return err
	}
	w.log.Info("activated, watchdog armed", "deadline", rec.Deadline)
	return watch(w.ctx, w.o, rec)
}
