package fleettest

import (
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// System describes a fake NixOS system: a closure built by real Nix (builder
// /bin/sh) whose bin/switch-to-configuration behaves as
// switch-to-configuration-ng does, in its order: the lock
// /run/nixos/switch-to-configuration.lock taken non-blocking (exit 11 when
// another switch holds it), pre-switch checks (switch inhibitors, skipped
// with NIXOS_NO_CHECK=1: exit 1 "Pre-switch checks failed"), the boot
// loader for switch and boot, exit 100 before activating anything when the
// init interface version changes, the activation, and exit 4 when any unit
// is failed afterwards (a unit failed before the switch included). It does
// to /run/current-system, the boot entries and /run/activation.log what
// the real one does.
type System struct {
	Label string // part of the name; systems differ by label
	// Kernel is the kernel version; default "6.1.0". As on NixOS, kernel,
	// initrd and kernel-modules are symlinks into store paths of their
	// own (linux-<Kernel>/bzImage, initrd-linux-<Kernel>/initrd,
	// linux-<Kernel>-modules), so systems of a fleet with the same Kernel
	// share the kernel's store path.
	Kernel string
	// Initrd is the initrd's content; default "initrd-<Kernel>". Another
	// Initrd with the same Kernel (another initrd store path of the same
	// name) is what most nixpkgs bumps are.
	Initrd string
	// InitInterface is init-interface-version; default "systemd".
	InitInterface string
	// Inhibitors is switch-inhibitors (system.switch.inhibitors): a switch
	// or test into a system whose value differs from the running one's for
	// a key both have is refused.
	Inhibitors map[string]string
	// FailUnits are units this system's activation leaves failed.
	FailUnits      []string
	FailActivation bool          // the activation script fails (exit 2)
	BreakSSH       bool          // switch/test: stop the host's sshd (and never start it)
	Sleep          time.Duration // switch-to-configuration sleeps this long, holding its lock
	// Health are the health checks the system ships, as the NixOS module
	// writes them: etc/concordia/health-checks.json naming scripts inside
	// the system's own closure.
	Health []HealthCheck
	// STCLink, when set, makes bin/switch-to-configuration a symlink to
	// this path instead of the script (a system that would run code from
	// outside its closure).
	STCLink string
	// Packages are other store paths the system refers to, each named
	// exactly as given, with its version as nixpkgs names them
	// ("openssl-3.0.14", "python3.11-requests-2.31.0"), linked from
	// sw/share: a real system's closure is mostly such paths, most of them
	// from cache.nixos.org. Built from the name (and the fleet) alone, so
	// two systems of a fleet with a package of the same name share it.
	Packages []string
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
	Failing   = System{Label: "failing", FailUnits: []string{"broken.service"}}
	BreaksSSH = System{Label: "breaks-ssh", BreakSSH: true}
	NewKernel = System{Label: "new-kernel", Kernel: "6.6.0"}
	Slow      = System{Label: "slow", Sleep: 3 * time.Second}
)

const builderScript = `set -e
/bin/mkdir -p "$out/bin" "$out/sw/bin"
/bin/ln -s "$kernelPkg/bzImage" "$out/kernel"
/bin/ln -s "$initrdPkg/initrd" "$out/initrd"
/bin/ln -s "$modulesPkg" "$out/kernel-modules"
printf '%s\n' "$label" > "$out/nixos-version"
printf '%s' "$initInterface" > "$out/init-interface-version"
printf '%s' "$inhibitors" > "$out/switch-inhibitors"
/bin/ln -s "$fakeBin/systemctl" "$out/sw/bin/systemctl"
/bin/ln -s "$fakeBin/systemd-run" "$out/sw/bin/systemd-run"
{ printf '#!/bin/sh\nout=%s\nbreakSSH=%s\nfailActivation=%s\nfailUnits="%s"\n' "$out" "$breakSSH" "$failActivation" "$failUnits"; printf '%s\n' "$activateBody"; } > "$out/activate"
{ printf '#!/bin/sh\nout=%s\nsleepSecs=%s\n' "$out" "$sleepSecs"; printf '%s\n' "$switchBody"; } > "$out/bin/switch-to-configuration"
/bin/chmod 0555 "$out/activate" "$out/bin/switch-to-configuration"
for p in $packages; do /bin/mkdir -p "$out/sw/share"; n=${p##*/}; /bin/ln -s "$p" "$out/sw/share/${n#*-}"; done
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
// running system, (re)start sshd (or, for the breaks-ssh variant, stop
// it), and restart the system's units: units the previous system left
// failed are restarted (cleared), this system's FailUnits fail. Units
// failed by the host itself (FailUnit) stay failed. It exits 2 when
// failActivation says so, as a failing activation script does.
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
/bin/mkdir -p ` + unitsDir + `
for f in ` + unitsDir + `/*; do
  [ -e "$f" ] || continue
  [ "$(/usr/bin/cut -d' ' -f2 "$f")" = system ] && /bin/rm -f "$f"
done
for u in $failUnits; do echo "failed system" > "` + unitsDir + `/$u"; done
[ "$failActivation" = 1 ] && { echo "Failed to run activate script" >&2; exit 2; }
exit 0
`

// switchBody is switch-to-configuration-ng's order of things.
const switchBody = `action="$1"
case "$action" in
switch|boot|test|dry-activate|check) ;;
*) echo "usage: $0 [check|switch|boot|test|dry-activate]" >&2; exit 1 ;;
esac
/bin/mkdir -p /run/nixos
/bin/chmod 0755 /run/nixos
exec 9>>/run/nixos/switch-to-configuration.lock
if ! /usr/bin/flock -n 9; then echo "Could not acquire lock" >&2; exit 11; fi
[ "$sleepSecs" = 0 ] || /bin/sleep "$sleepSecs"
# Pre-switch checks: the switch inhibitors (keys both systems have, with
# another value) refuse a live switch, unless NIXOS_NO_CHECK=1.
inhibitors() { /bin/sed -n 's/^  "\([^"]*\)": "\([^"]*\)",\{0,1\}$/\1 \2/p' "$1" 2>/dev/null; }
if [ "$NIXOS_NO_CHECK" != 1 ] && [ "$action" != boot ] && [ "$action" != dry-activate ]; then
  diff=$(inhibitors /run/current-system/switch-inhibitors | while read -r k old; do
    new=$(inhibitors "$out/switch-inhibitors" | while read -r k2 v2; do [ "$k2" = "$k" ] && echo "$v2"; done)
    [ -n "$new" ] && [ "$new" != "$old" ] && echo "$k : $old -> $new"
  done)
  if [ -n "$diff" ]; then
    echo "There are changes to critical components of the system:" >&2
    echo >&2; echo "$diff" >&2; echo >&2
    echo "Switching into this system is not recommended." >&2
    echo "If you really want to switch into this configuration directly, then" >&2
    echo "you can set NIXOS_NO_CHECK=1 to ignore pre-switch checks." >&2
    echo "Pre-switch check 'switchInhibitors' failed" >&2
    echo "Pre-switch checks failed" >&2
    exit 1
  fi
fi
[ "$action" = check ] && exit 0
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
[ "$action" = boot ] && exit 0
if [ "$(/bin/cat /run/current-system/init-interface-version 2>/dev/null)" != "$(/bin/cat "$out/init-interface-version")" ]; then
  echo "Warning: the new NixOS configuration has an 'init' that is" >&2
  echo "incompatible with the current configuration.  The new configuration" >&2
  echo "won't take effect until you reboot the system." >&2
  exit 100
fi
echo "activating the configuration..." >&2
"$out/activate"
rc=$?
failed=$(for f in ` + unitsDir + `/*; do [ -e "$f" ] && [ "$(/usr/bin/cut -d' ' -f1 "$f")" = failed ] && echo "${f##*/}"; done | /usr/bin/tr '\n' ' ')
if [ -n "$failed" ]; then
  echo "warning: the following units failed: $failed" >&2
  exit 4
fi
exit $rc
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

// expr is the Nix expression of s (salt makes the store path fresh;
// fakeBin is where the fleet's fake systemctl and systemd-run are).
func (s System) expr(salt, fakeBin string) string {
	kernel := s.Kernel
	if kernel == "" {
		kernel = "6.1.0"
	}
	initrd := s.Initrd
	if initrd == "" {
		initrd = "initrd-" + kernel
	}
	initIf := s.InitInterface
	if initIf == "" {
		initIf = "systemd"
	}
	label := s.Label
	if label == "" {
		label = "system"
	}
	attrs := map[string]string{
		"name":           "nixos-system-fleet-" + salt + "-" + label,
		"builder":        "/bin/sh",
		"initInterface":  initIf,
		"inhibitors":     inhibitorsJSON(s.Inhibitors),
		"failUnits":      strings.Join(s.FailUnits, " "),
		"fakeBin":        fakeBin,
		"label":          label,
		"breakSSH":       boolStr(s.BreakSSH),
		"failActivation": boolStr(s.FailActivation),
		"sleepSecs":      strconv.FormatFloat(s.Sleep.Seconds(), 'f', -1, 64),
		"activateBody":   activateBody,
		"switchBody":     switchBody,
	}
	keys := []string{"name", "builder", "initInterface", "inhibitors", "failUnits", "fakeBin",
		"label", "breakSSH", "failActivation", "sleepSecs", "activateBody", "switchBody"}
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
	kernelPkg := subDerivation("linux-"+kernel, salt, kernelScript, map[string]string{"version": kernel})
	fmt.Fprintf(&b, "  kernelPkg = %s;\n", kernelPkg)
	fmt.Fprintf(&b, "  modulesPkg = %s;\n", subDerivation("linux-"+kernel+"-modules", salt, modulesScript,
		map[string]string{"version": kernel}, "kernel", kernelPkg))
	fmt.Fprintf(&b, "  initrdPkg = %s;\n", subDerivation("initrd-linux-"+kernel, salt, initrdScript, map[string]string{"content": initrd}))
	b.WriteString("  packages = [")
	for _, name := range s.Packages {
		b.WriteString(" " + subDerivation(name, salt, `echo "$name" > "$out"`, nil))
	}
	b.WriteString(" ];\n}\n")
	return b.String()
}

// The boot parts of a system, laid out as nixpkgs lays them out: the
// kernel package's bzImage (and its modules), the modules tree
// aggregateModules builds (named "<kernel name>-modules", linking into the
// kernel's lib/modules), and the initrd makeInitrd builds (named
// "initrd-<kernel name>", no references). The toplevel links to them as
// nixos/modules/system/boot/kernel.nix's systemBuilderCommands do:
// kernel -> ${kernel}/bzImage (system.boot.loader.kernelFile), initrd ->
// ${initialRamdisk}/initrd (initrdFile), kernel-modules ->
// ${system.modulesTree}; the names from kernel.nix's modulesTree apply
// and stage-1.nix's initialRamdisk.
const (
	kernelScript  = `/bin/mkdir -p "$out/lib/modules/$version/kernel"; printf '%s\n' "$version" > "$out/bzImage"; printf 'fake module\n' > "$out/lib/modules/$version/kernel/fake.ko"`
	modulesScript = `/bin/mkdir -p "$out/lib/modules/$version"; /bin/ln -s "$kernel/lib/modules/$version/kernel" "$out/lib/modules/$version/kernel"; printf 'kernel/fake.ko:\n' > "$out/lib/modules/$version/modules.dep"`
	initrdScript  = `/bin/mkdir "$out"; printf '%s\n' "$content" > "$out/initrd"`
)

// subDerivation is the Nix expression of a store path named name (exactly:
// the fleet's salt is an attribute, so each fleet gets its own path under
// the real-looking name) built by the /bin/sh script; attrs are more
// string attributes, refs pairs of attribute name and Nix expression.
func subDerivation(name, salt, script string, attrs map[string]string, refs ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "(derivation { system = builtins.currentSystem; name = %s; builder = \"/bin/sh\"; fleet = %s; args = [ \"-c\" %s ];",
		nixString(name), nixString(salt), nixString(script))
	keys := make([]string, 0, len(attrs))
	for k := range attrs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, " %s = %s;", k, nixString(attrs[k]))
	}
	for i := 0; i+1 < len(refs); i += 2 {
		fmt.Fprintf(&b, " %s = %s;", refs[i], refs[i+1])
	}
	b.WriteString(" })")
	return b.String()
}

// inhibitorsJSON renders switch-inhibitors as nixpkgs writes it (an
// object of strings), one key per line so the fake switch can read it
// without jq.
func inhibitorsJSON(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("{\n")
	for i, k := range keys {
		kj, _ := json.Marshal(k)
		vj, _ := json.Marshal(m[k])
		b.WriteString("  " + string(kj) + ": " + string(vj))
		if i < len(keys)-1 {
			b.WriteString(",")
		}
		b.WriteString("\n")
	}
	b.WriteString("}\n")
	return b.String()
}

// Build builds s in the machine's store (the "CI builder") and returns its
// store path. It is not in the cache until published.
func (f *Fleet) Build(t testing.TB, s System) string {
	t.Helper()
	out, err := command(f.nixEnv, "nix-build", "--no-out-link", "-E", s.expr(f.salt, f.fakeBin())).Output()
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
	out, err := f.Exec(h, "nix-build", "--no-out-link", "-E", s.expr(f.salt, f.fakeBin()))
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
