package app_test

// The harness of the pull-through tests: a real upstream (a file://
// binary cache written and signed by real Nix, served by a real nginx on
// loopback), a cache opened in-process with an [[upstream]] table
// pointing at it, and real Nix clients each with their own HOME and
// XDG_CACHE_HOME (Nix keeps narinfo answers on disk and would hide bugs).

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/bos55/concordia/internal/app"
	"github.com/bos55/concordia/internal/auth"
	"github.com/bos55/concordia/internal/compress"
	"github.com/bos55/concordia/internal/limits"
	"github.com/bos55/concordia/internal/syncbuf"
	"github.com/bos55/concordia/pkg/narinfo"
)

// needPullTools skips unless the real parts are here: nix (and root, for
// the machine's single-user store) and nginx.
func needPullTools(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: skipping tests that run nix and nginx")
	}
	for _, bin := range []string{"nix", "nix-build", "nix-store"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not installed", bin)
		}
	}
	if _, err := os.Stat("/nix/var/nix/db/db.sqlite"); err != nil {
		t.Skip("no Nix database:", err)
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: the store here is root's single-user store")
	}
	if nginxBin() == "" {
		t.Skip("nginx not installed (scripts/test.sh installs it)")
	}
}

func nginxBin() string {
	if p, err := exec.LookPath("nginx"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/nginx"); err == nil {
		return "/usr/sbin/nginx"
	}
	return ""
}

// nixUser runs the nix CLI as one client: its own HOME, XDG_CACHE_HOME
// and no substituters but those a command names.
type nixUser struct {
	t    testing.TB
	home string
}

func newNixUser(t testing.TB) *nixUser {
	return &nixUser{t: t, home: t.TempDir()}
}

func (n *nixUser) run(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(),
		"HOME="+n.home,
		"XDG_CACHE_HOME="+filepath.Join(n.home, "cache"),
		"XDG_CONFIG_HOME="+filepath.Join(n.home, "config"),
		"NIX_CONFIG=experimental-features = nix-command\nsubstituters =\nconnect-timeout = 5\n",
	)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

func (n *nixUser) must(ctx context.Context, name string, args ...string) string {
	n.t.Helper()
	out, err := n.run(ctx, name, args...)
	if err != nil {
		n.t.Fatal(err)
	}
	return out
}

// pullClosureExpr: a (text), b (a directory referring to a, with an
// executable and a symlink), c (refers to b and a, with 4 MiB of random
// bytes: a NAR long enough for readers to overlap its download), all in
// the upstream; top refers to c's closure and is not in the upstream.
const pullClosureExpr = `{ tag }:
let mk = name: script: derivation { name = "${name}-${tag}"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ]; };
in rec {
  a = mk "pull-a" "echo leaf-a > $out";
  b = mk "pull-b" ''
    /bin/mkdir -p $out/bin
    echo ${a} > $out/ref
    printf '#!/bin/sh\necho b\n' > $out/bin/b
    /bin/chmod +x $out/bin/b
    /bin/ln -s ../ref $out/bin/link
  '';
  c = mk "pull-c" ''
    /bin/mkdir $out
    echo ${b} ${a} > $out/refs
    /bin/head -c 4194304 /dev/urandom > $out/random
  '';
  top = mk "pull-top" ''
    /bin/mkdir $out
    echo ${c} ${b} > $out/refs
    echo built-here > $out/local
  '';
}
`

// pullFixture is what every pull-through test shares, made once per test
// binary: the closure in the machine's store, the upstream's key (made
// by nix-store --generate-binary-cache-key) and the upstream's file://
// cache of a, b and c, xz-compressed and signed by real Nix.
type pullFixture struct {
	a, b, c, top string // store paths
	skFile       string
	pk           string // "cache.nixos.org-1:..."
	dir          string // the file:// cache nginx serves
}

var (
	pullOnce sync.Once
	pullFix  *pullFixture
	pullErr  error
)

func pullFixtures(t *testing.T) *pullFixture {
	t.Helper()
	needPullTools(t)
	pullOnce.Do(func() { pullFix, pullErr = makePullFixture() })
	if pullErr != nil {
		t.Fatal(pullErr)
	}
	return pullFix
}

func makePullFixture() (*pullFixture, error) {
	// Out links in a directory that lives as long as the process keep
	// the paths from a GC; removed by nobody (as in server/nix_test.go).
	dir, err := os.MkdirTemp("", "concordia-pull-")
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	n := &nixUser{home: filepath.Join(dir, "home")}
	tagB := make([]byte, 5)
	rand.Read(tagB)
	expr := filepath.Join(dir, "closure.nix")
	if err := os.WriteFile(expr, []byte(pullClosureExpr), 0o644); err != nil {
		return nil, err
	}
	out, err := n.run(ctx, "nix-build", expr, "--argstr", "tag", nixbase32.EncodeToString(tagB),
		"--out-link", filepath.Join(dir, "result"), "-A", "a", "-A", "b", "-A", "c", "-A", "top")
	if err != nil {
		return nil, err
	}
	p := strings.Fields(out)
	if len(p) < 4 {
		return nil, fmt.Errorf("nix-build printed %q", out)
	}
	p = p[len(p)-4:]
	f := &pullFixture{a: p[0], b: p[1], c: p[2], top: p[3],
		skFile: filepath.Join(dir, "upstream.sk"), dir: filepath.Join(dir, "upstream")}
	pkFile := filepath.Join(dir, "upstream.pk")
	if _, err := n.run(ctx, "nix-store", "--generate-binary-cache-key", "cache.nixos.org-1", f.skFile, pkFile); err != nil {
		return nil, err
	}
	pk, err := os.ReadFile(pkFile)
	if err != nil {
		return nil, err
	}
	f.pk = strings.TrimSpace(string(pk))
	if _, err := n.run(ctx, "nix", "copy", "--to", "file://"+f.dir+"?compression=xz&secret-key="+f.skFile, f.c); err != nil {
		return nil, err
	}
	return f, nil
}

// upstreamNarinfo is the upstream's own narinfo of a store path, as Nix
// wrote it.
func (f *pullFixture) upstreamNarinfo(t *testing.T, storePath string) *narinfo.NarInfo {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(f.dir, hashOf(storePath)+".narinfo"))
	if err != nil {
		t.Fatal(err)
	}
	ni, err := narinfo.Parse(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	return ni
}

func hashOf(storePath string) string { return filepath.Base(storePath)[:32] }

// nginxUpstream is a real nginx serving a file:// cache on loopback,
// logging every request (unbuffered) so a test counts what reached it.
type nginxUpstream struct {
	url       string
	accessLog string
	cmd       *exec.Cmd
	stopOnce  sync.Once
}

func startNginx(t *testing.T, root string) *nginxUpstream {
	t.Helper()
	d := t.TempDir()
	if err := os.MkdirAll(filepath.Join(d, "tmp"), 0o755); err != nil {
		t.Fatal(err)
	}
	var last error
	for range 5 { // the free port may be taken between the probe and nginx's bind
		port := freePort(t)
		conf := fmt.Sprintf(`daemon off;
master_process on;
user root root;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
events { worker_connections 256; }
http {
  access_log %[1]s/access.log;
  sendfile on;
  client_body_temp_path %[1]s/tmp;
  proxy_temp_path %[1]s/tmp;
  fastcgi_temp_path %[1]s/tmp;
  uwsgi_temp_path %[1]s/tmp;
  scgi_temp_path %[1]s/tmp;
  types { text/x-nix-narinfo narinfo; text/x-nix-cache-info nix-cache-info; application/x-nix-nar nar xz zst; }
  default_type application/octet-stream;
  server {
    listen 127.0.0.1:%[2]d;
    root %[3]s;
  }
}
`, d, port, root)
		cf := filepath.Join(d, "nginx.conf")
		if err := os.WriteFile(cf, []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(nginxBin(), "-c", cf, "-p", d)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		var out syncbuf.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		n := &nginxUpstream{url: fmt.Sprintf("http://127.0.0.1:%d", port), accessLog: filepath.Join(d, "access.log"), cmd: cmd}
		if err := waitListening(fmt.Sprintf("127.0.0.1:%d", port)); err != nil {
			n.stop()
			el, _ := os.ReadFile(filepath.Join(d, "error.log"))
			last = fmt.Errorf("nginx: %v\n%s%s", err, out.String(), el)
			continue
		}
		t.Cleanup(n.stop)
		return n
	}
	t.Fatal(last)
	return nil
}

// stop ends nginx (its process group: master and worker) and waits.
func (n *nginxUpstream) stop() {
	n.stopOnce.Do(func() {
		_ = syscall.Kill(-n.cmd.Process.Pid, syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = n.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-n.cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	})
}

// requests counts the logged requests whose request line starts with
// prefix, e.g. "GET /nar/".
func (n *nginxUpstream) requests(t *testing.T, prefix string) int {
	t.Helper()
	b, err := os.ReadFile(n.accessLog)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return bytes.Count(b, []byte(`"`+prefix))
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// waitListening waits until addr accepts connections (nginx binds
// before it forks its worker, which then accepts them).
func waitListening(addr string) error {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		time.Sleep(30 * time.Millisecond)
	}
	return fmt.Errorf("%s not listening after 10s", addr)
}

// pullCache is a cache opened in-process from a config with one
// [[upstream]], an upload dir and a write token, behind a handler that
// counts the upload requests.
type pullCache struct {
	url      string
	app      *app.App
	writeTok string
	log      *syncbuf.Buffer
	// narinfoPUTs and narPUTs count uploads: PUT /<hash>.narinfo and
	// PUT /nar/<file>.
	narinfoPUTs, narPUTs atomic.Int64
}

// newPullCache opens the cache; upstreamExtra adds lines to the
// [[upstream]] table (timeout = "1s", ...).
func newPullCache(t *testing.T, upstreamURL, pk, upstreamExtra string) *pullCache {
	t.Helper()
	dir := t.TempDir()
	c := &pullCache{log: &syncbuf.Buffer{}}
	var wl string
	c.writeTok, wl, _ = auth.Generate("ci", auth.Read|auth.Write)
	tokens := filepath.Join(dir, "tokens")
	if err := os.WriteFile(tokens, []byte(wl+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, _ := parse(t, fmt.Sprintf("[[upstream]]\nurl = %q\npublic_keys = [%q]\n%s\n[upload]\ndir = %q\ntokens_file = %q\n",
		upstreamURL, pk, upstreamExtra, filepath.Join(dir, "up"), tokens))
	a, err := app.Open(context.Background(), cfg, slog.New(slog.NewTextHandler(c.log, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	c.app = a
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut {
			switch {
			case strings.HasSuffix(r.URL.Path, ".narinfo"):
				c.narinfoPUTs.Add(1)
			case strings.HasPrefix(r.URL.Path, "/nar/"):
				c.narPUTs.Add(1)
			}
		}
		a.Server.ServeHTTP(w, r)
	}))
	t.Cleanup(hs.Close)
	c.url = hs.URL
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("cache log:\n%s", c.log.String())
		}
	})
	return c
}

// key is the cache's own public key, as a trusted-public-keys entry.
func (c *pullCache) key() string { return c.app.Keys[0].Public().String() }

// do sends one request (with the write token when tok is set) and
// returns the status and body.
func (c *pullCache) do(t *testing.T, method, path, tok string, body []byte) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, c.url+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if tok != "" {
		req.SetBasicAuth("ci", tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// netrc writes the write token for nix copy --to (--option netrc-file).
func (c *pullCache) netrc(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "netrc")
	if err := os.WriteFile(p, []byte("machine 127.0.0.1 login ci password "+c.writeTok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// substituteInto has a fresh client (a narinfo disk cache that never saw
// these paths) copy top from the cache into a fresh chroot store,
// trusting only keys, then verify there (contents against NarHash, and
// signatures); it returns the store's root.
func substituteInto(ctx context.Context, t *testing.T, cacheURL, top string, keys ...string) string {
	t.Helper()
	n := newNixUser(t)
	dst := filepath.Join(t.TempDir(), "dst")
	trust := []string{"--option", "trusted-public-keys", strings.Join(keys, " "), "--option", "require-sigs", "true"}
	n.must(ctx, "nix", append(append([]string{"copy"}, trust...), "--from", cacheURL, "--to", dst, top)...)
	n.must(ctx, "nix", append(append([]string{"store", "verify", "--store", dst}, trust...), "--recursive", top)...)
	return dst
}

// sameTree fails unless the store path under root (a chroot store) has
// the contents of the same path in the machine's store.
func sameTree(ctx context.Context, t *testing.T, root, storePath string) {
	t.Helper()
	n := newNixUser(t)
	want := n.must(ctx, "nix-store", "--dump", storePath)
	got := n.must(ctx, "nix", "store", "dump-path", "--store", root, storePath)
	if want != got {
		t.Fatalf("%s in %s: NAR of %d bytes differs from the original's %d", storePath, root, len(got), len(want))
	}
}

// counter sums the series of a counter (or gauge) family whose labels
// match; keep nil matches all.
func counter(t *testing.T, reg prometheus.Gatherer, name string, keep func(labels map[string]string) bool) float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if keep != nil && !keep(labels) {
				continue
			}
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			}
		}
	}
	return sum
}

// verifyNARFile decodes a NAR file as the narinfo ni says and fails
// unless it is the NAR ni describes.
func verifyNARFile(ni *narinfo.NarInfo, file []byte) error {
	dec, err := compress.NewReaderLimits(bytes.NewReader(file), ni.Compression, limits.Default().Decode(int64(ni.NarSize)))
	if err != nil {
		return err
	}
	defer dec.Close()
	h := sha256.New()
	n, err := io.Copy(h, dec)
	if err != nil {
		return fmt.Errorf("decoding %s: %w", ni.Compression, err)
	}
	if uint64(n) != ni.NarSize || !bytes.Equal(h.Sum(nil), ni.NarHash.Digest) {
		return fmt.Errorf("NAR of %d bytes, sha256:%s; the narinfo says %d bytes, %s", n, nixbase32.EncodeToString(h.Sum(nil)), ni.NarSize, ni.NarHash)
	}
	return nil
}

// fetchNarinfo GETs a narinfo anonymously and parses it (nil on 404).
func (c *pullCache) narinfo(t *testing.T, hash string) (int, *narinfo.NarInfo) {
	t.Helper()
	code, body := c.do(t, http.MethodGet, "/"+hash+".narinfo", "", nil)
	if code != http.StatusOK {
		return code, nil
	}
	ni, err := narinfo.Parse(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("narinfo %s: %v\n%s", hash, err, body)
	}
	return code, ni
}
