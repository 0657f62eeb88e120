package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// server is one HTTP system under test, on loopback.
type server struct {
	name string
	base string // http://127.0.0.1:PORT
	cmd  *exec.Cmd
}

// startConcordia runs this tree's `cache serve` with its own state dir, so
// a fresh state dir means a cold compression cache.
func (b *bench) startConcordia(ctx context.Context, name, compression, stateDir string, extra ...string) (*server, error) {
	return b.startConcordiaBin(ctx, b.cacheBin, name, compression, stateDir, extra...)
}

// startConcordiaBin is startConcordia on the cache binary bin (this
// tree's, or the --vs-bin one).
func (b *bench) startConcordiaBin(ctx context.Context, bin, name, compression, stateDir string, extra ...string) (*server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, err
	}
	args := []string{"serve", "--bind", fmt.Sprintf("127.0.0.1:%d", port), "--compression", compression,
		"--state-dir", stateDir, "--sign-key", b.keySec}
	args = append(args, extra...)
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = b.nixEnv()
	logf, err := os.Create(filepath.Join(b.work, safeName(name)+".log"))
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := b.procs.start(cmd); err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	if err := waitTCP(ctx, addr, 20*time.Second); err != nil {
		b.procs.stop(cmd)
		return nil, fmt.Errorf("concordia: %w (log %s)", err, logf.Name())
	}
	return &server{name: name, base: "http://" + addr, cmd: cmd}, nil
}

// vsName prefixes the figures of the --vs-bin (or --compare) binary.
const vsName = "vs-bin"

// cacheBins are the cache binaries a group measures: this tree's, and the
// --vs-bin one when given, each with the name its figures start with.
func (b *bench) cacheBins() []struct{ name, bin string } {
	bins := []struct{ name, bin string }{{"concordia", b.cacheBin}}
	if b.o.vsBin != "" {
		bins = append(bins, struct{ name, bin string }{vsName, b.o.vsBin})
	}
	return bins
}

// startNginx serves dir (a file:// binary cache written by nix copy) the way
// a static cache is usually served: sendfile, keep-alive, no access log.
func (b *bench) startNginx(ctx context.Context, name, root string) (*server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	d := filepath.Join(b.work, safeName(name))
	if err := os.MkdirAll(filepath.Join(d, "tmp"), 0o755); err != nil {
		return nil, err
	}
	conf := fmt.Sprintf(`daemon off;
user root root;
worker_processes 2;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  client_body_temp_path %[1]s/tmp;
  proxy_temp_path %[1]s/tmp;
  fastcgi_temp_path %[1]s/tmp;
  uwsgi_temp_path %[1]s/tmp;
  scgi_temp_path %[1]s/tmp;
  types { text/x-nix-narinfo narinfo; text/x-nix-cache-info nix-cache-info; application/x-nix-nar nar; }
  default_type application/octet-stream;
  server {
    listen 127.0.0.1:%[2]d;
    root %[3]s;
  }
}
`, d, port, root)
	cf := filepath.Join(d, "nginx.conf")
	if err := os.WriteFile(cf, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, "nginx", "-c", cf, "-p", d)
	out, _ := os.Create(filepath.Join(d, "stdout.log"))
	cmd.Stdout, cmd.Stderr = out, out
	if err := b.procs.start(cmd); err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	if err := waitTCP(ctx, addr, 10*time.Second); err != nil {
		b.procs.stop(cmd)
		return nil, fmt.Errorf("nginx: %w", err)
	}
	return &server{name: name, base: "http://" + addr, cmd: cmd}, nil
}

// startMinimal re-executes this binary as a constant-narinfo Go handler:
// the floor of net/http on this machine.
func (b *bench) startMinimal(ctx context.Context, body string) (*server, error) {
	bodyFile := filepath.Join(b.work, "minimal.narinfo")
	if err := os.WriteFile(bodyFile, []byte(body), 0o644); err != nil {
		return nil, err
	}
	return b.startSelf(ctx, "minimal Go handler", "minimal-server", bodyFile)
}

// startSelf re-executes this binary as `self sub ADDR args...` on a free
// loopback port and waits until it listens.
func (b *bench) startSelf(ctx context.Context, name, sub string, args ...string) (*server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	cmd := exec.CommandContext(ctx, self, append([]string{sub, addr}, args...)...)
	if err := b.procs.start(cmd); err != nil {
		return nil, err
	}
	if err := waitTCP(ctx, addr, 10*time.Second); err != nil {
		b.procs.stop(cmd)
		return nil, err
	}
	return &server{name: name, base: "http://" + addr, cmd: cmd}, nil
}

func minimalServer(args []string) {
	body, err := os.ReadFile(args[1])
	if err != nil {
		panic(err)
	}
	clen := strconv.Itoa(len(body))
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/x-nix-narinfo")
		w.Header().Set("Content-Length", clen)
		_, _ = w.Write(body)
	})
	srv := &http.Server{Addr: args[0], Handler: h, ReadHeaderTimeout: 10 * time.Second}
	if err := srv.ListenAndServe(); err != nil {
		panic(err)
	}
}

// startSSHD runs an sshd on loopback that lets root in with a fresh key, for
// `nix copy --from ssh://`, Nix's own no-cache transport.
func (b *bench) startSSHD(ctx context.Context) (port int, sshOpts string, err error) {
	d := filepath.Join(b.work, "sshd")
	if err := os.MkdirAll(d, 0o700); err != nil {
		return 0, "", err
	}
	for _, k := range []string{"host", "client"} {
		if _, err := os.Stat(filepath.Join(d, k)); err == nil {
			continue
		}
		if _, err := b.runCmd(ctx, nil, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(d, k)); err != nil {
			return 0, "", err
		}
	}
	pub, err := os.ReadFile(filepath.Join(d, "client.pub"))
	if err != nil {
		return 0, "", err
	}
	if err := os.WriteFile(filepath.Join(d, "authorized_keys"), pub, 0o600); err != nil {
		return 0, "", err
	}
	if port, err = freePort(); err != nil {
		return 0, "", err
	}
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		return 0, "", err
	}
	cfg := fmt.Sprintf("ListenAddress 127.0.0.1:%d\nHostKey %s/host\nAuthorizedKeysFile %s/authorized_keys\nPidFile %s/sshd.pid\nUsePAM no\nPasswordAuthentication no\nStrictModes no\nPermitRootLogin prohibit-password\nSetEnv PATH=%s\n",
		port, d, d, d, os.Getenv("PATH"))
	if err := os.WriteFile(filepath.Join(d, "sshd_config"), []byte(cfg), 0o600); err != nil {
		return 0, "", err
	}
	sshd, err := exec.LookPath("sshd")
	if err != nil {
		sshd = "/usr/sbin/sshd"
	}
	cmd := exec.CommandContext(ctx, sshd, "-D", "-e", "-f", filepath.Join(d, "sshd_config"))
	logf, _ := os.Create(filepath.Join(d, "sshd.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := b.procs.start(cmd); err != nil {
		return 0, "", err
	}
	if err := waitTCP(ctx, fmt.Sprintf("127.0.0.1:%d", port), 10*time.Second); err != nil {
		return 0, "", err
	}
	sshOpts = strings.Join([]string{"-p", strconv.Itoa(port), "-i", filepath.Join(d, "client"),
		"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"}, " ")
	return port, sshOpts, nil
}

// safeName makes a system's display name usable as a file name (nginx's
// config does not quote paths).
func safeName(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '_'
	}, s)
}

// buildAt builds the cache binary of the commit ref from a detached git
// worktree (removed again), so --compare measures another commit's
// binary in the same rounds as this tree's. The figures are named
// "vs-bin" either way; the report's notes say which commit that is.
func (b *bench) buildAt(ctx context.Context, ref string) (string, error) {
	rev, err := b.runCmd(ctx, nil, "git", "rev-parse", "--verify", ref+"^{commit}")
	if err != nil {
		return "", err
	}
	rev = strings.TrimSpace(rev)
	tree := filepath.Join(b.work, "compare-tree")
	if _, err := b.runCmd(ctx, nil, "git", "worktree", "add", "--detach", tree, rev); err != nil {
		return "", err
	}
	defer func() {
		_, _ = b.runCmd(context.Background(), nil, "git", "worktree", "remove", "--force", tree)
	}()
	bin := filepath.Join(b.work, "cache-"+rev[:12])
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/cache")
	cmd.Dir = tree
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build at %s: %w: %s", rev[:12], err, lastLines(string(out), 10))
	}
	b.rep.note(fmt.Sprintf("%s is the cache binary of commit %s (%s), built by --compare", vsName, rev[:12], ref))
	return bin, nil
}
