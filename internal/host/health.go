package host

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/bos55/concordia/internal/hostverb"
)

// HealthFile is where a system ships its health checks, relative to its
// toplevel: the NixOS module writes environment.etc."concordia/health-checks.json",
// and a toplevel's etc/ links into the system's etc derivation, so the
// checks are part of the signed closure like everything else the system
// runs. The push side never sends a command line.
const HealthFile = "etc/concordia/health-checks.json"

// HealthChecks is the file's content.
type HealthChecks struct {
	Checks []HealthCheck `json:"checks"`
}

// HealthCheck is one check: Exec (a store path inside the system's
// closure, e.g. a writeShellScript of the module's command) exits 0 when
// the system is healthy.
type HealthCheck struct {
	Name    string `json:"name"`
	Exec    string `json:"exec"`
	Timeout int    `json:"timeout,omitempty"` // seconds per attempt, default 10
}

// Limits of a health checks file and of what is kept of a check's output.
const (
	maxHealthFile   = 1 << 20
	maxHealthChecks = 64
	keepOutput      = 2048
	healthRetry     = time.Second
)

// Health is the health verb: it runs the checks that the system of deploy
// id ships, as root, against the running system (which must be that
// system, awaiting confirmation), retrying each failing check until it
// passes or timeout has passed. A system that ships no checks is healthy.
func Health(ctx context.Context, o Options, id string, timeout time.Duration) (*hostverb.Health, error) {
	o = o.withDefaults()
	rec, err := Load(o, id)
	if err != nil {
		return nil, err
	}
	if rec.State != hostverb.AwaitingConfirm {
		return nil, fmt.Errorf("%w: deploy %s is %s: health checks run only while a deploy awaits confirmation", hostverb.ErrInvalid, id, rec.State)
	}
	if cur, _ := os.Readlink(o.CurrentSystem); cur != rec.Path {
		return nil, fmt.Errorf("%w: the running system is %s, not deploy %s's %s", hostverb.ErrInvalid, cur, id, rec.Path)
	}
	return runChecks(ctx, o, id, rec.Path, timeout)
}

// runChecks runs the checks system ships until each passes or timeout.
func runChecks(ctx context.Context, o Options, id, system string, timeout time.Duration) (*hostverb.Health, error) {
	checks, err := loadHealthChecks(ctx, o, system)
	if err != nil {
		return nil, err
	}
	res := &hostverb.Health{OK: true, System: system, Checks: []hostverb.CheckResult{}}
	deadline := time.Now().Add(timeout)
	var failed []string
	for _, c := range checks {
		r := runCheck(ctx, system, c, deadline)
		res.Checks = append(res.Checks, r)
		if !r.OK {
			res.OK = false
			failed = append(failed, fmt.Sprintf("%s (exit %d: %s)", r.Name, r.Exit, lastLine(r.Output)))
		}
	}
	o.Logger.Info("health checks", "id", id, "system", system, "checks", len(checks), "ok", res.OK)
	if !res.OK {
		return res, fmt.Errorf("%w: %s", hostverb.ErrUnhealthy, strings.Join(failed, "; "))
	}
	return res, nil
}

// loadHealthChecks reads system's health checks file, refusing one (or an
// Exec) that resolves outside the system's closure.
func loadHealthChecks(ctx context.Context, o Options, system string) ([]HealthCheck, error) {
	file := filepath.Join(system, HealthFile)
	if _, err := os.Lstat(filepath.Dir(file)); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if _, err := os.Stat(file); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err := insideClosure(ctx, o, system, file); err != nil {
		return nil, err
	}
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("health checks: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxHealthFile+1))
	if err != nil {
		return nil, fmt.Errorf("health checks: %w", err)
	}
	if len(b) > maxHealthFile {
		return nil, fmt.Errorf("%w: %s is larger than %d bytes", hostverb.ErrInvalid, file, maxHealthFile)
	}
	var hc HealthChecks
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&hc); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", hostverb.ErrInvalid, file, err)
	}
	if len(hc.Checks) > maxHealthChecks {
		return nil, fmt.Errorf("%w: %s declares %d checks, at most %d", hostverb.ErrInvalid, file, len(hc.Checks), maxHealthChecks)
	}
	for i, c := range hc.Checks {
		if c.Name == "" {
			hc.Checks[i].Name = fmt.Sprintf("check-%d", i+1)
		}
		if !filepath.IsAbs(c.Exec) {
			return nil, fmt.Errorf("%w: %s: check %q: exec %q is not an absolute path", hostverb.ErrInvalid, file, c.Name, c.Exec)
		}
		if err := insideClosure(ctx, o, system, c.Exec); err != nil {
			return nil, err
		}
		if c.Timeout < 0 || c.Timeout > int(hostverb.MaxHealth/time.Second) {
			return nil, fmt.Errorf("%w: %s: check %q: timeout %d out of range", hostverb.ErrInvalid, file, c.Name, c.Timeout)
		}
	}
	return hc.Checks, nil
}

// runCheck runs c until it exits 0 or deadline passes (at least once).
func runCheck(ctx context.Context, system string, c HealthCheck, deadline time.Time) hostverb.CheckResult {
	per := time.Duration(c.Timeout) * time.Second
	if per <= 0 {
		per = 10 * time.Second
	}
	start := time.Now()
	r := hostverb.CheckResult{Name: c.Name, Exit: -1}
	for {
		r.Attempts++
		actx, cancel := context.WithTimeout(ctx, min(per, max(time.Until(deadline), time.Second)))
		r.Exit, r.Output = runOnce(actx, system, c.Exec)
		cancel()
		if r.Exit == 0 {
			r.OK = true
			break
		}
		if time.Now().Add(healthRetry).After(deadline) || ctx.Err() != nil {
			break
		}
		select {
		case <-time.After(healthRetry):
		case <-ctx.Done():
		}
	}
	r.Seconds = time.Since(start).Seconds()
	return r
}

// runOnce runs exe in its own process group (killed whole on timeout) with
// the system's PATH, no stdin, and returns its exit status (-1: it did not
// finish) and the end of its output.
func runOnce(ctx context.Context, system, exe string) (int, string) {
	cmd := exec.Command(exe)
	var out tailBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Env = []string{"PATH=" + filepath.Join(system, "sw", "bin") + ":/run/current-system/sw/bin:/usr/bin:/bin", "LANG=C.UTF-8"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return -1, err.Error()
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		switch {
		case err == nil:
			return 0, out.String()
		case errors.As(err, &ee) && ee.ExitCode() >= 0:
			return ee.ExitCode(), out.String()
		default:
			return -1, out.String() + err.Error()
		}
	case <-ctx.Done():
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		return -1, out.String() + "timed out"
	}
}

// tailBuffer keeps the last keepOutput bytes written to it.
type tailBuffer struct{ b []byte }

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > keepOutput {
		t.b = append(t.b[:0], t.b[len(t.b)-keepOutput:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string { return string(t.b) }

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return s
}
