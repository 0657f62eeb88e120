package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/syncbuf"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/bos55/concordia/internal/cli"
	"github.com/bos55/concordia/pkg/narinfo"
)

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// cacheBinary builds this command once per test run.
func cacheBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "concordia-cache-bin-")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "cache")
		out, err := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// serveProc is a running `cache serve`.
type serveProc struct {
	cmd    *exec.Cmd
	url    string
	stdout *syncbuf.Buffer
	stderr *syncbuf.Buffer
	exited chan struct{} // closed when the process has exited
	err    error         // its exit status, once exited is closed
}

var servingRE = regexp.MustCompile(`Serving \S+ on (\S+)`)

// startServe starts the binary and waits for its "Serving ... on URL" line.
func startServe(t *testing.T, args ...string) *serveProc {
	t.Helper()
	bin := cacheBinary(t)
	cmd := exec.Command(bin, append([]string{"serve"}, args...)...)
	home := t.TempDir()
	cmd.Env = append(os.Environ(), "HOME="+home, "XDG_CACHE_HOME="+filepath.Join(home, ".cache"))
	pr, pw := io.Pipe()
	cmd.Stdout = pw
	p := &serveProc{cmd: cmd, stdout: &syncbuf.Buffer{}, stderr: &syncbuf.Buffer{}, exited: make(chan struct{})}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = cmd.Wait(); pw.Close(); close(p.exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.exited
	})
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		sent := false
		for sc.Scan() {
			p.stdout.Write([]byte(sc.Text() + "\n"))
			if m := servingRE.FindStringSubmatch(sc.Text()); m != nil && !sent {
				found <- m[1]
				sent = true
			}
		}
		if !sent {
			close(found)
		}
	}()
	select {
	case u, ok := <-found:
		if !ok {
			t.Fatalf("serve exited before listening:\n%s", p.stderr)
		}
		p.url = u
	case <-time.After(30 * time.Second):
		t.Fatalf("serve did not start:\n%s", p.stderr)
	}
	return p
}

func needNixDB(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("-short")
	}
	if _, err := os.Stat("/nix/var/nix/db/db.sqlite"); err != nil {
		t.Skip("no Nix store here")
	}
	for _, bin := range []string{"nix-build", "nix-store"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not installed", bin)
		}
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (root's single-user store)")
	}
}

// buildBig builds a ~32 MiB path (rooted by an out link in a temp dir).
func buildBig(t *testing.T) string {
	t.Helper()
	tagB := make([]byte, 5)
	rand.Read(tagB)
	expr := fmt.Sprintf(`derivation { name = "serve-big-%s"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "s=0123456789abcdef; i=0; while [ $i -lt 16 ]; do s=$s$s; i=$((i+1)); done; i=0; while [ $i -lt 32 ]; do echo $s >> $out; i=$((i+1)); done" ]; }`,
		nixbase32.EncodeToString(tagB))
	home := t.TempDir()
	cmd := exec.Command("nix-build", "--out-link", filepath.Join(t.TempDir(), "result"), "-E", expr)
	cmd.Env = append(os.Environ(), "HOME="+home, "XDG_CACHE_HOME="+filepath.Join(home, ".cache"), "NIX_CONFIG=substituters =")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("nix-build: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// TestServeDefaultsAndGracefulShutdown runs the real binary with no
// config: it must create its key in the state dir, print it with the
// nix.conf lines, serve the local store, and on SIGTERM finish a download
// that is in flight before exiting 0.
func TestServeDefaultsAndGracefulShutdown(t *testing.T) {
	needNixDB(t)
	big := buildBig(t)
	state := filepath.Join(t.TempDir(), "state")
	p := startServe(t, "--bind", "127.0.0.1:0", "--state-dir", state, "--compression", "none")

	sec := filepath.Join(state, "signing-key.sec")
	fi, err := os.Stat(sec)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("state key: %v %v", fi, err)
	}
	k, err := narinfo.LoadSecretKeyFile(sec)
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	if k.Name() != host+"-1" {
		t.Errorf("key name %q, want %q", k.Name(), host+"-1")
	}
	out := p.stdout.String()
	for _, want := range []string{"Public key: " + k.Public().String(), "substituters = " + p.url, "trusted-public-keys = " + k.Public().String()} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout lacks %q:\n%s", want, out)
		}
	}

	// Start downloading the big NAR, read a little, then SIGTERM.
	hash := filepath.Base(big)[:32]
	resp, err := http.Get(p.url + "/" + hash + ".narinfo")
	if err != nil {
		t.Fatal(err)
	}
	ni, err := narinfo.Parse(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := ni.Verify([]narinfo.PublicKey{k.Public()}); !ok {
		t.Error("narinfo not signed with the generated key")
	}
	resp, err = http.Get(p.url + "/" + ni.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	h := sha256.New()
	if _, err := io.CopyN(h, resp.Body, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// New connections are refused soon after the signal...
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", strings.TrimPrefix(p.url, "http://"), time.Second)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("still accepting connections after SIGTERM")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// ...but the running download completes, slowly read.
	buf := make([]byte, 256<<10)
	for {
		n, err := resp.Body.Read(buf)
		h.Write(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("in-flight download broken by shutdown: %v", err)
		}
		time.Sleep(time.Millisecond)
	}
	if !bytes.Equal(h.Sum(nil), ni.NarHash.Digest) {
		t.Error("download finished during shutdown does not match NarHash")
	}
	select {
	case <-p.exited:
		if p.err != nil {
			t.Errorf("serve exited with %v:\n%s", p.err, p.stderr)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not exit after the download finished")
	}

	// A second start reuses the key instead of making another.
	p2 := startServe(t, "--bind", "127.0.0.1:0", "--state-dir", state)
	if strings.Contains(p2.stdout.String(), "Created signing key") || !strings.Contains(p2.stdout.String(), k.Public().String()) {
		t.Errorf("second start did not reuse the key:\n%s", p2.stdout)
	}
}

// TestServeUnixSocket: unix:/path listens with mode 0666 and replaces a
// stale socket left by a killed server.
func TestServeUnixSocket(t *testing.T) {
	needNixDB(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "cache.sock")
	cfg := filepath.Join(dir, "c.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("bind = %q\nstate_dir = %q\n", "unix:"+sock, filepath.Join(dir, "state"))), 0o644)
	for round := range 2 {
		p := startServe(t, "--config", cfg)
		fi, err := os.Stat(sock)
		if err != nil || fi.Mode().Perm() != 0o666 || fi.Mode()&os.ModeSocket == 0 {
			t.Fatalf("socket: %v %v", fi, err)
		}
		client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
		resp, err := client.Get("http://cache/nix-cache-info")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(body), "StoreDir: /nix/store") {
			t.Errorf("round %d: %q", round, body)
		}
		p.cmd.Process.Kill() // leaves the socket file behind
		<-p.exited
	}
}

func TestServeConfigErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.toml")
	os.WriteFile(bad, []byte("bind = \"127.0.0.1:0\"\nsign_key_pathz = []\n"), 0o644)
	var out, errb bytes.Buffer
	env := &cli.Env{Stdout: &out, Stderr: &errb, Stdin: strings.NewReader("")}
	code := cli.Main("cache", "test", []*cli.Command{newServeCommand()}, []string{"serve", "--config", bad}, env)
	if code == 0 || !strings.Contains(errb.String(), "sign_key_pathz") {
		t.Errorf("unknown key: exit %d, stderr %q", code, errb.String())
	}
	errb.Reset()
	code = cli.Main("cache", "test", []*cli.Command{newServeCommand()}, []string{"serve", "--compression", "brotli", "--state-dir", dir}, env)
	if code != 2 || !strings.Contains(errb.String(), "compression") {
		t.Errorf("bad --compression: exit %d, stderr %q", code, errb.String())
	}
}

// TestServeAsNobody: after `serve --prepare-db` as root, the server runs
// as nobody (reading, never writing, the database) and serves the store.
func TestServeAsNobody(t *testing.T) {
	needNixDB(t)
	big := buildBig(t)
	bin := cacheBinary(t)
	// The binary and a state dir nobody can use.
	dir, err := os.MkdirTemp("", "concordia-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	nbin := filepath.Join(dir, "cache")
	data, _ := os.ReadFile(bin)
	if err := os.WriteFile(nbin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "state")
	os.Mkdir(state, 0o700)
	if err := os.Chown(state, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	// Nix deletes the -wal/-shm files when its last process closes the
	// database, which other tests' nix runs may do at any moment before
	// our server has opened it: retry a few times.
	var url string
	for attempt := 0; attempt < 5 && url == ""; attempt++ {
		if out, err := exec.Command(nbin, "serve", "--prepare-db").CombinedOutput(); err != nil {
			t.Fatalf("--prepare-db: %v\n%s", err, out)
		}
		cmd := exec.Command(nbin, "serve", "--bind", "127.0.0.1:0", "--state-dir", state)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		cmd.Env = []string{"HOME=/nonexistent", "PATH=/usr/bin:/bin"}
		out := &syncbuf.Buffer{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		t.Cleanup(func() { cmd.Process.Kill(); <-exited })
		for i := 0; i < 100 && url == ""; i++ {
			if m := servingRE.FindStringSubmatch(out.String()); m != nil {
				url = m[1]
			}
			select {
			case <-exited:
				i = 100
			case <-time.After(50 * time.Millisecond):
			}
		}
		if url == "" {
			t.Logf("attempt %d: %s", attempt, out.String())
		}
	}
	if url == "" {
		t.Fatal("serve as nobody did not start")
	}
	resp, err := http.Get(url + "/" + filepath.Base(big)[:32] + ".narinfo")
	if err != nil {
		t.Fatal(err)
	}
	ni, err := narinfo.Parse(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("narinfo as nobody: %d %v", resp.StatusCode, err)
	}
	resp, err = http.Get(url + "/" + ni.URL)
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || n == 0 {
		t.Errorf("NAR as nobody: %d, %d bytes, %v", resp.StatusCode, n, err)
	}
}

// TestServeHarmoniaEnvironment: CONFIG_FILE, SIGN_KEY_PATH and
// SIGN_KEY_PATHS work as in Harmonia; flags still win for bind.
func TestServeHarmoniaEnvironment(t *testing.T) {
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "settings.toml")
	os.WriteFile(cfgFile, []byte("bind = \"127.0.0.1:5999\"\npriority = 41\nsign_key_paths = [\"/a\"]\n"), 0o644)
	t.Setenv("CONFIG_FILE", cfgFile)
	t.Setenv("SIGN_KEY_PATH", "/b")
	t.Setenv("SIGN_KEY_PATHS", "/c  /d")
	cfg, err := loadServeConfig(serveOptions{bind: "127.0.0.1:0", signKeys: stringList{"/e"}, stateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Priority != 41 || cfg.Bind != "127.0.0.1:0" {
		t.Errorf("CONFIG_FILE not read or flags not applied: %+v", cfg)
	}
	if got := strings.Join(cfg.SignKeyPaths, " "); got != "/a /b /c /d /e" {
		t.Errorf("sign keys %q", got)
	}
}
