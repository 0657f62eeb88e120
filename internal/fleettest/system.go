package fleettest

import (
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// System describes a fake NixOS system: a closure built by real Nix (builder
// /bin/sh) whose bin/switch-to-configuration does to /run/current-system,
// the system profile's boot entries and /run/activation.log what the real
// one does, plus what the variant asks for.
type System struct {
	Label          string        // part of the name; systems differ by label
	Kernel         string        // content of kernel, initrd and kernel-modules; default "6.1.0"
	FailActivation bool          // switch/test: change /run/current-system, then exit 1
	BreakSSH       bool          // switch/test: stop the host's sshd (and never start it)
	Sleep          time.Duration // switch-to-configuration sleeps this long first
	Exit           int           // exit status of a successful activation (100: reboot required)
	// Health are the health checks the system ships, as the NixOS module
	// writes them: etc/concordia/health-checks.json naming scripts inside
	// the system's own closure.
	Health []HealthCheck
	// STCLink, when set, makes bin/switch-to-configuration a symlink to
	// this path instead of the script (a system that would run code from
	// outside its closure).
	STCLink string
}

// HealthCheck is one check a fake system ships: Script is the body of a
// /bin/sh script run on the host (as root, by the health verb).
type HealthCheck struct {
	Name    string
	Script  string
	Timeout int // seconds per attempt; 0: the host's default
}

// The usual variants.
var (
	Good      = System{Label: "good"}
	Failing   = System{Label: "failing", FailActivation: true}
	BreaksSSH = System{Label: "breaks-ssh", BreakSSH: true}
	NewKernel = System{Label: "new-kernel", Kernel: "6.6.0"}
	Slow      = System{Label: "slow", Sleep: 3 * time.Second}
)

const builderScript = `set -e
/bin/mkdir -p "$out/bin" "$out/kernel-modules/lib/modules"
printf '%s\n' "$kernelVersion" > "$out/kernel"
printf 'initrd-%s\n' "$kernelVersion" > "$out/initrd"
printf '%s\n' "$kernelVersion" > "$out/kernel-modules/lib/modules/version"
printf '%s\n' "$label" > "$out/nixos-version"
{ printf '#!/bin/sh\nout=%s\nbreakSSH=%s\n' "$out" "$breakSSH"; printf '%s\n' "$activateBody"; } > "$out/activate"
{ printf '#!/bin/sh\nout=%s\nsleepSecs=%s\nfailActivation=%s\nexitCode=%s\n' "$out" "$sleepSecs" "$failActivation" "$exitCode"; printf '%s\n' "$switchBody"; } > "$out/bin/switch-to-configuration"
/bin/chmod 0555 "$out/activate" "$out/bin/switch-to-configuration"
if [ -n "$stcLink" ]; then /bin/rm -f "$out/bin/switch-to-configuration"; /bin/ln -s "$stcLink" "$out/bin/switch-to-configuration"; fi
if [ -n "$healthJSON" ]; then
  /bin/mkdir -p "$out/health" "$out/etc/concordia"
  i=0
  while [ $i -lt "$healthCount" ]; do
    eval "body=\$health_$i"
    printf '#!/bin/sh\n%s\n' "$body" > "$out/health/check-$i"
    /bin/chmod 0555 "$out/health/check-$i"
    i=$((i+1))
  done
  printf '%s\n' "$healthJSON" | /bin/sed "s|@out@|$out|g" > "$out/etc/concordia/health-checks.json"
fi
`

// activateBody is what stage 2 / switch-to-configuration runs: make this the
// running system and (re)start sshd, or, for the breaks-ssh variant, stop it.
const activateBody = `/bin/ln -sfn "$out" /run/current-system
running() { [ -f /run/sshd.pid ] && kill -0 "$(/bin/cat /run/sshd.pid)" 2>/dev/null; }
if [ "$breakSSH" = 1 ]; then
  if running; then kill "$(/bin/cat /run/sshd.pid)"; fi
  /bin/rm -f /run/sshd.pid
  echo "stopped sshd" >&2
elif ! running; then
  /bin/rm -f /run/sshd.pid
  /usr/sbin/sshd -f /run/fleettest/sshd_config -E /run/fleettest/sshd.log
  i=0
  while [ ! -s /run/sshd.pid ] && [ $i -lt 500 ]; do /bin/sleep 0.01; i=$((i+1)); done
  echo "started sshd" >&2
fi
`

const switchBody = `action="$1"
case "$action" in
switch|boot|test|dry-activate) ;;
*) echo "usage: $0 [switch|boot|test|dry-activate]" >&2; exit 1 ;;
esac
[ "$sleepSecs" = 0 ] || /bin/sleep "$sleepSecs"
echo "$action $out $(/bin/date +%s.%N)" >> /run/activation.log
if [ "$action" = dry-activate ]; then echo "would activate $out"; exit 0; fi
if [ "$action" = switch ] || [ "$action" = boot ]; then
  # Like systemd-boot-builder: an entry per generation, stale ones removed,
  # the default is the profile's current generation.
  /bin/mkdir -p /boot/loader/entries
  for e in /boot/loader/entries/nixos-generation-*.conf; do
    [ -e "$e" ] || continue
    k=${e##*nixos-generation-}; k=${k%.conf}
    [ -L "/nix/var/nix/profiles/system-$k-link" ] || /bin/rm -f "$e"
  done
  for l in /nix/var/nix/profiles/system-*-link; do
    [ -L "$l" ] || continue
    k=${l##*/system-}; k=${k%-link}
    t=$(/usr/bin/readlink "$l")
    printf 'title NixOS\nversion Generation %s\nlinux %s/kernel\ninitrd %s/initrd\noptions init=%s/init\n' "$k" "$t" "$t" "$t" > "/boot/loader/entries/nixos-generation-$k.conf"
  done
  gen=$(/usr/bin/readlink /nix/var/nix/profiles/system); gen=${gen#system-}; gen=${gen%-link}
  printf 'default nixos-generation-%s.conf\ntimeout 3\n' "$gen" > /boot/loader/loader.conf.tmp
  /bin/mv /boot/loader/loader.conf.tmp /boot/loader/loader.conf
fi
if [ "$action" = switch ] || [ "$action" = test ]; then
  if [ "$failActivation" = 1 ]; then
    /bin/ln -sfn "$out" /run/current-system
    echo "error: the following units failed: broken.service" >&2
    exit 1
  fi
  "$out/activate"
fi
exit "$exitCode"
`

// nixString quotes s as a Nix string literal.
func nixString(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, `${`, `\${`)
	return `"` + r.Replace(s) + `"`
}

func boolStr(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// expr is the Nix expression of s (salt makes the store path fresh).
func (s System) expr(salt string) string {
	kernel := s.Kernel
	if kernel == "" {
		kernel = "6.1.0"
	}
	label := s.Label
	if label == "" {
		label = "system"
	}
	attrs := map[string]string{
		"name":           "nixos-system-fleet-" + salt + "-" + label,
		"builder":        "/bin/sh",
		"kernelVersion":  kernel,
		"label":          label,
		"breakSSH":       boolStr(s.BreakSSH),
		"failActivation": boolStr(s.FailActivation),
		"sleepSecs":      strconv.FormatFloat(s.Sleep.Seconds(), 'f', -1, 64),
		"exitCode":       strconv.Itoa(s.Exit),
		"activateBody":   activateBody,
		"switchBody":     switchBody,
	}
	keys := []string{"name", "builder", "kernelVersion", "label", "breakSSH", "failActivation", "sleepSecs", "exitCode", "activateBody", "switchBody"}
	if s.STCLink != "" {
		attrs["stcLink"] = s.STCLink
		keys = append(keys, "stcLink")
	}
	if len(s.Health) > 0 {
		type check struct {
			Name    string `json:"name"`
			Exec    string `json:"exec"`
			Timeout int    `json:"timeout,omitempty"`
		}
		var checks []check
		for i, c := range s.Health {
			k := fmt.Sprintf("health_%d", i)
			attrs[k] = c.Script
			keys = append(keys, k)
			checks = append(checks, check{Name: c.Name, Exec: fmt.Sprintf("@out@/health/check-%d", i), Timeout: c.Timeout})
		}
		j, _ := json.Marshal(map[string]any{"checks": checks})
		attrs["healthJSON"], attrs["healthCount"] = string(j), strconv.Itoa(len(s.Health))
		keys = append(keys, "healthJSON", "healthCount")
	}
	var b strings.Builder
	b.WriteString("derivation {\n  system = builtins.currentSystem;\n  args = [ \"-c\" " + nixString(builderScript) + " ];\n")
	for _, k := range keys {
		fmt.Fprintf(&b, "  %s = %s;\n", k, nixString(attrs[k]))
	}
	b.WriteString("}\n")
	return b.String()
}

// Build builds s in the machine's store (the "CI builder") and returns its
// store path. It is not in the cache until published.
func (f *Fleet) Build(t testing.TB, s System) string {
	t.Helper()
	out, err := command(f.nixEnv, "nix-build", "--no-out-link", "-E", s.expr(f.salt)).Output()
	if err != nil {
		var stderr string
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("build system %s: %v %s", s.Label, err, stderr)
	}
	return strings.TrimSpace(string(out))
}

// BuildOn builds s inside host h, as root there: a locally built system,
// valid in h's store with no signature at all.
func (f *Fleet) BuildOn(t testing.TB, h *Host, s System) string {
	t.Helper()
	out, err := f.Exec(h, "nix-build", "--no-out-link", "-E", s.expr(f.salt))
	if err != nil {
		t.Fatalf("build system %s on %s: %v %s", s.Label, h.Name, err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	return lines[len(lines)-1]
}

// System builds s and publishes it to the fleet's cache.
func (f *Fleet) System(t testing.TB, s System) string {
	t.Helper()
	p := f.Build(t, s)
	f.Publish(t, p)
	return p
}
