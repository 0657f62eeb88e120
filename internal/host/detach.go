package host

import (
	"context"
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

// Switcher runs <system>/bin/switch-to-configuration <action>, appending its
// output to logPath, and returns its exit status. ErrSwitchBusy means it
// could not start because another switch is running (nothing ran).
type Switcher interface {
	Switch(ctx context.Context, system string, action hostverb.Mode, logPath string, so SwitchOptions) (int, error)
}

// SwitchOptions are the environment switch-to-configuration reads.
type SwitchOptions struct {
	NoCheck           bool // NIXOS_NO_CHECK=1: skip the pre-switch checks (switch inhibitors)
	InstallBootloader bool // NIXOS_INSTALL_BOOTLOADER=1: (re)install the boot loader
}

func (so SwitchOptions) env() []string {
	var env []string
	if so.NoCheck {
		env = append(env, "NIXOS_NO_CHECK=1")
	}
	if so.InstallBootloader {
		env = append(env, "NIXOS_INSTALL_BOOTLOADER=1")
	}
	return env
}

// ErrSwitchBusy: another switch holds switch-to-configuration's unit.
var ErrSwitchBusy = errors.New("another switch-to-configuration is running")

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
// (and, when systemd is PID 1, in the transient unit nixos-rebuild uses,
// nixos-rebuild-switch-to-configuration, as nixos-rebuild runs it: systemd
// then never lets the two switch at once, and the switch survives the
// deployer's own unit), with stdin from /dev/null and output to the log, so
// a hang-up of the SSH session can reach neither it nor its children.
// Cancelling ctx does not stop it: half an activation is worse than a slow
// one.
type Detached struct{}

// Switch implements Switcher.
func (Detached) Switch(ctx context.Context, system string, action hostverb.Mode, logPath string, so SwitchOptions) (int, error) {
	argv := []string{filepath.Join(system, "bin", "switch-to-configuration"), string(action)}
	env := append(activationEnv(), so.env()...)
	if systemdBooted() {
		// A transient service starts with systemd's environment: pass
		// what switch-to-configuration reads, as nixos-rebuild does.
		run := []string{systemdTool("systemd-run"), "--unit=" + RebuildUnit, "--wait", "--pipe", "--collect", "--quiet", "--service-type=exec"}
		for _, kv := range env {
			if !strings.HasPrefix(kv, "PATH=") {
				run = append(run, "-E", kv)
			}
		}
		argv = append(append(run, "--"), argv...)
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
	cmd.Env = env
	var tail tailBuffer
	if systemdBooted() {
		cmd.Stderr = io.MultiWriter(logf, &tail)
	}
	err = cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, nil
	case errors.As(err, &ee) && ee.ExitCode() >= 0:
		if strings.Contains(tail.String(), "Failed to start transient") && strings.Contains(tail.String(), RebuildUnit) {
			return -1, fmt.Errorf("%w (systemd: %s)", ErrSwitchBusy, lastLine(tail.String()))
		}
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
		argv = append([]string{systemdTool("systemd-run"), "--scope", "--collect", "--quiet", "--unit=concordia-deploy-" + id, "--"}, argv...)
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
