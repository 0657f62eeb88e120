package fleettest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The simulated hosts have no systemd as PID 1, but the deployer talks to
// systemd on a real NixOS host: it lists failed units and asks whether
// nixos-rebuild's transient unit runs (systemctl), and it runs
// switch-to-configuration and its own worker in transient units
// (systemd-run), and it reboots through a transient timer running
// systemctl reboot. fakeSystemctl and fakeSystemdRun do what those commands
// do, over a unit table in /run/fleettest/units (one file per unit:
// "<state> <owner>"), and every fake system links them as sw/bin/systemctl
// and sw/bin/systemd-run, where the deployer finds the real ones on NixOS.
// /run/systemd/system exists, as on a systemd-booted host.

// unitsDir is the simulated unit table inside a host.
const unitsDir = "/run/fleettest/units"

const fakeSystemctl = `#!/bin/sh
# systemctl over ` + unitsDir + ` (fleettest): list-units, is-active, and
# reboot, which asks the fleet (the test process) to reboot this host.
state() { f="` + unitsDir + `/$1"; [ -e "$f" ] && /usr/bin/cut -d' ' -f1 "$f" || echo inactive; }
cmd=
q=
for a in "$@"; do
  case "$a" in
  --quiet|-q) q=1 ;;
  --*) ;;
  *) if [ -z "$cmd" ]; then cmd=$a; else set -- "$a"; break; fi ;;
  esac
done
case "$cmd" in
list-units)
  for f in ` + unitsDir + `/*; do
    [ -e "$f" ] || continue
    u=${f##*/}
    [ "$(state "$u")" = failed ] && echo "$u loaded failed failed simulated unit"
  done
  exit 0 ;;
is-active)
  u=$1
  case "$u" in *.*) ;; *) u=$u.service ;; esac
  s=$(state "$u")
  [ -n "$q" ] || echo "$s"
  [ "$s" = active ] || [ "$s" = activating ] || [ "$s" = reloading ] ;;
reboot)
  # Returns at once, as systemctl reboot queues the job; the fleet reboots
  # the host a moment later.
  /bin/date +%s.%N > ` + rebootRequest + `.tmp && /bin/mv ` + rebootRequest + `.tmp ` + rebootRequest + ` ;;
*) echo "fleettest systemctl: $cmd is not simulated" >&2; exit 1 ;;
esac
`

const fakeSystemdRun = `#!/bin/sh
# systemd-run (fleettest): a transient unit of a given name is a mutex,
# a service gets a clean environment (only -E variables and PATH), a scope
# keeps the caller's; both are waited for here.
unit= scope= envs= onactive=
while [ $# -gt 0 ]; do
  case "$1" in
  --unit=*) unit=${1#--unit=} ;;
  --scope) scope=1 ;;
  --wait|--pipe|--collect|--quiet|--no-ask-password|--service-type=*) ;;
  -E|--setenv) shift
    case "$1" in *=*) envs="$envs $1" ;; *) v=$(printenv "$1") && envs="$envs $1=$v" ;; esac ;;
  --setenv=*) envs="$envs ${1#--setenv=}" ;;
  --on-active=*) onactive=${1#--on-active=} ;;
  --) shift; break ;;
  -*) echo "fleettest systemd-run: $1 is not simulated" >&2; exit 1 ;;
  *) break ;;
  esac
  shift
done
if [ -n "$onactive" ]; then
  # A transient timer: the service runs later, detached from the caller
  # (whose session may end first), with a service's clean environment.
  secs=${onactive%s}
  # shellcheck disable=SC2086 # the -E assignments, one word each
  /usr/bin/setsid /bin/sh -c 'sleep "$1"; shift; exec "$@"' timer "$secs" \
    /usr/bin/env -i PATH=/run/current-system/sw/bin:/usr/sbin:/usr/bin:/sbin:/bin $envs "$@" </dev/null >/dev/null 2>&1 &
  exit 0
fi
kind=service; [ -n "$scope" ] && kind=scope
[ -n "$unit" ] || unit=run-$$
case "$unit" in *.service|*.scope) ;; *) unit=$unit.$kind ;; esac
mkdir -p ` + unitsDir + `
f=` + unitsDir + `/$unit
# The table is shared by every caller: take the decision under a lock.
exec 8>>` + unitsDir + `/.lock
/usr/bin/flock 8
if [ -e "$f" ] && [ "$(/usr/bin/cut -d' ' -f1 "$f")" = active ]; then
  echo "Failed to start transient $kind unit: Unit $unit was already loaded or has a fragment file." >&2
  exit 1
fi
echo "active transient" > "$f"
exec 8>&-
if [ -n "$scope" ]; then
  "$@"
else
  # shellcheck disable=SC2086 # the -E assignments, one word each
  /usr/bin/env -i PATH=/run/current-system/sw/bin:/usr/sbin:/usr/bin:/sbin:/bin $envs "$@"
fi
rc=$?
rm -f "$f"
exit $rc
`

// writeFakeSystemd puts the fake systemctl and systemd-run in dir.
func writeFakeSystemd(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for name, body := range map[string]string{"systemctl": fakeSystemctl, "systemd-run": fakeSystemdRun} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o755); err != nil {
			return err
		}
	}
	return nil
}

// FailUnit marks unit failed on h, as a service that crash-loops for weeks
// independently of any deploy: it stays failed through every switch (ng
// resets failed units, and this one fails again).
func (f *Fleet) FailUnit(t testing.TB, h *Host, unit string) {
	t.Helper()
	f.MustExec(t, h, "/bin/sh", "-c", fmt.Sprintf("mkdir -p %s && echo 'failed host' > %s/%s", unitsDir, unitsDir, unit))
}

// ClearUnit makes unit on h inactive (fixed by hand).
func (f *Fleet) ClearUnit(t testing.TB, h *Host, unit string) {
	t.Helper()
	f.MustExec(t, h, "rm", "-f", unitsDir+"/"+unit)
}

// FailedUnits lists h's failed units, sorted.
func (f *Fleet) FailedUnits(t testing.TB, h *Host) []string {
	t.Helper()
	out := f.MustExec(t, h, filepath.Join(f.Dir, "fakebin", "systemctl"), "list-units", "--state=failed", "--plain", "--no-legend")
	var units []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if fs := strings.Fields(l); len(fs) > 0 {
			units = append(units, fs[0])
		}
	}
	return units
}

// StartUnit marks unit active on h until the returned function is called:
// e.g. nixos-rebuild's nixos-rebuild-switch-to-configuration.service in
// the middle of a switch.
func (f *Fleet) StartUnit(t testing.TB, h *Host, unit string) (stop func()) {
	t.Helper()
	f.MustExec(t, h, "/bin/sh", "-c", fmt.Sprintf("mkdir -p %s && echo 'active transient' > %s/%s", unitsDir, unitsDir, unit))
	return func() { f.Exec(h, "rm", "-f", unitsDir+"/"+unit) }
}

// HoldSwitchLock takes switch-to-configuration-ng's lock on h, as another
// switch in progress does, until the returned function is called.
func (f *Fleet) HoldSwitchLock(t testing.TB, h *Host) (release func()) {
	t.Helper()
	f.MustExec(t, h, "/bin/sh", "-c", `mkdir -p /run/nixos
setsid /usr/bin/flock /run/nixos/switch-to-configuration.lock sleep 600 </dev/null >/dev/null 2>&1 &
echo $! > /run/fleettest/switch-lock-holder.pid
i=0; while /usr/bin/flock -n /run/nixos/switch-to-configuration.lock true; do sleep 0.01; i=$((i+1)); [ $i -lt 500 ] || exit 1; done`)
	return func() {
		// The holder leads its own process group: flock and its sleep,
		// which inherited the locked descriptor.
		f.Exec(h, "/bin/sh", "-c", `kill -- -"$(cat /run/fleettest/switch-lock-holder.pid)"`)
	}
}
