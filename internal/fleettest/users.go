package fleettest

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// sweepStale removes what fleets of killed test processes left behind: their
// folders (named after the test's pid) and sudoers rules (naming the folder).
func sweepStale() {
	dirs, _ := filepath.Glob("/tmp/concordia-fleet-*-*")
	for _, d := range dirs {
		parts := strings.SplitN(strings.TrimPrefix(filepath.Base(d), "concordia-fleet-"), "-", 2)
		if pid, err := strconv.Atoi(parts[0]); err == nil && pid != os.Getpid() && syscall.Kill(pid, 0) != nil {
			removeAll(d)
		}
	}
	rules, _ := filepath.Glob("/etc/sudoers.d/concordia-fleettest-*")
	for _, r := range rules {
		b, err := os.ReadFile(r)
		if err != nil {
			continue
		}
		fields := strings.Fields(strings.SplitN(string(b), "\n", 2)[0])
		if len(fields) >= 4 && fields[1] == "concordia" && fields[2] == "fleettest" {
			if _, err := os.Stat(fields[3]); errors.Is(err, fs.ErrNotExist) {
				os.Remove(r)
			}
		}
	}
}

// ensureUser creates the shared deploy user and the other local user once
// (under a machine-wide lock, since several test binaries may start fleets
// at the same time).
func ensureUser() error {
	lf, err := os.OpenFile("/tmp/concordia-fleettest.lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer lf.Close()
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX); err != nil {
		return err
	}
	// As on NixOS: /var/empty is root's, empty and not writable.
	if err := os.MkdirAll(deployHome, 0o555); err != nil {
		return err
	}
	for _, u := range []string{deployUser, OtherUser} {
		if exec.Command("id", "-u", u).Run() != nil {
			if out, err := exec.Command("useradd", "-r", "-U", "-M", "-d", deployHome, "-s", "/bin/sh", u).CombinedOutput(); err != nil {
				return fmt.Errorf("useradd %s: %v %s", u, err, out)
			}
		}
		// useradd -r leaves the account locked ("!"), which sshd refuses
		// even for key logins; '*' means "no password" without "locked".
		// The shell must be a real one: sshd runs the forced command with it.
		if out, err := exec.Command("usermod", "-p", "*", "-s", "/bin/sh", "-d", deployHome, u).CombinedOutput(); err != nil {
			return fmt.Errorf("usermod %s: %v %s", u, err, out)
		}
	}
	return nil
}

// installSudoers allows deploy exactly the host verbs of this fleet's binary,
// as contract 1 deployers needed (their module's rules, "VERB *").
func (f *Fleet) installSudoers(t testing.TB) error {
	d := f.Deployer
	rule := fmt.Sprintf("# concordia fleettest %s (removed when the test ends)\nDefaults:%s !requiretty\n%s ALL=(root) NOPASSWD: %s activate *, %s confirm *, %s wait *, %s status *, %s rollback *\n",
		f.Dir, deployUser, deployUser, d, d, d, d, d)
	tmp := filepath.Join(f.Dir, "sudoers")
	if err := os.WriteFile(tmp, []byte(rule), 0o440); err != nil {
		return err
	}
	if out, err := exec.Command("visudo", "-cf", tmp).CombinedOutput(); err != nil {
		return fmt.Errorf("visudo: %v %s", err, out)
	}
	// sudo ignores files in sudoers.d whose name has a dot.
	f.sudoers = "/etc/sudoers.d/concordia-fleettest-" + f.salt
	b, _ := os.ReadFile(tmp)
	if err := os.WriteFile(f.sudoers, b, 0o440); err != nil {
		return err
	}
	t.Cleanup(func() { os.Remove(f.sudoers) })
	return nil
}

func (f *Fleet) writeSSHConfig() error {
	var cfg, kh strings.Builder
	for _, h := range f.Hosts {
		fmt.Fprintf(&cfg, "Host %s\n  HostName %s\n  Port %d\n  User %s\n  IdentityFile %s\n  IdentitiesOnly yes\n"+
			"  UserKnownHostsFile %s\n  GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n  HostKeyAlias %s\n"+
			"  BatchMode yes\n  LogLevel ERROR\n  ConnectTimeout 10\n\n",
			h.Name, h.Addr, h.Port, deployUser, f.Key, filepath.Join(f.Dir, "known_hosts"), h.Name)
		pub, err := os.ReadFile(filepath.Join(h.Dir, "ssh_host_ed25519_key.pub"))
		if err != nil {
			return err
		}
		fields := strings.Fields(string(pub))
		fmt.Fprintf(&kh, "%s %s %s\n", h.Name, fields[0], fields[1])
	}
	if err := os.WriteFile(filepath.Join(f.Dir, "known_hosts"), []byte(kh.String()), 0o644); err != nil {
		return err
	}
	f.SSHConfig = filepath.Join(f.Dir, "ssh_config")
	return os.WriteFile(f.SSHConfig, []byte(cfg.String()), 0o644)
}
