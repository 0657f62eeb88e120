package host

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/bos55/concordia/internal/hostverb"
)

// Switcher runs <system>/bin/switch-to-configuration <action>, appending its
// output to logPath, and returns its exit status.
type Switcher interface {
	Switch(ctx context.Context, system string, action hostverb.Mode, logPath string) (int, error)
}

// Spawner starts the deploy's worker (Work) so that it outlives the verb that
// started it and the SSH session around it. lock must stay open in the
// worker until it returns: it is the host lock. The returned pid (0 if none)
// lets the caller notice a worker that died without a word.
type Spawner interface {
	Spawn(ctx context.Context, o Options, id string, lock *os.File) (pid int, err error)
}

// systemdBooted reports whether systemd is PID 1 (sd_booted's test).
func systemdBooted() bool { return isDir("/run/systemd/system") }

// Detached runs switch-to-configuration in its own session and process group
// (and, when systemd is PID 1, in its own transient unit), with stdin from
// /dev/null and output to the log, so a hang-up of the SSH session can
// reach neither it nor its children. Cancelling ctx does not stop it:
// half an activation is worse than a slow one.
type Detached struct{}

// Switch implements Switcher.
func (Detached) Switch(ctx context.Context, system string, action hostverb.Mode, logPath string) (int, error) {
	argv := []string{filepath.Join(system, "bin", "switch-to-configuration"), string(action)}
	if systemdBooted() {
		argv = append([]string{"systemd-run", "--unit=concordia-switch-" + strconv.FormatInt(time.Now().UnixNano(), 36),
			"--wait", "--pipe", "--collect", "--quiet", "--service-type=exec", "--"}, argv...)
	}
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return -1, fmt.Errorf("open activation log: %w", err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "=== %s %s %s\n", time.Now().UTC().Format(time.RFC3339Nano), action, system)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin = nil
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.Env = activationEnv()
	err = cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, nil
	case errors.As(err, &ee) && ee.ExitCode() >= 0:
		return ee.ExitCode(), nil
	default:
		return -1, fmt.Errorf("run %s: %w", argv[0], err)
	}
}

// activationEnv is a small fixed environment: sudo's is already reset, and
// nothing from the SSH session should leak into the system's activation.
func activationEnv() []string {
	env := []string{"PATH=/run/current-system/sw/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"}
	if v := os.Getenv("LOCALE_ARCHIVE"); v != "" {
		env = append(env, "LOCALE_ARCHIVE="+v)
	}
	return env
}

// Reexec starts the running binary's hidden verb
// `watchdog --id ID --state-dir DIR --lock-fd 3` in a new session with the
// lock as fd 3 (under `systemd-run --scope` when systemd is PID 1, so the
// worker leaves the SSH session's scope and logind cannot kill it).
type Reexec struct {
	Exe string // default: os.Executable()
}

// Spawn implements Spawner.
func (r Reexec) Spawn(ctx context.Context, o Options, id string, lock *os.File) (int, error) {
	exe := r.Exe
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return 0, fmt.Errorf("find own binary: %w", err)
		}
	}
	argv := []string{exe, "watchdog", "--id", id, "--state-dir", o.StateDir, "--lock-fd", "3"}
	if systemdBooted() {
		argv = append([]string{"systemd-run", "--scope", "--collect", "--quiet", "--unit=concordia-deploy-" + id, "--"}, argv...)
	}
	logf, err := os.OpenFile(LogPath(o, id), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return 0, fmt.Errorf("open deploy log: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{lock}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.Env = activationEnv()
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start watchdog: %w", err)
	}
	go cmd.Wait() // reap it if we are still around when it ends
	return cmd.Process.Pid, nil
}

// alive reports whether pid still runs (0 means "not tracked": alive).
func alive(pid int) bool {
	if pid <= 0 {
		return true
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
