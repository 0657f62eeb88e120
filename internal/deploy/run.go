package deploy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path"
	"strings"
	"time"

	"github.com/bos55/concordia/internal/closure"
	"github.com/bos55/concordia/internal/hostverb"
	"github.com/bos55/concordia/internal/remote"
)

// Outcome is how a host's deploy ended.
type Outcome string

// Outcomes. Only OK counts as success: a rollback is a failure of the
// deploy even though the host is healthy again (deploy-rs exits 0 there).
// OK may still carry RebootRequired, RebootRecommended or FailedUnits
// (failed before the deploy and still failed): the deploy stands.
const (
	OK         Outcome = "ok"
	Failed     Outcome = "failed"
	RolledBack Outcome = "rolled-back"
	// Refused: nothing changed on the host. The closure check failed,
	// another deploy or switch (nixos-rebuild, ng's lock) held the host,
	// or switch inhibitors refused a live switch.
	Refused Outcome = "refused"
	// RebootRequired: a kernel change under --kernel-change=refuse (or a
	// host older than contract 3); nothing changed.
	RebootRequired Outcome = "reboot-required"
	Planned        Outcome = "planned" // --dry-run
)

// Steps, in order.
const (
	StepClosure  = "closure"
	StepFetch    = "fetch"
	StepActivate = "activate"
	StepWait     = "wait"
	StepHealth   = "health"
	StepReject   = "reject"
	StepConfirm  = "confirm"
	StepPin      = "pin"
)

// Checker is what the state machine needs from internal/closure.
type Checker interface {
	Check(ctx context.Context, root string) (*closure.Result, error)
}

// Pinner keeps systems in the cache; see HTTPPinner.
type Pinner interface {
	Pin(ctx context.Context, storePath string) error
	Unpin(ctx context.Context, storePath string) error
}

// Options configure one push.
type Options struct {
	Mode hostverb.Mode
	// KernelChange is activate's kernel policy ("" is the host's default:
	// switch, reboot required, on contract 3 hosts; refuse on older ones;
	// hostverb.KernelBoot or hostverb.KernelRefuse).
	KernelChange string
	// NoCheck passes NIXOS_NO_CHECK=1 to switch-to-configuration: a switch
	// past changed switch inhibitors. InstallBootloader passes
	// NIXOS_INSTALL_BOOTLOADER=1 (moving to another boot loader).
	NoCheck, InstallBootloader bool
	// Parallel bounds the hosts deployed at once; <= 0 means all.
	Parallel int
	// Canary names the nodes deployed first (before any wave); if one of
	// them does not end OK, no other host is started. Nil: the nodes whose
	// canary setting is true. A name that is not among the nodes starts
	// nothing.
	Canary []string
	// MaxUnavailable bounds the hosts mid-deploy at once, like Parallel
	// (the smaller of the two applies); <= 0: the flake's maxUnavailable,
	// else no bound beyond Parallel. See ParseMaxUnavailable.
	MaxUnavailable int
	// MaxFailures: once this many hosts ended not OK, no new host is
	// started; <= 0: the flake's maxFailures, else no limit.
	MaxFailures int
	// ID names this deploy on every host (lock holder, confirm, wait).
	ID     string
	Remote remote.Runner
	// Checker returns the closure checker for a node (nodes may trust
	// extra keys). Nil skips the check (only for --no-check-closure).
	Checker func(Node) Checker
	Pins    Pinner // nil: no pinning
	HTTP    *http.Client
	Logger  *slog.Logger
	// Progress receives step changes; nil: none.
	Progress Progress
	// Grace is how long past the confirm timeout the deployer keeps asking
	// the host what happened (it may be restarting sshd). Default 30s.
	Grace time.Duration
	// Retry is the pause between reconnect attempts. Default 1s.
	Retry time.Duration
	// Reboot: after a boot-mode deploy, or a switch after which the host
	// reports a reboot required, reboot the host and check it comes back
	// with the new system, healthy (reboot.go). RebootOnly reboots without
	// deploying (`deployer reboot`); WhenRequired only hosts whose status
	// says a reboot is pending. RebootTimeout is how long a host has to
	// come back (default DefaultRebootTimeout).
	Reboot, RebootOnly, WhenRequired bool
	RebootTimeout                    time.Duration
}

// Step is one timed step of one host.
type Step struct {
	Name     string        `json:"name"`
	Start    time.Time     `json:"start"`
	Duration time.Duration `json:"-"`
	Millis   float64       `json:"ms"`
	Error    string        `json:"error,omitempty"`
	Detail   string        `json:"detail,omitempty"`
}

// HostReport is the outcome of one host.
type HostReport struct {
	Node           string        `json:"node"`
	Hostname       string        `json:"hostname"`
	Path           string        `json:"path"`
	Mode           hostverb.Mode `json:"mode"`
	Result         Outcome       `json:"result"`
	Error          string        `json:"error,omitempty"`
	RebootRequired bool          `json:"rebootRequired,omitempty"`
	// RebootRecommended: only the initrd differs from the booted one.
	RebootRecommended bool `json:"rebootRecommended,omitempty"`
	// FailedUnits were failed before the deploy and still are (reported,
	// the deploy stands); NewFailedUnits failed because of it.
	FailedUnits    []string      `json:"failedUnits,omitempty"`
	NewFailedUnits []string      `json:"newFailedUnits,omitempty"`
	Missing        []string      `json:"missing,omitempty"`
	Unsigned       []string      `json:"unsigned,omitempty"`
	Start          time.Time     `json:"start"`
	Duration       time.Duration `json:"-"`
	Millis         float64       `json:"ms"`
	Steps          []Step        `json:"steps"`
}

// Report is the outcome of a push, written by --json.
type Report struct {
	ID string `json:"id"`
	// Kind is KindPush or KindReboot (deployer reboot: no new system).
	Kind     string        `json:"kind"`
	Mode     hostverb.Mode `json:"mode"`
	Start    time.Time     `json:"start"`
	Duration time.Duration `json:"-"`
	Millis   float64       `json:"ms"`
	Hosts    []HostReport  `json:"hosts"`
	// Failed lists the nodes whose result is not ok (not started ones too).
	Failed []string `json:"failed"`
	// Rollout is the order and the limits used.
	Rollout *Rollout `json:"rollout,omitempty"`
}

// Report kinds: what the deploy history tells apart (a reboot puts no new
// system on a host).
const (
	KindPush   = "push"
	KindReboot = "reboot"
)

// ErrDeploy is returned (wrapped, naming the hosts) when any host did not
// end OK.
var ErrDeploy = errors.New("deploy failed")

// Err summarises the failures, nil when every host is OK.
func (r *Report) Err() error {
	if len(r.Failed) == 0 {
		return nil
	}
	var parts []string
	for _, h := range r.Hosts {
		if h.Result != OK && h.Result != Planned {
			parts = append(parts, fmt.Sprintf("%s: %s", h.Node, h.Result))
		}
	}
	err := fmt.Errorf("%w on %d of %d hosts (%s)", ErrDeploy, len(r.Failed), len(r.Hosts), strings.Join(parts, "; "))
	if r.Rollout != nil && r.Rollout.Stopped != "" {
		err = fmt.Errorf("%w; rollout stopped: %s", err, r.Rollout.Stopped)
	}
	return err
}

// Run deploys nodes and returns the report; it never returns early
// because one host failed. Canaries go first, then the other nodes wave by
// wave, at most the smaller of Parallel and MaxUnavailable at once; a
// failed canary, the MaxFailures budget running out or ctx ending stops
// the start of more hosts, and those are reported NotStarted with why.
func Run(ctx context.Context, nodes []Node, o Options) *Report {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Grace <= 0 {
		o.Grace = 30 * time.Second
	}
	if o.Retry <= 0 {
		o.Retry = time.Second
	}
	if o.HTTP == nil {
		o.HTTP = &http.Client{Timeout: 10 * time.Second}
	}
	if o.Progress == nil {
		o.Progress = nopProgress{}
	}
	if o.Pins != nil {
		o.Pins = newPushPins(o.Pins, nodes)
	}
	p := planRollout(nodes, o)
	kind := KindPush
	if o.RebootOnly {
		kind = KindReboot
	}
	rep := &Report{ID: o.ID, Kind: kind, Mode: o.Mode, Start: time.Now(), Hosts: make([]HostReport, len(nodes)), Failed: []string{}, Rollout: &p.info}
	s := &scheduler{sem: make(chan struct{}, p.info.MaxUnavailable), maxFailures: p.info.MaxFailures}
	s.notStarted = func(i int, why string) {
		n := nodes[i]
		rep.Hosts[i] = HostReport{Node: n.Name, Hostname: n.Hostname, Path: n.Path, Mode: o.Mode,
			Result: NotStarted, Error: "not started: " + why, Steps: []Step{}}
		o.Progress.Done(rep.Hosts[i])
	}
	s.start = func(ctx context.Context, i int) HostReport {
		n := nodes[i]
		h := &hostRun{o: o, n: n, c: newHostConn(o.Remote, n), rep: HostReport{Node: n.Name, Hostname: n.Hostname, Path: n.Path,
			Mode: o.Mode, Start: time.Now(), Steps: []Step{}}}
		h.run(ctx)
		h.rep.Duration = time.Since(h.rep.Start)
		h.rep.Millis = ms(h.rep.Duration)
		rep.Hosts[i] = h.rep
		o.Progress.Done(h.rep)
		return h.rep
	}
	if p.refuse != "" {
		s.stop(p.refuse)
	}
	if len(p.canary) > 0 {
		if s.why(ctx) == "" {
			phaseProgress(o.Progress, "canary", nodes, p.canary)
		}
		s.onFailed = canaryFailed
		s.phase(ctx, p.canary)
		s.onFailed = nil
	}
	for k, w := range p.waves {
		if (len(p.waves) > 1 || len(p.canary) > 0) && s.why(ctx) == "" {
			phaseProgress(o.Progress, fmt.Sprintf("wave %d", p.info.Waves[k].Wave), nodes, w)
		}
		s.phase(ctx, w)
	}
	p.info.Stopped = s.stopped
	rep.Duration = time.Since(rep.Start)
	rep.Millis = ms(rep.Duration)
	for _, h := range rep.Hosts {
		if h.Result != OK {
			rep.Failed = append(rep.Failed, h.Node)
		}
	}
	return rep
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

type hostRun struct {
	o   Options
	n   Node
	c   *hostConn
	rep HostReport
}

func (h *hostRun) begin(name string) {
	h.rep.Steps = append(h.rep.Steps, Step{Name: name, Start: time.Now()})
	h.o.Progress.Step(h.n.Name, name)
}

func (h *hostRun) end(err error, detail string) {
	s := &h.rep.Steps[len(h.rep.Steps)-1]
	s.Duration = time.Since(s.Start)
	s.Millis = ms(s.Duration)
	s.Detail = detail
	if err != nil {
		s.Error = err.Error()
	}
}

func (h *hostRun) finish(o Outcome, err error) {
	h.rep.Result = o
	if err != nil {
		h.rep.Error = err.Error()
	}
}

// run takes the host through its steps; each returns false when the host
// is done (its outcome recorded).
func (h *hostRun) run(ctx context.Context) {
	if h.o.RebootOnly {
		h.rebootOnly(ctx)
		return
	}
	if !h.checkClosure(ctx) || !h.fetch(ctx) {
		return
	}
	rec, activated, ok := h.activate(ctx)
	if !ok {
		return
	}
	if h.needsConfirm(rec) && !h.confirmOrReject(ctx, activated) {
		return
	}
	if h.rebootAfter(rec) && !h.rebootHost(ctx, h.n.Path) {
		return
	}
	h.rep.Result = OK
	if h.o.Pins != nil && h.o.Mode != hostverb.DryActivate {
		h.begin(StepPin)
		err := h.pin(ctx)
		h.end(err, "")
		if err != nil {
			// The system runs; a pin failure is worth a warning, not a failed deploy.
			h.o.Logger.Warn("pin in cache failed", "node", h.n.Name, "err", err)
		}
	}
}

// checkClosure refuses the host, before it is touched, when its system's
// closure is not complete and signed in the cache.
func (h *hostRun) checkClosure(ctx context.Context) bool {
	if h.o.Checker == nil {
		return true
	}
	n := h.n
	h.begin(StepClosure)
	res, err := h.o.Checker(n).Check(ctx, n.Path)
	switch {
	case err != nil:
		h.end(err, "")
		h.finish(Failed, fmt.Errorf("closure check: %w", err))
		return false
	case !res.OK():
		h.rep.Missing, h.rep.Unsigned = res.Missing, res.Unsigned
		err := fmt.Errorf("closure of %s not deployable from the cache: %d missing, %d unsigned by a trusted key%s",
			n.Path, len(res.Missing), len(res.Unsigned), firstFew(res.Missing, res.Unsigned))
		h.end(err, "")
		h.finish(Refused, err)
		return false
	}
	h.end(nil, fmt.Sprintf("%d paths", res.Paths))
	return true
}

// fetch has the host substitute the system from its caches.
func (h *hostRun) fetch(ctx context.Context) bool {
	h.begin(StepFetch)
	a, err := h.c.call(ctx, false, hostverb.Request{Verb: hostverb.VerbFetch, Paths: []string{h.n.Path}})
	if err == nil {
		err = a.err(hostverb.VerbFetch)
	}
	h.end(err, "")
	if err != nil {
		h.finish(Failed, err)
		return false
	}
	return true
}

// activate runs the activation and returns the host's record of it and
// when it ended; after a lost connection it asks the host how the detached
// activation went.
func (h *hostRun) activate(ctx context.Context) (*hostverb.Record, time.Time, bool) {
	s := h.n.Settings
	req := hostverb.Request{Verb: hostverb.VerbActivate, Mode: h.o.Mode, ID: h.o.ID, Path: h.n.Path,
		ConfirmTimeout: s.ConfirmTimeout, MagicRollback: s.MagicRollback, AutoRollback: s.AutoRollback,
		KernelChange: h.o.KernelChange, NoCheck: h.o.NoCheck, Install: h.o.InstallBootloader}
	h.begin(StepActivate)
	actStart := time.Now()
	actCtx, cancel := context.WithTimeout(ctx, s.ActivationTimeout)
	a, err := h.c.call(actCtx, false, req)
	cancel()
	switch {
	case isConnErr(err) && ctx.Err() == nil:
		// The activation runs detached on the host: find out how it ended,
		// within what is left of activationTimeout (at least the grace).
		h.end(err, "connection lost, asking the host")
		h.begin(StepWait)
		deadline := actStart.Add(s.ActivationTimeout)
		if d := time.Now().Add(h.o.Grace); d.After(deadline) {
			deadline = d
		}
		a, err = h.waitState(ctx, deadline, func(st hostverb.State) bool {
			return st != hostverb.Activating && st != hostverb.RollingBack
		})
		h.end(err, string(a.state()))
		if err != nil {
			h.finish(Failed, fmt.Errorf("activation: connection lost and the host did not answer: %w", err))
			return nil, time.Time{}, false
		}
	case err != nil:
		h.end(err, "")
		if ctx.Err() != nil {
			err = fmt.Errorf("interrupted during activation (unless confirmed, the host rolls itself back): %w", err)
		}
		h.finish(Failed, err)
		return nil, time.Time{}, false
	default:
		if !h.activated(a) {
			return nil, time.Time{}, false
		}
	}
	rec := a.Record
	if rec == nil {
		rec = &hostverb.Record{}
	}
	h.noteRecord(rec)
	switch rec.State {
	case hostverb.Failed:
		h.finish(Failed, fmt.Errorf("activation failed%s", colon(a.msg())))
		return nil, time.Time{}, false
	case hostverb.RolledBack:
		h.finish(RolledBack, fmt.Errorf("host rolled back%s", colon(a.msg())))
		return nil, time.Time{}, false
	case hostverb.Confirmed, hostverb.AwaitingConfirm, "":
	default:
		h.o.Logger.Debug("unknown host state, going on", "node", h.n.Name, "state", rec.State)
	}
	return rec, time.Now(), true
}

// noteRecord copies what the host's record says the report must show.
func (h *hostRun) noteRecord(rec *hostverb.Record) {
	h.rep.RebootRequired = h.rep.RebootRequired || rec.RebootRequired
	h.rep.RebootRecommended = rec.RebootRecommended
	h.rep.FailedUnits, h.rep.NewFailedUnits = rec.FailedUnits, rec.NewFailedUnits
}

// activated reads activate's answer; false when the host is done.
func (h *hostRun) activated(a answer) bool {
	if a.Record != nil {
		h.noteRecord(a.Record)
	}
	switch a.ExitCode {
	case hostverb.ExitOK, hostverb.ExitRebootRequired:
		h.rep.RebootRequired = a.ExitCode == hostverb.ExitRebootRequired || a.Record != nil && a.Record.RebootRequired
		detail := string(a.state())
		if detail == "" {
			detail = "activated"
		}
		h.end(nil, detail)
		return true
	case hostverb.ExitKernelChange:
		err := fmt.Errorf("kernel, initrd or modules changed: reboot required, nothing changed (use --kernel-change=boot to install it as the boot default)")
		if m := a.msg(); m != "" {
			err = fmt.Errorf("host: %s", m)
			if !strings.Contains(m, "kernel-change") {
				err = fmt.Errorf("%w (use --kernel-change=boot to install it as the boot default)", err)
			}
		}
		h.end(err, "")
		h.finish(RebootRequired, err)
	case hostverb.ExitFailed:
		err := fmt.Errorf("activation failed%s", colon(a.msg()))
		h.end(err, string(a.state()))
		if a.state() == hostverb.RolledBack || a.Record != nil && a.Record.RolledBack || h.n.Settings.AutoRollback {
			h.finish(RolledBack, err)
		} else {
			h.finish(Failed, err)
		}
	case hostverb.ExitLocked:
		// Nothing changed either: try again when the other one is done.
		err := fmt.Errorf("host is locked by another deploy or switch%s", colon(a.msg()))
		h.end(err, "")
		h.finish(Refused, err)
	case hostverb.ExitPreSwitch:
		// Nothing changed: the new system changes what cannot be switched
		// live. Not a rollback.
		err := fmt.Errorf("not activated%s", colon(a.msg()))
		h.end(err, "")
		h.finish(Refused, err)
	default:
		err := a.err(hostverb.VerbActivate)
		h.end(err, "")
		h.finish(Failed, err)
	}
	return false
}

// needsConfirm: magic rollback is on and the host runs the new system
// unconfirmed (a kernel change may have turned a switch into a boot).
func (h *hostRun) needsConfirm(rec *hostverb.Record) bool {
	switch {
	case !h.n.Settings.MagicRollback || !h.o.Mode.NeedsConfirm():
		return false
	case rec.State == hostverb.Confirmed:
		return false
	case rec.Mode != "" && !rec.Mode.NeedsConfirm():
		return false
	}
	return true
}

// confirmOrReject runs the health checks and confirms over a fresh login,
// or rejects the deploy so the host rolls back now; false when the host
// is done.
func (h *hostRun) confirmOrReject(ctx context.Context, activated time.Time) bool {
	s := h.n.Settings
	confirmBy := activated.Add(s.ConfirmTimeout)
	if len(s.HealthChecks) > 0 {
		h.begin(StepHealth)
		err := h.health(ctx, activated.Add(s.ConfirmTimeout/2))
		h.end(err, "")
		if err != nil {
			h.reject(ctx, confirmBy, err)
			return false
		}
	}
	h.begin(StepConfirm)
	out, err := h.confirm(ctx, confirmBy)
	h.end(err, string(out))
	if out == OK {
		return true
	}
	h.begin(StepWait)
	a, werr := h.waitState(ctx, confirmBy.Add(h.o.Grace), hostverb.State.Final)
	h.end(werr, string(a.state()))
	switch {
	case a.state() == hostverb.RolledBack || out == RolledBack:
		h.finish(RolledBack, fmt.Errorf("not confirmed, host rolled back: %v", err))
	case a.state() == hostverb.Confirmed:
		return true // our confirm landed though its answer was lost
	default:
		h.finish(Failed, fmt.Errorf("not confirmed (%v); host state %s", err, orUnknown(a.state())))
	}
	return false
}

// reject tells the host that a health check failed: not confirming is the
// rollback, and the host's watchdog does it at once when told so (a host
// whose deployer predates --reject, or that cannot be reached, rolls back
// at the deadline all the same).
func (h *hostRun) reject(ctx context.Context, confirmBy time.Time, why error) {
	h.begin(StepReject)
	a, err := h.c.call(ctx, false, hostverb.Request{Verb: hostverb.VerbConfirm, ID: h.o.ID, Reject: true})
	if err == nil {
		err = a.err("confirm --reject")
	}
	h.end(err, "")
	h.begin(StepWait)
	st, werr := h.waitState(ctx, confirmBy.Add(h.o.Grace), hostverb.State.Final)
	h.end(werr, string(st.state()))
	h.finish(RolledBack, fmt.Errorf("health check failed, not confirmed: %w (host state: %s)", why, orUnknown(st.state())))
	if st.state() != hostverb.RolledBack {
		h.rep.Result = Failed
	}
}

func orUnknown(s hostverb.State) string {
	if s == "" {
		return "unknown"
	}
	return string(s)
}

func colon(msg string) string {
	if msg == "" {
		return ""
	}
	return ": " + msg
}

// confirm sends the confirm over fresh logins until one gets through or
// the deadline passes (past it the host has rolled back on its own).
func (h *hostRun) confirm(ctx context.Context, deadline time.Time) (Outcome, error) {
	var last error
	for {
		cctx, cancel := context.WithDeadline(ctx, deadline)
		a, err := h.c.call(cctx, true, hostverb.Request{Verb: hostverb.VerbConfirm, ID: h.o.ID})
		cancel()
		switch {
		case err == nil && a.ExitCode == 0:
			return OK, nil
		case err == nil && a.ExitCode == hostverb.ExitRolledBack:
			return RolledBack, a.err(hostverb.VerbConfirm)
		case err == nil:
			return Failed, a.err(hostverb.VerbConfirm)
		}
		last = err
		if !errors.Is(err, remote.ErrConnection) && ctx.Err() != nil {
			return Failed, err
		}
		if !sleepUntil(ctx, h.o.Retry, deadline) {
			return Failed, fmt.Errorf("no fresh ssh login before the confirm timeout: %w", last)
		}
	}
}

// waitState asks the host (wait --id) until done(state) or deadline,
// reconnecting as needed.
func (h *hostRun) waitState(ctx context.Context, deadline time.Time, done func(hostverb.State) bool) (answer, error) {
	var last error
	var a answer
	for {
		left := time.Until(deadline)
		if left < time.Second {
			left = time.Second
		}
		wctx, cancel := context.WithTimeout(ctx, left+5*time.Second)
		got, err := h.c.call(wctx, false, hostverb.Request{Verb: hostverb.VerbWait, ID: h.o.ID, Timeout: left.Round(time.Second)})
		cancel()
		if err == nil {
			a = got
			if st := a.state(); st != "" && done(st) {
				return a, nil
			}
			if a.state() == "" {
				last = a.err(hostverb.VerbWait)
			}
		} else {
			last = err
		}
		if ctx.Err() != nil {
			return a, ctx.Err()
		}
		if !sleepUntil(ctx, h.o.Retry, deadline) {
			if last == nil {
				last = fmt.Errorf("still %s", orUnknown(a.state()))
			}
			return a, last
		}
	}
}

// sleepUntil pauses d unless that passes deadline; false means give up.
func sleepUntil(ctx context.Context, d time.Duration, deadline time.Time) bool {
	if time.Now().Add(d).After(deadline) {
		return false
	}
	select {
	case <-time.After(d):
		return true
	case <-ctx.Done():
		return false
	}
}

// health runs the node's checks until all pass or the deadline passes:
// the checks the new system ships (run on the host by the health verb;
// the push side never sends a command line) when the node declares
// command checks, then every URL check, fetched by the deployer.
func (h *hostRun) health(ctx context.Context, deadline time.Time) error {
	hostChecks := 0
	for _, c := range h.n.Settings.HealthChecks {
		if c.Command != "" {
			hostChecks++
		}
	}
	if hostChecks > 0 {
		if err := h.hostHealth(ctx, deadline, hostChecks); err != nil {
			return err
		}
	}
	for _, c := range h.n.Settings.HealthChecks {
		if c.URL == "" {
			continue
		}
		var last error
		for {
			last = h.checkURL(ctx, c.URL)
			if last == nil || !sleepUntil(ctx, h.o.Retry, deadline) {
				break
			}
		}
		if last != nil {
			return last
		}
	}
	return nil
}

// hostHealth has the host run the health checks its new system ships.
func (h *hostRun) hostHealth(ctx context.Context, deadline time.Time, declared int) error {
	left := time.Until(deadline).Round(time.Second)
	left = min(max(left, time.Second), hostverb.MaxHealth)
	a, err := h.c.call(ctx, false, hostverb.Request{Verb: hostverb.VerbHealth, ID: h.o.ID, Timeout: left})
	if errors.Is(err, hostverb.ErrUnsupported) {
		return fmt.Errorf("health: the node declares %d command check(s), which run on the host, but its deployer speaks contract %d and cannot run them: update it", declared, h.c.speaks())
	}
	if err != nil {
		return fmt.Errorf("health: %w", err)
	}
	if err := a.err(hostverb.VerbHealth); err != nil {
		return err
	}
	if a.Health == nil || len(a.Health.Checks) == 0 {
		return fmt.Errorf("health: the node declares %d command check(s), but its system %s ships none (homelab.deploy.healthChecks)", declared, h.n.Path)
	}
	return nil
}

func (h *hostRun) checkURL(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("health %s: %w", url, err)
	}
	resp, err := h.o.HTTP.Do(req)
	if err != nil {
		return fmt.Errorf("health %s: %w", url, err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("health %s: %s", url, resp.Status)
	}
	return nil
}

// pin pins the new system and unpins the generation before the previous
// one, found in the host's status (the previous stays pinned: it is the
// rollback target).
func (h *hostRun) pin(ctx context.Context) error {
	if err := h.o.Pins.Pin(ctx, h.n.Path); err != nil {
		return err
	}
	st, err := h.c.status(ctx)
	if err != nil {
		h.o.Logger.Debug("no host status, nothing unpinned", "node", h.n.Name, "err", err)
		return nil
	}
	old := st.BeforePrevious(h.n.Path)
	if old == "" {
		return nil
	}
	return h.o.Pins.Unpin(ctx, old)
}

func firstFew(missing, unsigned []string) string {
	var b strings.Builder
	show := func(label string, l []string) {
		for i, p := range l {
			if i == 5 {
				fmt.Fprintf(&b, " (+%d more)", len(l)-5)
				break
			}
			fmt.Fprintf(&b, "\n  %s %s", label, path.Base(p))
		}
	}
	show("missing ", missing)
	show("unsigned", unsigned)
	return b.String()
}
