package deploy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/bos55/concordia/internal/closure"
	"github.com/bos55/concordia/internal/remote"
)

// Outcome is how a host's deploy ended.
type Outcome string

// Outcomes. Only OK counts as success: a rollback is a failure of the
// deploy even though the host is healthy again (deploy-rs exits 0 there).
const (
	OK             Outcome = "ok"
	Failed         Outcome = "failed"
	RolledBack     Outcome = "rolled-back"
	Refused        Outcome = "refused"         // closure check failed: nothing changed
	RebootRequired Outcome = "reboot-required" // kernel change, nothing changed
	Planned        Outcome = "planned"         // --dry-run
)

// Host verb exit codes (the deployer contract).
const (
	exitActivated     = 0
	exitFailed        = 1
	exitLocked        = 3
	exitInvalid       = 4
	exitReboot        = 5
	exitRolledBack    = 6
	exitActivatedBoot = 100
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
	Mode Mode
	// KernelChange is passed to activate as --kernel-change when set
	// ("report" or "boot").
	KernelChange string
	// Parallel bounds the hosts deployed at once; <= 0 means all.
	Parallel int
	// ID names this deploy on every host (lock holder, confirm, wait).
	ID     string
	Remote remote.Runner
	// Checker returns the closure checker for a node (nodes may trust
	// extra keys). Nil skips the check (only for --no-check-closure).
	Checker func(Node) Checker
	Pins    Pinner // nil: no pinning
	HTTP    *http.Client
	Log     *slog.Logger
	// Progress receives step changes; nil: none.
	Progress Progress
	// Grace is how long past the confirm timeout the deployer keeps asking
	// the host what happened (it may be restarting sshd). Default 30s.
	Grace time.Duration
	// Retry is the pause between reconnect attempts. Default 1s.
	Retry time.Duration
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
	Mode           Mode          `json:"mode"`
	Result         Outcome       `json:"result"`
	Error          string        `json:"error,omitempty"`
	RebootRequired bool          `json:"rebootRequired,omitempty"`
	Missing        []string      `json:"missing,omitempty"`
	Unsigned       []string      `json:"unsigned,omitempty"`
	Start          time.Time     `json:"start"`
	Duration       time.Duration `json:"-"`
	Millis         float64       `json:"ms"`
	Steps          []Step        `json:"steps"`
}

// Report is the outcome of a push, written by --json.
type Report struct {
	ID       string        `json:"id"`
	Mode     Mode          `json:"mode"`
	Start    time.Time     `json:"start"`
	Duration time.Duration `json:"-"`
	Millis   float64       `json:"ms"`
	Hosts    []HostReport  `json:"hosts"`
	// Failed lists the nodes whose result is not ok.
	Failed []string `json:"failed"`
}

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
	return fmt.Errorf("%w on %d of %d hosts (%s)", ErrDeploy, len(r.Failed), len(r.Hosts), strings.Join(parts, "; "))
}

// Run deploys nodes in parallel and returns the report; it never returns
// early because one host failed.
func Run(ctx context.Context, nodes []Node, o Options) *Report {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
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
	par := o.Parallel
	if par <= 0 || par > len(nodes) {
		par = len(nodes)
	}
	rep := &Report{ID: o.ID, Mode: o.Mode, Start: time.Now(), Hosts: make([]HostReport, len(nodes)), Failed: []string{}}
	sem := make(chan struct{}, max(par, 1))
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				rep.Hosts[i] = HostReport{Node: n.Name, Hostname: n.Hostname, Path: n.Path, Mode: o.Mode,
					Result: Failed, Error: "not started: " + ctx.Err().Error(), Steps: []Step{}}
				o.Progress.Done(rep.Hosts[i])
				return
			}
			defer func() { <-sem }()
			h := &hostRun{o: o, n: n, rep: HostReport{Node: n.Name, Hostname: n.Hostname, Path: n.Path,
				Mode: o.Mode, Start: time.Now(), Steps: []Step{}}}
			h.run(ctx)
			h.rep.Duration = time.Since(h.rep.Start)
			h.rep.Millis = ms(h.rep.Duration)
			rep.Hosts[i] = h.rep
			o.Progress.Done(h.rep)
		}()
	}
	wg.Wait()
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
	rep HostReport
	cur int // index of the running step, -1 none
}

func (h *hostRun) target() remote.Target {
	s := h.n.Settings
	return remote.Target{Host: h.n.Hostname, User: s.SSHUser, Opts: s.SSHOpts}
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

// sudo builds the argv for a host verb run as root.
func (h *hostRun) sudo(verb string, args ...string) []string {
	return append([]string{"sudo", "-n", h.n.Settings.DeployerPath, verb}, args...)
}

func (h *hostRun) run(ctx context.Context) {
	n, s := h.n, h.n.Settings
	t := h.target()

	if h.o.Checker != nil {
		h.begin(StepClosure)
		res, err := h.o.Checker(n).Check(ctx, n.Path)
		switch {
		case err != nil:
			h.end(err, "")
			h.finish(Failed, fmt.Errorf("closure check: %w", err))
			return
		case !res.OK():
			h.rep.Missing, h.rep.Unsigned = res.Missing, res.Unsigned
			err := fmt.Errorf("closure of %s not deployable from the cache: %d missing, %d unsigned by a trusted key%s",
				n.Path, len(res.Missing), len(res.Unsigned), firstFew(res.Missing, res.Unsigned))
			h.end(err, "")
			h.finish(Refused, err)
			return
		}
		h.end(nil, fmt.Sprintf("%d paths", res.Paths))
	}

	h.begin(StepFetch)
	r, err := h.o.Remote.Run(ctx, t, s.DeployerPath, "fetch", n.Path)
	if err == nil && r.Code != 0 {
		err = hostErr("fetch", r)
	}
	h.end(err, "")
	if err != nil {
		h.finish(Failed, err)
		return
	}

	confirm := s.MagicRollback && h.o.Mode.NeedsConfirm()
	args := []string{"--mode", string(h.o.Mode), "--id", h.o.ID,
		"--confirm-timeout", s.ConfirmTimeout.String(),
		"--magic-rollback=" + fmt.Sprint(s.MagicRollback),
		"--auto-rollback=" + fmt.Sprint(s.AutoRollback)}
	if h.o.KernelChange != "" {
		args = append(args, "--kernel-change", h.o.KernelChange)
	}
	args = append(args, n.Path)
	h.begin(StepActivate)
	actStart := time.Now()
	actCtx, cancel := context.WithTimeout(ctx, s.ActivationTimeout)
	r, err = h.o.Remote.Run(actCtx, t, h.sudo("activate", args...)...)
	cancel()
	activated := time.Now()
	var state hostState
	switch {
	case err != nil && !errors.Is(err, remote.ErrUnsafeArg) && ctx.Err() == nil:
		// The activation runs detached on the host: find out how it ended,
		// within what is left of activationTimeout (at least the grace).
		h.end(err, "connection lost, asking the host")
		h.begin(StepWait)
		deadline := actStart.Add(s.ActivationTimeout)
		if d := time.Now().Add(h.o.Grace); d.After(deadline) {
			deadline = d
		}
		state, err = h.waitState(ctx, t, deadline, func(st string) bool { return st != "activating" && st != "rolling-back" })
		h.end(err, state.State)
		if err != nil {
			h.finish(Failed, fmt.Errorf("activation: connection lost and the host did not answer: %w", err))
			return
		}
		activated = time.Now()
	case err != nil:
		h.end(err, "")
		if ctx.Err() != nil {
			err = fmt.Errorf("interrupted during activation (unless confirmed, the host rolls itself back): %w", err)
		}
		h.finish(Failed, err)
		return
	default:
		state = parseState(r.Stdout)
		switch r.Code {
		case exitActivated, exitActivatedBoot:
			h.rep.RebootRequired = r.Code == exitActivatedBoot || state.RebootRequired
			if state.State == "" {
				state.State = "activated"
			}
			h.end(nil, state.State)
		case exitReboot:
			err := fmt.Errorf("kernel, initrd or modules changed: reboot required, nothing changed (use --kernel-change=boot to install it as the boot default)")
			if m := msgOf(state, r); m != "" {
				err = fmt.Errorf("host%s", m)
				if !strings.Contains(m, "kernel-change") {
					err = fmt.Errorf("%w (use --kernel-change=boot to install it as the boot default)", err)
				}
			}
			h.end(err, "")
			h.finish(RebootRequired, err)
			return
		case exitFailed:
			err := fmt.Errorf("activation failed%s", msgOf(state, r))
			h.end(err, state.State)
			if state.State == "rolled-back" || state.RolledBack || s.AutoRollback {
				h.finish(RolledBack, err)
			} else {
				h.finish(Failed, err)
			}
			return
		case exitLocked:
			err := fmt.Errorf("host is locked by another deploy%s", msgOf(state, r))
			h.end(err, "")
			h.finish(Failed, err)
			return
		default:
			err := hostErr("activate", r)
			h.end(err, "")
			h.finish(Failed, err)
			return
		}
	}

	switch state.State {
	case "failed":
		h.finish(Failed, fmt.Errorf("activation failed%s", msgOf(state, remote.Result{})))
		return
	case "rolled-back":
		h.finish(RolledBack, fmt.Errorf("host rolled back%s", msgOf(state, remote.Result{})))
		return
	case "confirmed", "done", "activated", "awaiting-confirm":
	default:
		h.o.Log.Debug("unknown host state, going on", "node", n.Name, "state", state.State)
	}
	if state.State == "confirmed" || state.State == "done" {
		confirm = false
	}
	if state.Mode != "" && !Mode(state.Mode).NeedsConfirm() {
		confirm = false // e.g. --kernel-change=boot turned switch into boot
	}

	if confirm {
		confirmBy := activated.Add(s.ConfirmTimeout)
		if len(s.HealthChecks) > 0 {
			h.begin(StepHealth)
			err := h.health(ctx, t, activated.Add(s.ConfirmTimeout/2))
			h.end(err, "")
			if err != nil {
				// Not confirming is the rollback: the host's watchdog does
				// it, at once when told so (a host whose deployer predates
				// --reject, or that cannot be reached, rolls back at the
				// deadline all the same).
				h.begin(StepReject)
				r, rerr := h.o.Remote.Run(ctx, t, h.sudo("confirm", "--id", h.o.ID, "--reject")...)
				if rerr == nil && r.Code != 0 {
					rerr = hostErr("confirm --reject", r)
				}
				h.end(rerr, "")
				h.begin(StepWait)
				st, werr := h.waitState(ctx, t, confirmBy.Add(h.o.Grace), final)
				h.end(werr, st.State)
				h.finish(RolledBack, fmt.Errorf("health check failed, not confirmed: %w (host state: %s)", err, orUnknown(st.State)))
				if st.State != "rolled-back" {
					h.rep.Result = Failed
				}
				return
			}
		}
		h.begin(StepConfirm)
		out, err := h.confirm(ctx, t, confirmBy)
		h.end(err, string(out))
		if out != OK {
			h.begin(StepWait)
			st, werr := h.waitState(ctx, t, confirmBy.Add(h.o.Grace), final)
			h.end(werr, st.State)
			switch {
			case st.State == "rolled-back" || out == RolledBack:
				h.finish(RolledBack, fmt.Errorf("not confirmed, host rolled back: %v", err))
			case st.State == "confirmed":
				// Our confirm landed though its answer was lost.
				out = OK
			default:
				h.finish(Failed, fmt.Errorf("not confirmed (%v); host state %s", err, orUnknown(st.State)))
			}
			if out != OK {
				return
			}
		}
	}

	h.rep.Result = OK
	if h.o.Pins != nil && h.o.Mode != DryActivate {
		h.begin(StepPin)
		err := h.pin(ctx, t)
		h.end(err, "")
		if err != nil {
			// The system runs; a pin failure is worth a warning, not a failed deploy.
			h.o.Log.Warn("pin in cache failed", "node", n.Name, "err", err)
		}
	}
}

func final(st string) bool { return st == "confirmed" || st == "rolled-back" || st == "failed" }

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// confirm sends the confirm over fresh logins until one gets through or
// the deadline passes (past it the host has rolled back on its own).
func (h *hostRun) confirm(ctx context.Context, t remote.Target, deadline time.Time) (Outcome, error) {
	var last error
	for {
		cctx, cancel := context.WithDeadline(ctx, deadline)
		r, err := h.o.Remote.Fresh(cctx, t, h.sudo("confirm", "--id", h.o.ID)...)
		cancel()
		switch {
		case err == nil && r.Code == 0:
			return OK, nil
		case err == nil && r.Code == exitRolledBack:
			return RolledBack, hostErr("confirm", r)
		case err == nil:
			return Failed, hostErr("confirm", r)
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

// waitState asks the host (`wait --id`) until done(state) or deadline,
// reconnecting as needed.
func (h *hostRun) waitState(ctx context.Context, t remote.Target, deadline time.Time, done func(string) bool) (hostState, error) {
	var last error
	var st hostState
	for {
		left := time.Until(deadline)
		if left < time.Second {
			left = time.Second
		}
		wctx, cancel := context.WithTimeout(ctx, left+5*time.Second)
		r, err := h.o.Remote.Run(wctx, t, h.sudo("wait", "--id", h.o.ID, "--timeout", left.Round(time.Second).String())...)
		cancel()
		if err == nil {
			st = parseState(r.Stdout)
			if st.State != "" && done(st.State) {
				return st, nil
			}
			if st.State == "" {
				last = hostErr("wait", r)
			}
		} else {
			last = err
		}
		if ctx.Err() != nil {
			return st, ctx.Err()
		}
		if !sleepUntil(ctx, h.o.Retry, deadline) {
			if last == nil {
				last = fmt.Errorf("still %s", orUnknown(st.State))
			}
			return st, last
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

// health runs every check until all pass or the deadline passes.
func (h *hostRun) health(ctx context.Context, t remote.Target, deadline time.Time) error {
	for _, c := range h.n.Settings.HealthChecks {
		var last error
		for {
			last = h.check(ctx, t, c)
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

func (h *hostRun) check(ctx context.Context, t remote.Target, c HealthCheck) error {
	if c.Command != "" {
		r, err := h.o.Remote.Run(ctx, t, strings.Fields(c.Command)...)
		if err != nil {
			return fmt.Errorf("health %q: %w", c.Command, err)
		}
		if r.Code != 0 {
			return fmt.Errorf("health %q: exit %d: %s", c.Command, r.Code, lastLine(r.Stderr))
		}
		return nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.URL, nil)
	if err != nil {
		return fmt.Errorf("health %s: %w", c.URL, err)
	}
	resp, err := h.o.HTTP.Do(req)
	if err != nil {
		return fmt.Errorf("health %s: %w", c.URL, err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("health %s: %s", c.URL, resp.Status)
	}
	return nil
}

// pin pins the new system and unpins the generation before the previous
// one, found in the host's status (the previous stays pinned: it is the
// rollback target).
func (h *hostRun) pin(ctx context.Context, t remote.Target) error {
	if err := h.o.Pins.Pin(ctx, h.n.Path); err != nil {
		return err
	}
	r, err := h.o.Remote.Run(ctx, t, h.n.Settings.DeployerPath, "status", "--local", "--json")
	if err != nil || r.Code != 0 {
		h.o.Log.Debug("no host status, nothing unpinned", "node", h.n.Name, "err", err)
		return nil
	}
	st, err := ParseStatus(r.Stdout)
	if err != nil {
		h.o.Log.Debug("host status unreadable, nothing unpinned", "node", h.n.Name, "err", err)
		return nil
	}
	old := st.BeforePrevious(h.n.Path)
	if old == "" {
		return nil
	}
	return h.o.Pins.Unpin(ctx, old)
}

// hostState is what a host verb printed as its last JSON line.
type hostState struct {
	State          string
	Mode           string
	Message        string
	RolledBack     bool
	RebootRequired bool
}

// parseState reads the last JSON object of a host verb's stdout. Field
// names follow the host side's result line; unknown fields are ignored.
func parseState(out []byte) hostState {
	var last map[string]any
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 || line[0] != '{' {
			continue
		}
		var m map[string]any
		if json.Unmarshal(line, &m) == nil {
			last = m
		}
	}
	var st hostState
	str := func(keys ...string) string {
		for _, k := range keys {
			if v, ok := last[k].(string); ok && v != "" {
				return v
			}
		}
		return ""
	}
	boolean := func(keys ...string) bool {
		for _, k := range keys {
			if v, ok := last[k].(bool); ok && v {
				return true
			}
		}
		return false
	}
	st.State = str("state", "result", "status")
	st.Mode = str("mode", "effectiveMode", "effective_mode")
	st.Message = str("error", "message", "reason")
	st.RolledBack = boolean("rolledBack", "rolled_back")
	st.RebootRequired = boolean("rebootRequired", "reboot_required")
	return st
}

func msgOf(st hostState, r remote.Result) string {
	if st.Message != "" {
		return ": " + st.Message
	}
	if l := lastLine(r.Stderr); l != "" {
		return ": " + l
	}
	return ""
}

func hostErr(verb string, r remote.Result) error {
	st := parseState(r.Stdout)
	msg := st.Message
	if msg == "" {
		msg = lastLine(r.Stderr)
	}
	return fmt.Errorf("%s: exit %d: %s", verb, r.Code, msg)
}

func lastLine(b []byte) string {
	s := strings.TrimSpace(string(b))
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return s
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
