package fleettest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// Host returns the host named name (host1...).
func (f *Fleet) Host(name string) *Host {
	for _, h := range f.Hosts {
		if h.Name == name {
			return h
		}
	}
	return nil
}

// Namespace names h's mount namespace (as in /proc/PID/ns/mnt).
func (h *Host) Namespace() string { return h.mntNS }

// HoldNamespace opens h's mount namespace. While the file is open, the
// namespace outlives h (it has no process after h is stopped) and its
// name is not given to another namespace, so a process found in it later
// is one of h's.
func (h *Host) HoldNamespace() (*os.File, error) {
	if h.nsFile == nil {
		return nil, fmt.Errorf("%s has not booted", h.Name)
	}
	return os.Open(fmt.Sprintf("/proc/self/fd/%d", h.nsFile.Fd()))
}

// Exec runs argv inside h's mount namespace (as root, outside any SSH
// session) and returns its combined output.
func (f *Fleet) Exec(h *Host, argv ...string) (string, error) {
	cmd := exec.Command("nsenter", append([]string{"-t", strconv.Itoa(h.keeper.Process.Pid), "-m", "--"}, argv...)...)
	cmd.Env = append(os.Environ(), f.nixEnv...)
	cmd.Env = append(cmd.Env, "NIX_CONF_DIR="+filepath.Join(h.Dir, "etc-nix"), "PATH=/usr/sbin:/usr/bin:/sbin:/bin")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// ExecAs runs argv inside h's mount namespace as the unprivileged local
// user (e.g. OtherUser), with a clean environment; Nix commands go
// through the host's daemon, as any user's do.
func (f *Fleet) ExecAs(h *Host, user string, argv ...string) (string, error) {
	args := append([]string{"-t", strconv.Itoa(h.keeper.Process.Pid), "-m", "--", "runuser", "-u", user, "--",
		"env", "-i", "PATH=/usr/bin:/bin", "HOME=/tmp", "NIX_REMOTE=daemon"}, argv...)
	out, err := exec.Command("nsenter", args...).CombinedOutput()
	return string(out), err
}

// MustExec is Exec that fails the test on error.
func (f *Fleet) MustExec(t testing.TB, h *Host, argv ...string) string {
	t.Helper()
	out, err := f.Exec(h, argv...)
	if err != nil {
		t.Fatalf("%s: %q: %v\n%s", h.Name, argv, err, out)
	}
	return out
}

// Readlink reads a link inside h (e.g. /run/current-system).
func (f *Fleet) Readlink(t testing.TB, h *Host, link string) string {
	t.Helper()
	out, err := f.Exec(h, "readlink", link)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(out)
}

// ProfileGeneration returns the generation number and store path of h's
// system profile (0, "" if none).
func (f *Fleet) ProfileGeneration(t testing.TB, h *Host) (int, string) {
	t.Helper()
	l := f.Readlink(t, h, "/nix/var/nix/profiles/system")
	if l == "" {
		return 0, ""
	}
	n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(l, "system-"), "-link"))
	return n, f.Readlink(t, h, "/nix/var/nix/profiles/"+l)
}

// Generations lists h's system profile generation numbers.
func (f *Fleet) Generations(t testing.TB, h *Host) []int {
	t.Helper()
	ents, _ := os.ReadDir(filepath.Join(h.Dir, "nix", "var", "nix", "profiles"))
	var gens []int
	for _, e := range ents {
		if s, ok := strings.CutPrefix(e.Name(), "system-"); ok {
			if n, err := strconv.Atoi(strings.TrimSuffix(s, "-link")); err == nil {
				gens = append(gens, n)
			}
		}
	}
	return gens
}

// BootDefault returns the generation of h's default boot entry (0 if none)
// and whether its entry file exists.
func (f *Fleet) BootDefault(t testing.TB, h *Host) (int, bool) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(h.Dir, "boot", "loader", "loader.conf"))
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if s, ok := strings.CutPrefix(line, "default nixos-generation-"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(s, ".conf"))
			_, err := os.Stat(filepath.Join(h.Dir, "boot", "loader", "entries", fmt.Sprintf("nixos-generation-%d.conf", n)))
			return n, err == nil
		}
	}
	return 0, false
}

// ActivationLog returns h's /run/activation.log lines ("<action> <system> <time>").
func (f *Fleet) ActivationLog(t testing.TB, h *Host) []string {
	t.Helper()
	b, _ := os.ReadFile(filepath.Join(h.Dir, "run", "activation.log"))
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if l != "" {
			lines = append(lines, l)
		}
	}
	return lines
}

// SSH returns the command `ssh -F <fleet config> <host> <words...>` (a fresh
// login, no connection sharing), for tests that drive the host verbs.
func (f *Fleet) SSH(ctx context.Context, h *Host, words ...string) *exec.Cmd {
	args := append([]string{"-F", f.SSHConfig, "-o", "ControlMaster=no", "-o", "ControlPath=none", h.Name}, words...)
	return exec.CommandContext(ctx, "ssh", args...)
}
