package gate_test

// The deploy key in hostile hands, on the simulated fleet: every command
// goes through the real sshd, the forced command (deployer gate), the root
// agent and the real store. Each attempt must be refused with a clear
// message and leave the host exactly as it was: no payload ran, profile,
// running system, host lock, state directory, activation log and store as
// before.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/fleettest"
	"github.com/bos55/concordia/internal/hostverb"
)

type attempt struct {
	name  string
	words []string // the remote command, as ssh sends it
	stdin string
	opts  []string // extra ssh options
	// want is a substring of the refusal (stdout or stderr); code its exit
	// code (126: refused by the gate, 4: invalid, refused by the host).
	want string
	code int
}

func TestRedTeamDeployKey(t *testing.T) {
	if testing.Short() {
		t.Skip("simulated fleet")
	}
	f := fleettest.New(t, 1, fleettest.Options{})
	h := f.Hosts[0]
	dep := f.Deployer

	// The attacker's workshop: a payload that proves it ran by leaving a
	// marker, world-readable so any user (and root) could run it.
	lab, err := os.MkdirTemp("", "redteam-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(lab) })
	os.Chmod(lab, 0o777)
	marker := filepath.Join(lab, "pwned")
	payload := filepath.Join(lab, "payload.sh")
	os.WriteFile(payload, []byte("#!/bin/sh\necho \"$0 $*\" >> "+marker+"\nid >> "+marker+"\n"), 0o755)
	nodes := fmt.Sprintf(`{"nodes":{"x":{"hostname":"127.0.0.1","sshOpts":["-o","ProxyCommand=%s %%h"],"profiles":{"system":{"path":%q}}}}}`, payload, f.Initial)
	fakeDeployer := filepath.Join(lab, "bin", "deployer")
	os.MkdirAll(filepath.Dir(fakeDeployer), 0o755)
	os.WriteFile(fakeDeployer, []byte("#!/bin/sh\nexec "+payload+" fake-deployer \"$@\"\n"), 0o755)

	// Systems the deploy key must not be able to activate.
	evilDir := filepath.Join(lab, "evil-system")
	os.MkdirAll(filepath.Join(evilDir, "bin"), 0o755)
	os.WriteFile(filepath.Join(evilDir, "bin", "switch-to-configuration"), []byte("#!/bin/sh\nexec "+payload+" evil-stc \"$@\"\n"), 0o755)
	os.WriteFile(filepath.Join(evilDir, "nixos-version"), []byte("evil\n"), 0o644)
	os.Symlink(evilDir, filepath.Join(lab, "evil-link"))
	addAs := func(p string) string {
		out, err := f.ExecAs(h, fleettest.OtherUser, "nix-store", "--add", p)
		if err != nil {
			t.Fatalf("another local user's nix-store --add %s: %v %s", p, err, out)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		return lines[len(lines)-1]
	}
	caSystem := addAs(evilDir)                           // content-addressed, added by any local user
	linkSystem := addAs(filepath.Join(lab, "evil-link")) // a store path that is a symlink to anywhere
	unsigned := f.BuildOn(t, h, fleettest.System{Label: "local-unsigned"})
	foreign := f.BuildOn(t, h, fleettest.System{Label: "foreign-signed"})
	keyDir := t.TempDir()
	f.MustExec(t, h, "nix-store", "--generate-binary-cache-key", "attacker-1", filepath.Join(keyDir, "sec"), filepath.Join(keyDir, "pub"))
	f.MustExec(t, h, "nix", "--extra-experimental-features", "nix-command", "store", "sign", "--key-file", filepath.Join(keyDir, "sec"), foreign)
	// Signed by the cache (the upload token can get anything signed), but
	// its switch-to-configuration points outside the store.
	stray := f.System(t, fleettest.System{Label: "stray-stc", STCLink: payload})
	if r := ssh(t, f, h, attempt{words: []string{"deployer", "fetch", stray}}); r.code != 0 {
		t.Fatalf("setup: fetch %s: %d %s", stray, r.code, r.out)
	}
	notInDB := "/nix/store/0c6kzph7l0dcbfmjap64f0czdafn3b7x-nixos-system-not-in-db"
	f.MustExec(t, h, "sh", "-c", "mkdir -p "+notInDB+"/bin && cp "+filepath.Join(evilDir, "bin", "switch-to-configuration")+" "+notInDB+"/bin/ && echo x > "+notInDB+"/nixos-version")

	act := func(extra ...string) []string {
		return append([]string{"deployer", "activate", "--mode", "switch", "--id", "rt"}, extra...)
	}
	long := strings.Repeat("a", 5000)
	attempts := []attempt{
		// The four found by hand.
		{name: "status --file with ProxyCommand nodes, as root via sudo form", words: []string{"sudo", "-n", dep, "status", "--file", "/dev/stdin"}, stdin: nodes, want: "status takes no flag --file", code: 126},
		{name: "status --file, no sudo", words: []string{"deployer", "status", "--file", "/dev/stdin"}, stdin: nodes, want: "--file", code: 126},
		{name: "status --local --local=false --file", words: []string{"deployer", "status", "--local", "--local=false", "--file", "/dev/stdin"}, stdin: nodes, want: "--local given twice", code: 126},
		{name: "rollback without --local, nodes file", words: []string{"sudo", "-n", dep, "rollback", "--file", "/dev/stdin", "x"}, stdin: nodes, want: "rollback takes no flag --file", code: 126},
		{name: "rollback --flake", words: []string{"deployer", "rollback", "--flake", lab}, want: "--flake", code: 126},
		{name: "status --flake", words: []string{"deployer", "status", "--flake", lab}, want: "--flake", code: 126},
		{name: "flake reference with #", words: []string{"deployer", "status", "--flake", lab + "#deploy"}, want: "'#' at byte", code: 126},
		{name: "symlink system added by another user", words: act(linkSystem), want: "is a symlink", code: 4},
		{name: "content-addressed system added by another user", words: act(caSystem), want: "content-addressed", code: 4},
		{name: "state-dir on activate", words: act("--state-dir", lab, f.Initial), want: "takes no flag --state-dir", code: 126},
		{name: "state-dir on confirm", words: []string{"deployer", "confirm", "--id", "rt", "--state-dir", lab}, want: "--state-dir", code: 126},
		{name: "state-dir on wait", words: []string{"deployer", "wait", "--id", "rt", "--state-dir", lab}, want: "--state-dir", code: 126},
		{name: "state-dir on status", words: []string{"deployer", "status", "--local", "--state-dir", lab}, want: "--state-dir", code: 126},
		{name: "state-dir on rollback", words: []string{"sudo", "-n", dep, "rollback", "--local", "--state-dir", lab}, want: "--state-dir", code: 126},
		{name: "state-dir on health", words: []string{"deployer", "health", "--id", "rt", "--state-dir", lab}, want: "--state-dir", code: 126},
		// Systems no trusted key signed.
		{name: "locally built, unsigned system", words: act(unsigned), want: "no signature", code: 4},
		{name: "system signed by an untrusted key", words: act(foreign), want: "untrusted keys (attacker-1)", code: 4},
		{name: "signed system whose switch-to-configuration leaves the store", words: act(stray), want: "outside the store", code: 4},
		{name: "directory in the store the database does not know", words: act(notInDB), want: "not valid in the Nix database", code: 4},
		{name: "store path of a file", words: act("/nix/store/0c6kzph7l0dcbfmjap64f0czdafn3b7x-x.txt"), want: "not in the store", code: 4},
		// Hostile values for every flag.
		{name: "activate path outside the store", words: act("/tmp"), want: "not a store path", code: 126},
		{name: "activate path with ..", words: act("/nix/store/../../" + lab), want: "not a store path", code: 126},
		{name: "activate subpath", words: act(f.Initial + "/bin"), want: "not a store path", code: 126},
		{name: "activate relative path", words: act("nix/store/x"), want: "not a store path", code: 126},
		{name: "activate two paths", words: act(f.Initial, f.Initial), want: "exactly 1 store path", code: 126},
		{name: "activate over-long path", words: act("/nix/store/0c6kzph7l0dcbfmjap64f0czdafn3b7x-" + long), want: "not a store path", code: 126},
		{name: "mode not a mode", words: []string{"deployer", "activate", "--mode", "reboot", "--id", "rt", f.Initial}, want: "mode", code: 126},
		{name: "mode given twice", words: []string{"deployer", "activate", "--mode", "test", "--mode", "switch", "--id", "rt", f.Initial}, want: "given twice", code: 126},
		{name: "mode as --mode=", words: []string{"deployer", "activate", "--mode=switch", "--id", "rt", f.Initial}, want: "not --mode=VALUE", code: 126},
		{name: "single-dash flag", words: []string{"deployer", "activate", "-mode", "switch", "--id", "rt", f.Initial}, want: "flags are written --name", code: 126},
		{name: "id with ..", words: []string{"deployer", "activate", "--id", "..", f.Initial}, want: "deploy id", code: 126},
		{name: "id with slash", words: []string{"deployer", "confirm", "--id", "../../etc/passwd"}, want: "deploy id", code: 126},
		{name: "id starting with -", words: []string{"deployer", "wait", "--id", "-x"}, want: "needs a value", code: 126},
		{name: "over-long id", words: []string{"deployer", "confirm", "--id", strings.Repeat("a", 65)}, want: "deploy id", code: 126},
		{name: "confirm timeout 0", words: act("--confirm-timeout", "0s", f.Initial), want: "confirm timeout", code: 126},
		{name: "confirm timeout huge", words: act("--confirm-timeout", "99999h", f.Initial), want: "confirm timeout", code: 126},
		{name: "confirm timeout not a duration", words: act("--confirm-timeout", "30", f.Initial), want: "duration", code: 126},
		{name: "kernel-change other value", words: act("--kernel-change", "ignore", f.Initial), want: "kernel-change", code: 126},
		{name: "bool flag with a value word", words: act("--magic-rollback", "false", f.Initial), want: "exactly 1 store path", code: 126},
		{name: "bool flag =maybe", words: act("--auto-rollback=maybe", f.Initial), want: "=true or =false", code: 126},
		{name: "-- then a flag", words: act("--", "--state-dir", lab, f.Initial), want: "flags are written --name", code: 126},
		{name: "flag after the path", words: append(act(f.Initial), "--mode", "test"), want: "flags go before the store paths", code: 126},
		{name: "wait timeout 0 (forever)", words: []string{"deployer", "wait", "--id", "rt", "--timeout", "0s"}, want: "wait timeout", code: 126},
		{name: "health of a deploy that does not exist", words: []string{"deployer", "health", "--id", "nope"}, want: "no such deploy", code: 4},
		// Contract 4: reboot and the boot default, nothing more.
		{name: "boot default to a generation that does not exist", words: []string{"deployer", "rollback", "--boot", "--generation", "99"}, want: "no generation 99", code: 4},
		{name: "boot default to generation 0", words: []string{"deployer", "rollback", "--boot", "--generation", "0"}, want: "must be a number from 1", code: 126},
		{name: "boot default to a negative generation", words: []string{"deployer", "rollback", "--boot", "--generation", "-1"}, want: "needs a value", code: 126},
		{name: "boot default to an out-of-range generation", words: []string{"deployer", "rollback", "--boot", "--generation", "4294967297"}, want: "must be a number from 1", code: 126},
		{name: "boot default to a path", words: []string{"deployer", "rollback", "--boot", "--generation", caSystem}, want: "must be a number from 1", code: 126},
		{name: "boot default to a profile link", words: []string{"deployer", "rollback", "--boot", "--generation", "/nix/var/nix/profiles/system-1-link"}, want: "must be a number from 1", code: 126},
		{name: "boot default of another profile", words: []string{"deployer", "rollback", "--boot", "--generation", "1", "--profile", "/nix/var/nix/profiles/per-user/root/profile"}, want: "takes no flag --profile", code: 126},
		{name: "boot default with a system path", words: []string{"deployer", "rollback", "--boot", "--generation", "1", stray}, want: "no arguments", code: 126},
		{name: "generation without --boot (a switch to it)", words: []string{"deployer", "rollback", "--generation", "1"}, want: "goes with --boot", code: 126},
		{name: "reboot without an id", words: []string{"deployer", "reboot"}, want: "deploy id", code: 126},
		{name: "reboot with a hostile id", words: []string{"deployer", "reboot", "--id", "../../etc"}, want: "deploy id", code: 126},
		{name: "reboot with a delay", words: []string{"deployer", "reboot", "--id", "rt", "--delay", "0"}, want: "takes no flag --delay", code: 126},
		{name: "reboot into a system", words: []string{"deployer", "reboot", "--id", "rt", stray}, want: "no arguments", code: 126},
		{name: "reboot through sudo -u", words: []string{"sudo", "-n", "-u", "root", dep, "reboot", "--id", "rt"}, want: "not a deployer host verb", code: 126},
		{name: "health --booted with a value", words: []string{"deployer", "health", "--id", "rt", "--booted=yes"}, want: "=true or =false", code: 126},
		{name: "reject with a value", words: []string{"deployer", "confirm", "--id", "rt", "--reject=yes"}, want: "=true or =false", code: 126},
		{name: "fetch a path outside the store", words: []string{"deployer", "fetch", "/etc/shadow"}, want: "not a store path", code: 126},
		{name: "fetch with nix options", words: []string{"deployer", "fetch", "--option", "substituters", "http://127.0.0.1:1", f.Initial}, want: "fetch takes no flag --option", code: 126},
		{name: "fetch too many paths", words: append([]string{"deployer", "fetch"}, repeat(f.Initial, 65)...), want: "1 to 64 store paths", code: 126},
		{name: "odd bytes", words: []string{"deployer", "fetch", "/nix/store/0c6kzph7l0dcbfmjap64f0czdafn3b7x-a\x01b"}, want: "not allowed", code: 126},
		{name: "unicode lookalike", words: []string{"deployer", "status\u2003--local"}, want: "not allowed", code: 126},
		// Not a verb, or not the deployer.
		{name: "no command", words: nil, want: "interactive logins are not allowed", code: 126},
		{name: "a shell", words: []string{"/bin/sh"}, want: "not a deployer host verb", code: 126},
		{name: "payload directly", words: []string{payload}, want: "not a deployer host verb", code: 126},
		{name: "sudo the payload", words: []string{"sudo", "-n", payload}, want: "not a deployer host verb", code: 126},
		{name: "sudo -u root", words: []string{"sudo", "-n", "-u", "root", dep, "status"}, want: "not a deployer host verb", code: 126},
		{name: "another binary named deployer runs nothing but the gate", words: []string{fakeDeployer, "activate", "--id", "rt", caSystem}, want: "content-addressed", code: 4},
		{name: "watchdog", words: []string{"deployer", "watchdog", "--id", "rt", "--state-dir", lab, "--lock-fd", "3"}, want: "not a host verb", code: 126},
		{name: "agent", words: []string{"deployer", "agent", "--listen", filepath.Join(lab, "sock")}, want: "not a host verb", code: 126},
		{name: "gate again", words: []string{"deployer", "gate"}, want: "not a host verb", code: 126},
		{name: "host wrapper", words: []string{"deployer", "host", "status"}, want: "not a host verb", code: 126},
		{name: "push from the host", words: []string{"deployer", "push", "--file", "/dev/stdin", "--cache", "http://127.0.0.1:1"}, stdin: nodes, want: "not a host verb", code: 126},
		{name: "metrics listener", words: []string{"deployer", "metrics", "--listen", "127.0.0.1:0"}, want: "not a host verb", code: 126},
		{name: "command chaining", words: []string{"deployer", "version;", payload}, want: "not allowed", code: 126},
		{name: "command substitution", words: []string{"deployer", "fetch", "$(" + payload + ")"}, want: "not allowed", code: 126},
		{name: "backticks", words: []string{"deployer", "fetch", "`" + payload + "`"}, want: "not allowed", code: 126},
		{name: "pipe", words: []string{"deployer", "version", "|", payload}, want: "not allowed", code: 126},
		{name: "newline", words: []string{"deployer version\n" + payload}, want: "not allowed", code: 126},
		{name: "redirect", words: []string{"deployer", "version", ">", marker}, want: "not allowed", code: 126},
		{name: "over-long line", words: []string{"deployer", "fetch", strings.Repeat("/nix/store/x ", 1000)}, want: "longer than", code: 126},
		// The session itself.
		// restrict refuses the pty, and ssh -tt gives up on that.
		{name: "pty and a shell", words: []string{"sh"}, opts: []string{"-tt"}, want: "PTY allocation request failed", code: 255},
		{name: "pty, no command", words: nil, opts: []string{"-tt"}, want: "PTY allocation request failed", code: 255},
		{name: "pty asked, not forced", words: []string{"sh"}, opts: []string{"-t"}, want: "not a deployer host verb", code: 126},
		{name: "SetEnv LD_PRELOAD, BASH_ENV, NIX_*", words: []string{"deployer", "version"},
			opts: []string{"-o", "SetEnv=LD_PRELOAD=" + payload + " BASH_ENV=" + payload + " ENV=" + payload + " NIX_REMOTE=local NIX_CONF_DIR=" + lab + " SSH_ORIGINAL_COMMAND=" + payload},
			want: contractMarker, code: 0},
		{name: "SendEnv of the caller's variables", words: []string{"deployer", "status"},
			opts: []string{"-o", "SendEnv=*"}, want: contractMarker, code: 0},
		{name: "port forwarding", words: []string{"deployer", "version"}, opts: []string{"-o", "ExitOnForwardFailure=yes", "-R", "127.0.0.1:0:127.0.0.1:22"}, want: "forwarding failed", code: 255},
	}
	if len(attempts) < 40 {
		t.Fatalf("only %d attempts", len(attempts))
	}
	before := snapshot(t, f, h)
	for _, a := range attempts {
		t.Run(a.name, func(t *testing.T) {
			r := ssh(t, f, h, a)
			if r.code != a.code || !strings.Contains(r.out, a.want) {
				t.Errorf("exit %d, want %d with %q in:\n%s", r.code, a.code, a.want, r.out)
			}
			if a.code == hostverb.ExitRefused && strings.Count(strings.TrimSpace(r.stderr), "\n") > 0 {
				t.Errorf("the refusal is not one line:\n%s", r.stderr)
			}
			if b, err := os.ReadFile(marker); err == nil {
				t.Fatalf("the payload ran:\n%s", b)
			}
			if after := snapshot(t, f, h); after != before {
				t.Fatalf("the host changed:\nbefore\n%s\nafter\n%s", before, after)
			}
		})
	}
	// Control: the same key still does its job.
	if r := ssh(t, f, h, attempt{words: []string{"deployer", "status"}}); r.code != 0 || !strings.Contains(r.out, f.Initial) {
		t.Fatalf("control: status: %d %s", r.code, r.out)
	}
	t.Run("BootDefaultAndReboot", func(t *testing.T) { testRebootPowers(t, f, h) })
}

// What contract 4 gives the deploy key: move the boot default back to an
// older generation of the host's own profile (never a newer one), and
// reboot, after which the host runs that generation with a new boot id.
func testRebootPowers(t *testing.T, f *fleettest.Fleet, h *fleettest.Host) {
	v2 := f.System(t, fleettest.System{Label: "redteam-v2"})
	if r := ssh(t, f, h, attempt{words: []string{"deployer", "fetch", v2}}); r.code != 0 {
		t.Fatalf("fetch v2: %d %s", r.code, r.out)
	}
	f.MustExec(t, h, "nix-env", "-p", "/nix/var/nix/profiles/system", "--set", v2)
	f.MustExec(t, h, v2+"/bin/switch-to-configuration", "boot")
	if n, _ := f.BootDefault(t, h); n != 2 {
		t.Fatalf("setup: boot default %d, want 2", n)
	}
	running := f.Readlink(t, h, "/run/current-system")
	if r := ssh(t, f, h, attempt{words: []string{"deployer", "rollback", "--id", "rt-boot", "--boot", "--generation", "1"}}); r.code != 0 {
		t.Fatalf("rollback --boot --generation 1: %d %s", r.code, r.out)
	}
	if n, _ := f.BootDefault(t, h); n != 1 {
		t.Fatalf("boot default %d after rollback --boot, want 1", n)
	}
	if got := f.Readlink(t, h, "/run/current-system"); got != running {
		t.Fatalf("rollback --boot activated %s", got)
	}
	if r := ssh(t, f, h, attempt{words: []string{"deployer", "rollback", "--id", "rt-boot", "--boot", "--generation", "2"}}); r.code != hostverb.ExitInvalid || !strings.Contains(r.out, "newer than the profile's current 1") {
		t.Fatalf("boot default forward to generation 2: %d %s", r.code, r.out)
	}
	before, _ := f.BootID(h)
	boots := len(f.HostBoots(h))
	r := ssh(t, f, h, attempt{words: []string{"deployer", "reboot", "--id", "rt-reboot"}})
	if r.code != 0 || !strings.Contains(r.out, `"rebootFromBootId":"`+before+`"`) {
		t.Fatalf("reboot: %d %s", r.code, r.out)
	}
	deadline := time.Now().Add(time.Minute)
	for len(f.HostBoots(h)) == boots {
		if time.Now().After(deadline) {
			t.Fatal("the host did not reboot")
		}
		time.Sleep(100 * time.Millisecond)
	}
	b := f.HostBoots(h)[boots]
	if b.BootID == before || b.System != f.Initial {
		t.Fatalf("after the reboot %+v, want a new boot id and generation 1's %s", b, f.Initial)
	}
	if r := ssh(t, f, h, attempt{words: []string{"deployer", "status"}}); r.code != 0 || !strings.Contains(r.out, `"bootId":"`+b.BootID+`"`) {
		t.Fatalf("status after the reboot: %d %s", r.code, r.out)
	}
}

func repeat(s string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = s
	}
	return out
}

type sshResult struct {
	code        int
	out, stderr string
}

func ssh(t *testing.T, f *fleettest.Fleet, h *fleettest.Host, a attempt) sshResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	args := append([]string{"-F", f.SSHConfig, "-o", "ControlMaster=no", "-o", "ControlPath=none"}, a.opts...)
	args = append(append(args, h.Name), a.words...)
	cmd := exec.CommandContext(ctx, "ssh", args...)
	cmd.Stdin = strings.NewReader(a.stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := sshResult{out: stdout.String() + stderr.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("ssh: %v", err)
	}
	return r
}

// snapshot is everything an attempt could change on the host.
func snapshot(t *testing.T, f *fleettest.Fleet, h *fleettest.Host) string {
	t.Helper()
	out, _ := f.Exec(h, "/bin/sh", "-c", `
echo "current $(readlink /run/current-system)"
echo "booted $(readlink /run/booted-system)"
echo "profile $(readlink /nix/var/nix/profiles/system)"
ls -l --time-style=+%s /nix/var/nix/profiles | grep -v '^total' | sed 's/  */ /g'
echo "activations $(wc -l < /run/activation.log)"
echo "state:"; find /run/concordia -printf '%p %s %T@\n' 2>/dev/null | sort
echo "boot:"; find /boot -type f -printf '%p %s %T@\n' | sort
`)
	return out
}
