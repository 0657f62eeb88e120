package deploy

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/bos55/concordia/internal/hostverb"
	"github.com/bos55/concordia/internal/remote"
)

// Steps of a reboot, in order; StepHealth runs the node's checks on the
// booted system. After a bad boot StepBootRollback sets the boot default
// back, then StepReboot, StepRebootWait and StepBootCheck come again.
const (
	StepRebootStatus = "reboot-status" // boot id, booted system and boot default before
	StepReboot       = "reboot"        // the reboot verb
	StepRebootWait   = "reboot-wait"   // until status answers with a new boot id
	StepBootCheck    = "boot-check"    // the booted system is the expected one
	StepBootRollback = "boot-rollback" // rollback --boot --generation (the known good one)
)

// DefaultRebootTimeout is how long a host has to come back after a reboot.
const DefaultRebootTimeout = 5 * time.Minute

// rebootContract is the host-verb contract that has the reboot verb.
const rebootContract = 4

// maxRebootBackoff bounds the pause between attempts to reach a rebooting
// host.
const maxRebootBackoff = 5 * time.Second

// ErrNotBack: the host did not answer with a new boot id in time.
var ErrNotBack = errors.New("did not come back")

// disconnecter is the part of remote.SSH that drops a shared connection:
// after a reboot the old one leads nowhere.
type disconnecter interface {
	Disconnect(ctx context.Context, t remote.Target) error
}

// rebootAfter reports whether this push reboots the host once activated:
// asked for (Options.Reboot), and a boot-mode deploy (a kernel change may
// have turned a switch into one) or a switch after which the host reports
// a reboot required. A test deploy is never rebooted away.
func (h *hostRun) rebootAfter(rec *hostverb.Record) bool {
	switch {
	case !h.o.Reboot || h.o.Mode == hostverb.Test || h.o.Mode == hostverb.DryActivate:
		return false
	case h.o.Mode == hostverb.Boot, rec != nil && rec.Mode == hostverb.Boot:
		return true
	}
	return h.rep.RebootRequired
}

// rebootOnly is `deployer reboot`: no closure, fetch or activation, the
// host boots its boot default.
func (h *hostRun) rebootOnly(ctx context.Context) {
	if h.rebootHost(ctx, "") {
		h.rep.Result = OK
	}
}

func (h *hostRun) rebootTimeout() time.Duration {
	if h.o.RebootTimeout > 0 {
		return h.o.RebootTimeout
	}
	return DefaultRebootTimeout
}

// rebootHost reboots the host into expected ("": its boot default) and
// checks it came back with that system and healthy; if it came back with
// another system or unhealthy, it sets the boot default back to the
// generation booted before (known good) and reboots once more. False
// when the host is done (its outcome recorded).
func (h *hostRun) rebootHost(ctx context.Context, expected string) bool {
	h.begin(StepRebootStatus)
	st, err := h.c.status(ctx)
	switch {
	case err != nil:
	case h.c.speaks() < rebootContract:
		err = fmt.Errorf("%w: the host's deployer speaks contract %d, rebooting needs contract %d: update the host's deployer", hostverb.ErrUnsupported, h.c.speaks(), rebootContract)
	case st.BootID == "":
		// Without it a reboot cannot be told from a host that never went.
		err = fmt.Errorf("%w: the host reports no boot id (%s unreadable?)", hostverb.ErrFailed, "/proc/sys/kernel/random/boot_id")
	}
	if err != nil {
		h.end(err, "")
		h.finish(Failed, fmt.Errorf("reboot: %w", err))
		return false
	}
	if h.o.WhenRequired && !st.RebootPending {
		h.end(nil, "no reboot pending")
		return true
	}
	if expected == "" {
		expected = st.BootDefault.Path
	}
	if st.BootDefault.Path != expected {
		err := fmt.Errorf("the boot default is %s, not the deployed %s: not rebooting", orNoSystem(st.BootDefault.Path), expected)
		h.end(err, "")
		h.finish(Failed, err)
		return false
	}
	good := st.Booted
	h.end(nil, fmt.Sprintf("boot id %s, booted %s, boot default %s", st.BootID, genText(st.Booted), genText(st.BootDefault)))

	now, err := h.rebootAndWait(ctx, st.BootID)
	if err != nil {
		h.finish(Failed, err)
		return false
	}
	h.begin(StepBootCheck)
	problem := error(nil)
	if now.Booted.Path != expected {
		problem = fmt.Errorf("booted %s, not the expected %s", orNoSystem(now.Booted.Path), expected)
	}
	h.end(problem, genText(now.Booted))
	if problem == nil && len(h.n.Settings.HealthChecks) > 0 {
		h.begin(StepHealth)
		problem = h.bootedHealth(ctx)
		h.end(problem, "")
	}
	if problem == nil {
		h.rep.RebootRequired, h.rep.RebootRecommended = now.RebootPending, now.RebootSuggested
		return true
	}
	h.rollBackBoot(ctx, good, now.BootID, problem)
	return false
}

// rebootAndWait has the host reboot and waits until its status answers
// with a boot id other than before, within the reboot timeout.
func (h *hostRun) rebootAndWait(ctx context.Context, before string) (*hostverb.Status, error) {
	h.begin(StepReboot)
	a, err := h.c.call(ctx, false, hostverb.Request{Verb: hostverb.VerbReboot, ID: h.o.ID})
	if err == nil {
		err = a.err(hostverb.VerbReboot)
	}
	switch {
	case errors.Is(err, hostverb.ErrUnsupported):
		err = fmt.Errorf("%w: update the host's deployer (contract %d)", err, rebootContract)
		h.end(err, "")
		return nil, fmt.Errorf("reboot: %w", err)
	case isConnErr(err) && a.ExitCode == 0 && ctx.Err() == nil:
		// The answer may be what got lost: the boot id tells.
		h.end(err, "connection lost, waiting for a new boot id")
	case err != nil:
		h.end(err, "")
		return nil, fmt.Errorf("reboot: %w", err)
	default:
		if a.Rebooting != nil && a.Rebooting.BootIDBefore != "" {
			before = a.Rebooting.BootIDBefore
		}
		h.end(nil, "boot id "+before)
	}
	if d, ok := h.o.Remote.(disconnecter); ok {
		d.Disconnect(ctx, h.c.t) // the next login is a new one
	}
	h.begin(StepRebootWait)
	st, err := h.waitBoot(ctx, before)
	detail := ""
	if st != nil {
		detail = "boot id " + st.BootID
	}
	h.end(err, detail)
	return st, err
}

// waitBoot asks the host for its status, reconnecting with a growing
// pause, until it answers with a boot id other than before (an answer with
// the same one: not rebooted yet) or the reboot timeout passes.
func (h *hostRun) waitBoot(ctx context.Context, before string) (*hostverb.Status, error) {
	timeout := h.rebootTimeout()
	deadline := time.Now().Add(timeout)
	pause := h.o.Retry
	var last error
	for {
		// The last attempt comes at the deadline, with a second at least.
		cctx, cancel := context.WithTimeout(ctx, min(max(time.Until(deadline), time.Second), 30*time.Second))
		st, err := h.c.status(cctx)
		cancel()
		switch {
		case err == nil && st.BootID != "" && st.BootID != before:
			return st, nil
		case err == nil:
			last = errors.New("same boot id: not rebooted yet")
		default:
			last = err
		}
		wait := min(pause, time.Until(deadline))
		if ctx.Err() != nil || wait <= 0 {
			break
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
		}
		pause = min(pause*2, max(h.o.Retry, maxRebootBackoff))
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return nil, fmt.Errorf("%w within %s (last: %v)", ErrNotBack, shortDuration(timeout), last)
}

// bootedHealth runs the node's checks against the booted system: command
// checks through health --booted (the checks the system ships, run on the
// host), then the URL checks, each until it passes or the confirm timeout
// has passed.
func (h *hostRun) bootedHealth(ctx context.Context) error {
	s := h.n.Settings
	deadline := time.Now().Add(s.ConfirmTimeout)
	declared := 0
	for _, c := range s.HealthChecks {
		if c.Command != "" {
			declared++
		}
	}
	if declared > 0 {
		left := min(max(time.Until(deadline).Round(time.Second), time.Second), hostverb.MaxHealth)
		a, err := h.c.call(ctx, false, hostverb.Request{Verb: hostverb.VerbHealth, ID: h.o.ID, Timeout: left, Booted: true})
		if err == nil {
			err = a.err(hostverb.VerbHealth)
		}
		if err != nil {
			return fmt.Errorf("health after reboot: %w", err)
		}
		if a.Health == nil || len(a.Health.Checks) == 0 {
			return fmt.Errorf("health after reboot: the node declares %d command check(s), but the booted system ships none", declared)
		}
	}
	for _, c := range s.HealthChecks {
		if c.URL == "" {
			continue
		}
		var last error
		for {
			if last = h.checkURL(ctx, c.URL); last == nil || !sleepUntil(ctx, h.o.Retry, deadline) {
				break
			}
		}
		if last != nil {
			return fmt.Errorf("health after reboot: %w", last)
		}
	}
	return nil
}

// rollBackBoot undoes a bad boot: the boot default goes back to good (the
// generation booted before the reboot), the host reboots once more and
// must come back with it. The outcome is RolledBack, or Failed when any
// of that does not work.
func (h *hostRun) rollBackBoot(ctx context.Context, good hostverb.System, bootID string, why error) {
	if good.Generation <= 0 {
		err := fmt.Errorf("%w; the system booted before (%s) is no generation of the profile: the boot default cannot be set back", why, orNoSystem(good.Path))
		h.finish(Failed, err)
		return
	}
	h.begin(StepBootRollback)
	req := hostverb.Request{Verb: hostverb.VerbRollback, ID: h.o.ID, Boot: true, Generation: good.Generation}
	deadline := time.Now().Add(h.rebootTimeout())
	var err error
	for {
		var a answer
		a, err = h.c.call(ctx, false, req)
		if err == nil {
			err = a.err(hostverb.VerbRollback)
			break
		}
		if !isConnErr(err) || !sleepUntil(ctx, h.o.Retry, deadline) {
			break
		}
	}
	h.end(err, fmt.Sprintf("boot default generation %d", good.Generation))
	if err != nil {
		h.finish(Failed, fmt.Errorf("%w; setting the boot default back to generation %d failed: %w", why, good.Generation, err))
		return
	}
	st, err := h.rebootAndWait(ctx, bootID)
	if err != nil {
		h.finish(Failed, fmt.Errorf("%w; the boot default is generation %d again, but after the second reboot the host %w", why, good.Generation, err))
		return
	}
	h.begin(StepBootCheck)
	if st.Booted.Path != good.Path {
		err := fmt.Errorf("booted %s, not generation %d's %s", orNoSystem(st.Booted.Path), good.Generation, good.Path)
		h.end(err, genText(st.Booted))
		h.finish(Failed, fmt.Errorf("%w; set back to generation %d and rebooted, but %w", why, good.Generation, err))
		return
	}
	h.end(nil, genText(st.Booted))
	h.rep.RebootRequired, h.rep.RebootRecommended = st.RebootPending, st.RebootSuggested
	h.finish(RolledBack, fmt.Errorf("%w: boot default set back to generation %d, booted it again", why, good.Generation))
}

func genText(s hostverb.System) string {
	if s.Generation > 0 {
		return fmt.Sprintf("generation %d", s.Generation)
	}
	return orNoSystem(s.Path)
}

func orNoSystem(p string) string {
	if p == "" {
		return "(no system)"
	}
	return p
}

// shortDuration writes 5m rather than 5m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
