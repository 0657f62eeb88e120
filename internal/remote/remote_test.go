package remote_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/remote"
)

// sshd is a private sshd on 127.0.0.1 that lets this user in with a fresh
// key; stop() kills only the listener, leaving sessions alive (as when a
// deployed config stops sshd).
type sshd struct {
	cmd  *exec.Cmd
	opts []string
	user string
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func startSSHD(t *testing.T) *sshd {
	t.Helper()
	bin, err := exec.LookPath("sshd")
	if err != nil {
		if _, err2 := os.Stat("/usr/sbin/sshd"); err2 != nil {
			t.Skip("no sshd")
		}
		bin = "/usr/sbin/sshd"
	}
	if _, err := exec.LookPath("ssh-keygen"); err != nil {
		t.Skip("no ssh-keygen")
	}
	if os.Geteuid() != 0 {
		t.Skip("sshd test needs root (privilege separation)")
	}
	dir := t.TempDir()
	for _, k := range []string{"host", "client"} {
		out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(dir, k)).CombinedOutput()
		if err != nil {
			t.Fatalf("ssh-keygen: %v %s", err, out)
		}
	}
	pub, _ := os.ReadFile(filepath.Join(dir, "client.pub"))
	os.WriteFile(filepath.Join(dir, "authorized_keys"), pub, 0o600)
	os.MkdirAll("/run/sshd", 0o755)
	port := freePort(t)
	cfg := fmt.Sprintf(`ListenAddress 127.0.0.1:%d
HostKey %s/host
AuthorizedKeysFile %s/authorized_keys
PidFile none
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
PermitRootLogin prohibit-password
`, port, dir, dir)
	os.WriteFile(filepath.Join(dir, "sshd_config"), []byte(cfg), 0o600)
	cmd := exec.Command(bin, "-D", "-e", "-f", filepath.Join(dir, "sshd_config"))
	cmd.Stderr = os.Stderr
	if !testing.Verbose() {
		cmd.Stderr = nil
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &sshd{cmd: cmd, user: "root", opts: []string{
		"-F", "/dev/null", "-i", filepath.Join(dir, "client"), "-p", fmt.Sprint(port),
		"-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "LogLevel=ERROR",
	}}
	t.Cleanup(s.stop)
	for i := 0; i < 100; i++ {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
			return s
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("sshd did not start")
	return nil
}

func (s *sshd) stop() {
	if s.cmd.Process != nil {
		s.cmd.Process.Signal(syscall.SIGTERM)
		s.cmd.Wait()
	}
}

func (s *sshd) target() remote.Target {
	return remote.Target{Host: "127.0.0.1", User: s.user, Opts: s.opts}
}

func TestSSH(t *testing.T) {
	d := startSSHD(t)
	r, err := remote.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	tg := d.target()

	res, err := r.Run(ctx, tg, "echo", "hello", "/nix/store/x")
	if err != nil || string(res.Stdout) != "hello /nix/store/x\n" || res.Code != 0 {
		t.Fatalf("Run echo = %q %d %v", res.Stdout, res.Code, err)
	}
	res, err = r.Run(ctx, tg, "false")
	if err != nil || res.Code != 1 {
		t.Fatalf("exit code: %d %v", res.Code, err)
	}
	if _, err := r.Run(ctx, tg, "echo", "a;b"); !errors.Is(err, remote.ErrUnsafeArg) {
		t.Fatalf("unsafe arg: %v", err)
	}
	res, err = r.Fresh(ctx, tg, "echo", "fresh")
	if err != nil || string(res.Stdout) != "fresh\n" {
		t.Fatalf("Fresh = %q %v", res.Stdout, err)
	}

	// The listener goes (a config that breaks sshd): the shared connection
	// still works, a fresh login does not.
	d.stop()
	res, err = r.Run(ctx, tg, "echo", "still")
	if err != nil || string(res.Stdout) != "still\n" {
		t.Fatalf("Run over the master after sshd stopped = %q %v", res.Stdout, err)
	}
	if _, err := r.Fresh(ctx, tg, "echo", "no"); !errors.Is(err, remote.ErrConnection) {
		t.Fatalf("Fresh after sshd stopped: %v, want ErrConnection", err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
}

// A master must outlive the pause between one host's multiplexed calls,
// the confirm over fresh logins (deploy-rs's default confirm timeout is
// 30s, often raised to minutes): else the next call logs in again.
func TestPersistOutlivesConfirm(t *testing.T) {
	r, err := remote.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.Persist < 10*time.Minute {
		t.Fatalf("Persist %s: an idle master would close during a long confirm", r.Persist)
	}
}

func TestSSHRefused(t *testing.T) {
	if _, err := exec.LookPath("ssh"); err != nil {
		t.Skip("no ssh")
	}
	r, err := remote.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	tg := remote.Target{Host: "127.0.0.1", Opts: []string{"-F", "/dev/null", "-p", fmt.Sprint(freePort(t))}}
	_, err = r.Run(context.Background(), tg, "true")
	if !errors.Is(err, remote.ErrConnection) || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("err = %v, want ErrConnection (refused)", err)
	}
}

func TestCheckArgs(t *testing.T) {
	ok := [][]string{{"deployer", "fetch", "/nix/store/abc-x"}, {"sudo", "-n", "/run/wrappers/bin/deployer", "activate", "--mode", "switch", "--confirm-timeout", "30s", "--magic-rollback=true"}}
	bad := [][]string{{}, {""}, {"a b"}, {"$(x)"}, {"a;b"}, {"`x`"}, {"a|b"}, {"a&b"}, {"a>b"}, {"*"}, {"~"}, {"a'b"}, {"a\"b"}, {"a\nb"}, {"a\\b"}}
	for _, a := range ok {
		if err := remote.CheckArgs(a); err != nil {
			t.Errorf("CheckArgs(%q) = %v", a, err)
		}
	}
	for _, a := range bad {
		if err := remote.CheckArgs(a); !errors.Is(err, remote.ErrUnsafeArg) {
			t.Errorf("CheckArgs(%q) accepted", a)
		}
	}
}
