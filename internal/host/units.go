package host

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/bos55/concordia/internal/hostverb"
)

// Units is what the host side asks systemd: which units are failed (to
// tell a deploy's failures from those a host already had) and whether a
// unit runs (another tool mid-switch). Tests fake it.
type Units interface {
	Failed(ctx context.Context) ([]string, error)
	Active(ctx context.Context, unit string) (bool, error)
}

// Systemctl asks the running systemd through systemctl.
type Systemctl struct{}

// systemdTool finds a systemd program: the running system's own first (as
// on NixOS, where sudo or systemd may have reset PATH), then PATH.
func systemdTool(name string) string {
	p := filepath.Join("/run/current-system/sw/bin", name)
	if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
		return p
	}
	return name
}

// Failed implements Units: `systemctl list-units --state=failed`.
func (Systemctl) Failed(ctx context.Context) ([]string, error) {
	cmd := exec.CommandContext(ctx, systemdTool("systemctl"), "list-units", "--state=failed", "--plain", "--no-legend", "--no-pager")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("systemctl list-units: %w: %s", err, strings.TrimSpace(errb.String()))
	}
	var units []string
	for _, l := range strings.Split(out.String(), "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			units = append(units, f[0])
		}
	}
	slices.Sort(units)
	return slices.Compact(units), nil
}

// Active implements Units: `systemctl is-active --quiet UNIT`.
func (Systemctl) Active(ctx context.Context, unit string) (bool, error) {
	err := exec.CommandContext(ctx, systemdTool("systemctl"), "is-active", "--quiet", unit).Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return true, nil
	case errors.As(err, &ee):
		return false, nil // inactive, failed or unknown
	default:
		return false, fmt.Errorf("systemctl is-active %s: %w", unit, err)
	}
}

// RebuildUnit is the transient unit nixos-rebuild runs
// switch-to-configuration in. Concordia runs it under the same name, so
// systemd itself keeps the two (and system.autoUpgrade, which runs
// nixos-rebuild) from switching at once.
const RebuildUnit = "nixos-rebuild-switch-to-configuration"

// ngLock is switch-to-configuration-ng's lock in its run directory.
const ngLock = "switch-to-configuration.lock"

// switchBusy refuses, before anything changes, when another switch is in
// progress: switch-to-configuration-ng's lock is held (a switch by hand,
// comin, another deployer) or nixos-rebuild's transient unit runs.
func switchBusy(ctx context.Context, o Options) error {
	if f, err := os.OpenFile(filepath.Join(o.NixOSRunDir, ngLock), os.O_RDONLY, 0); err == nil {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		}
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return fmt.Errorf("%w: another switch-to-configuration holds its lock %s (nixos-rebuild, system.autoUpgrade, comin or a switch by hand); nothing changed",
				hostverb.ErrLocked, filepath.Join(o.NixOSRunDir, ngLock))
		}
	}
	active, err := o.Units.Active(ctx, RebuildUnit+".service")
	if err != nil {
		o.Logger.Warn("cannot tell whether nixos-rebuild is switching", "err", err)
		return nil
	}
	if active {
		return fmt.Errorf("%w: nixos-rebuild is switching (unit %s.service is active); nothing changed", hostverb.ErrLocked, RebuildUnit)
	}
	return nil
}

// minus returns the elements of a not in b (both sorted or not).
func minus(a, b []string) []string {
	var out []string
	for _, x := range a {
		if !slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}
