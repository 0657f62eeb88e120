package server_test

// Integration tests against the real Nix client and the machine's real
// store (read through internal/store/local): the server's output must be
// what `nix copy`, `nix-store --realise` and `nix store verify` accept.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/syncbuf"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/bos55/concordia/internal/compress"
	"github.com/bos55/concordia/internal/server"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/local"
	"github.com/bos55/concordia/internal/zstdcache"
	"github.com/bos55/concordia/pkg/narinfo"
)

func needNix(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: skipping tests that run nix")
	}
	for _, bin := range []string{"nix", "nix-build", "nix-store"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not installed", bin)
		}
	}
	if _, err := os.Stat(local.DefaultDBPath); err != nil {
		t.Skip("no Nix database:", err)
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: the store here is root's single-user store")
	}
}

// nixEnv gives every nix run its own HOME and cache (the client caches
// narinfo answers in ~/.cache/nix, which would hide bugs) and no
// substituters except those a command names.
func nixEnv(t testing.TB) []string {
	home := t.TempDir()
	return append(os.Environ(), "HOME="+home, "XDG_CACHE_HOME="+filepath.Join(home, ".cache"),
		"NIX_CONFIG=experimental-features = nix-command\nsubstituters =\nconnect-timeout = 5")
}

func runNix(t testing.TB, env []string, name string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.Bytes())
	}
	return out
}

// closureExpr builds, under a fresh tag: a (text), b (dir with an
// executable, a symlink and a reference to a), c (refers to b and itself,
// plus a 1.5 MB file so the NAR spans many buffers), gone (to be deleted).
const closureExpr = `{ tag }:
let mk = name: script: derivation { name = "${name}-${tag}"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ]; };
in rec {
  a = mk "a" "echo this-is-the-build-log-of-a; echo hello-a > $out";
  b = mk "b" ''
    /bin/mkdir -p $out/bin $out/share
    echo ${a} > $out/share/ref
    printf '#!/bin/sh\necho b\n' > $out/bin/b
    /bin/chmod +x $out/bin/b
    /bin/ln -s ../share/ref $out/bin/link
  '';
  c = mk "c" ''
    /bin/mkdir $out
    echo ${b} > $out/ref
    echo $out > $out/self
    s=0123456789abcdef; i=0
    while [ $i -lt 16 ]; do s=$s$s; i=$((i+1)); done
    echo $s$s$s > $out/big
  '';
  gone = mk "gone" "echo bye > $out";
}
`

type closure struct {
	env   []string
	a, b  string
	c     string
	gone  string
	paths []string // a, b, c
}

var (
	closureOnce sync.Once
	closureVal  *closure
	closureErr  string
)

// buildClosure builds closureExpr once per test binary; out links under
// a directory that lives as long as the process keep it from GC.
func buildClosure(t *testing.T) *closure {
	t.Helper()
	needNix(t)
	closureOnce.Do(func() {
		dir, err := os.MkdirTemp("", "concordia-server-nix-")
		if err != nil {
			closureErr = err.Error()
			return
		}
		tagB := make([]byte, 5)
		rand.Read(tagB)
		tag := nixbase32.EncodeToString(tagB)
		expr := filepath.Join(dir, "closure.nix")
		os.WriteFile(expr, []byte(closureExpr), 0o644)
		home := filepath.Join(dir, "home")
		env := append(os.Environ(), "HOME="+home, "XDG_CACHE_HOME="+filepath.Join(home, ".cache"),
			"NIX_CONFIG=experimental-features = nix-command\nsubstituters =")
		cmd := exec.Command("nix-build", expr, "--argstr", "tag", tag, "--out-link", filepath.Join(dir, "result"), "-A", "a", "-A", "b", "-A", "c")
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			closureErr = fmt.Sprintf("nix-build: %v\n%s", err, out)
			return
		}
		lines := strings.Fields(string(out))
		lines = lines[len(lines)-3:]
		cmd = exec.Command("nix-build", expr, "--argstr", "tag", tag, "--no-out-link", "-A", "gone")
		cmd.Env = env
		gone, err := cmd.Output()
		if err != nil {
			closureErr = fmt.Sprintf("nix-build gone: %v", err)
			return
		}
		closureVal = &closure{env: env, a: lines[0], b: lines[1], c: lines[2], gone: strings.TrimSpace(string(gone)), paths: lines}
	})
	if closureVal == nil {
		t.Fatal(closureErr)
	}
	return closureVal
}

type liveServer struct {
	url string
	pub narinfo.PublicKey
	srv *server.Server
	ls  *local.Store
}

func startServer(t *testing.T, compression string, mutate func(*server.Options)) *liveServer {
	t.Helper()
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ls, err := local.Open(ctx, local.Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ls.Close() })
	sk, pk, err := narinfo.GenerateKey("concordia-test-" + compression + "-1")
	if err != nil {
		t.Fatal(err)
	}
	opts := server.Options{Stores: []store.Store{ls}, Keys: []narinfo.SecretKey{sk}, Compression: compression,
		NegotiateEncoding: true, Logger: log, NarInfoTTL: time.Nanosecond}
	cc, err := zstdcache.Open(t.TempDir(), 1<<30, 1, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	opts.Cache = server.CompressCache(cc)
	opts.Collectors = cc.Collectors()
	if mutate != nil {
		mutate(&opts)
	}
	srv, err := server.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)
	return &liveServer{url: ts.URL, pub: pk, srv: srv, ls: ls}
}

func TestNixClientsAgainstServer(t *testing.T) {
	cl := buildClosure(t)
	for _, comp := range []string{"zstd", "none"} {
		t.Run(comp, func(t *testing.T) {
			s := startServer(t, comp, nil)
			env := nixEnv(t)
			dst := filepath.Join(t.TempDir(), "store")
			sigOpts := []string{"--option", "require-sigs", "true", "--option", "trusted-public-keys", s.pub.String()}
			runNix(t, env, "nix", append([]string{"copy", "--from", s.url, "--to", dst, cl.c}, sigOpts...)...)
			for _, p := range cl.paths {
				if _, err := os.Stat(filepath.Join(dst, "nix/store", filepath.Base(p))); err != nil {
					t.Errorf("nix copy did not bring %s: %v", p, err)
				}
			}
			runNix(t, env, "nix", "store", "verify", "--store", dst, "--sigs-needed", "1",
				"--trusted-public-keys", s.pub.String(), "-r", cl.c)

			// nix-store --realise through --option substituters, into
			// another fresh store.
			dst2 := filepath.Join(t.TempDir(), "store2")
			runNix(t, nixEnv(t), "nix-store", append([]string{"--realise", cl.c, "--store", dst2,
				"--option", "substituters", s.url}, sigOpts...)...)
			if _, err := os.Stat(filepath.Join(dst2, "nix/store", filepath.Base(cl.a))); err != nil {
				t.Errorf("nix-store --realise did not substitute the closure: %v", err)
			}

			// A cache signed by a key the client does not trust is refused.
			other, _, _ := narinfo.GenerateKey("someone-else-1")
			dst3 := filepath.Join(t.TempDir(), "store3")
			cmd := exec.Command("nix", "copy", "--from", s.url, "--to", dst3, cl.a,
				"--option", "require-sigs", "true", "--option", "trusted-public-keys", other.Public().String())
			cmd.Env = nixEnv(t)
			if out, err := cmd.CombinedOutput(); err == nil {
				t.Errorf("nix copy accepted paths signed by an untrusted key:\n%s", out)
			}
		})
	}
}

func get(t testing.TB, url string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	// A bare transport: no transparent gzip, no Accept-Encoding added.
	resp, err := (&http.Transport{DisableCompression: true}).RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp, body
}

func fetchNarinfo(t testing.TB, base, p string) *narinfo.NarInfo {
	t.Helper()
	resp, body := get(t, base+"/"+filepath.Base(p)[:32]+".narinfo")
	if resp.StatusCode != 200 {
		t.Fatalf("narinfo of %s: %d %s", p, resp.StatusCode, body)
	}
	ni, err := narinfo.Parse(bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	return ni
}

func TestNARBytesEqualNixStoreDump(t *testing.T) {
	cl := buildClosure(t)
	s := startServer(t, "zstd", nil)
	for _, p := range cl.paths {
		want := runNix(t, cl.env, "nix-store", "--dump", p)
		ni := fetchNarinfo(t, s.url, p)
		if ni.NarSize != uint64(len(want)) {
			t.Errorf("%s: NarSize %d, dump is %d", p, ni.NarSize, len(want))
		}
		hash := filepath.Base(p)[:32]
		nh := ni.NarHash.String()[7:]
		for _, tc := range []struct {
			url, ae string
			zst     bool
		}{
			{"/" + ni.URL, "", true},                           // .nar.zst
			{"/nar/" + hash + "-" + nh + ".nar", "", false},    // identity
			{"/nar/" + hash + "-" + nh + ".nar", "zstd", true}, // Content-Encoding
			{"/nar/" + nh + ".nar?hash=" + hash, "", false},    // Harmonia
			{"/nar/" + hash + ".nar", "", false},               // nix-serve legacy
		} {
			resp, body := get(t, s.url+tc.url, "Accept-Encoding", tc.ae)
			if resp.StatusCode != 200 {
				t.Fatalf("%s: %d", tc.url, resp.StatusCode)
			}
			if tc.zst {
				body = unzstd(t, body)
			}
			if !bytes.Equal(body, want) {
				t.Errorf("%s (AE %q): %d bytes differ from nix-store --dump (%d)", tc.url, tc.ae, len(body), len(want))
			}
		}
	}
}

// listingNode is the .ls JSON as Nix writes it.
type listingNode struct {
	Type       string                 `json:"type"`
	Size       int64                  `json:"size"`
	Executable bool                   `json:"executable"`
	NarOffset  int64                  `json:"narOffset"`
	Target     string                 `json:"target"`
	Entries    map[string]listingNode `json:"entries"`
}

func TestListingOffsetsPointAtContents(t *testing.T) {
	cl := buildClosure(t)
	s := startServer(t, "zstd", nil)
	for _, p := range []string{cl.b, cl.c} {
		dump := runNix(t, cl.env, "nix-store", "--dump", p)
		resp, body := get(t, s.url+"/"+filepath.Base(p)[:32]+".ls")
		if resp.StatusCode != 200 {
			t.Fatalf("%s.ls: %d", p, resp.StatusCode)
		}
		var doc struct {
			Version int         `json:"version"`
			Root    listingNode `json:"root"`
		}
		if err := json.Unmarshal(body, &doc); err != nil || doc.Version != 1 {
			t.Fatalf("listing: %v %s", err, body)
		}
		files := 0
		var walk func(rel string, n listingNode)
		walk = func(rel string, n listingNode) {
			switch n.Type {
			case "regular":
				files++
				content, err := os.ReadFile(filepath.Join(p, rel))
				if err != nil {
					t.Fatal(err)
				}
				if n.Size != int64(len(content)) || !bytes.Equal(dump[n.NarOffset:n.NarOffset+n.Size], content) {
					t.Errorf("%s/%s: narOffset %d does not point at its contents", p, rel, n.NarOffset)
				}
			case "directory":
				for name, e := range n.Entries {
					walk(filepath.Join(rel, name), e)
				}
			case "symlink":
				if target, _ := os.Readlink(filepath.Join(p, rel)); target != n.Target {
					t.Errorf("%s/%s: target %q, want %q", p, rel, n.Target, target)
				}
			}
		}
		walk("", doc.Root)
		if files == 0 {
			t.Errorf("%s: no files in listing", p)
		}
	}
}

// TestResumeWithRange cuts a download half-way and resumes it with a
// Range request; the joined bytes must have the narinfo's NarHash.
func TestResumeWithRange(t *testing.T) {
	cl := buildClosure(t)
	s := startServer(t, "none", nil)
	ni := fetchNarinfo(t, s.url, cl.c)
	url := s.url + "/" + ni.URL
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	half := int64(ni.NarSize / 2)
	first := make([]byte, half)
	if _, err := io.ReadFull(resp.Body, first); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close() // the cut
	etag := resp.Header.Get("ETag")
	resp2, rest := get(t, url, "Range", fmt.Sprintf("bytes=%d-", half), "If-Range", etag)
	if resp2.StatusCode != 206 || resp2.Header.Get("Content-Range") != fmt.Sprintf("bytes %d-%d/%d", half, ni.NarSize-1, ni.NarSize) {
		t.Fatalf("resume: %d %q", resp2.StatusCode, resp2.Header.Get("Content-Range"))
	}
	sum := sha256.Sum256(append(first, rest...))
	if !bytes.Equal(sum[:], ni.NarHash.Digest) {
		t.Error("resumed NAR does not match NarHash")
	}
	// The same over the cached .nar.zst (complete after one full GET).
	z := startServer(t, "zstd", nil)
	zi := fetchNarinfo(t, z.url, cl.c)
	_, full := get(t, z.url+"/"+zi.URL)
	r3, tail := get(t, z.url+"/"+zi.URL, "Range", fmt.Sprintf("bytes=%d-", len(full)/2))
	if r3.StatusCode != 206 || !bytes.Equal(append(full[:len(full)/2:len(full)/2], tail...), full) {
		t.Errorf("resume of cached .nar.zst: %d", r3.StatusCode)
	}
}

func TestConcurrentClients(t *testing.T) {
	cl := buildClosure(t)
	s := startServer(t, "zstd", func(o *server.Options) { o.NarInfoTTL = time.Second })
	want := map[string][]byte{}
	for _, p := range cl.paths {
		want[p] = runNix(t, cl.env, "nix-store", "--dump", p)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 64*len(cl.paths)*3)
	client := &http.Client{Transport: &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 64}}
	for i := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, p := range cl.paths {
				h := filepath.Base(p)[:32]
				resp, err := client.Get(s.url + "/" + h + ".narinfo")
				if err != nil {
					errs <- err
					continue
				}
				ni, err := narinfo.Parse(resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != 200 {
					errs <- fmt.Errorf("narinfo %s: %d %v", h, resp.StatusCode, err)
					continue
				}
				url := s.url + "/" + ni.URL
				if i%2 == 1 {
					url = s.url + "/nar/" + h + "-" + ni.NarHash.String()[7:] + ".nar"
				}
				resp, err = client.Get(url)
				if err != nil {
					errs <- err
					continue
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != 200 {
					errs <- fmt.Errorf("nar %s: %d %v", url, resp.StatusCode, err)
					continue
				}
				if i%2 == 0 {
					d, derr := decodeZstd(body)
					if derr != nil {
						errs <- derr
						continue
					}
					body = d
				}
				if !bytes.Equal(body, want[p]) {
					errs <- fmt.Errorf("nar %s: wrong bytes", url)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	n := 0
	for err := range errs {
		n++
		if n <= 5 {
			t.Error(err)
		}
	}
	if n > 0 {
		t.Errorf("%d errors among 64 concurrent clients", n)
	}
}

// TestDeletedBetweenNarinfoAndNAR: garbage collection between the two
// requests must give a clean 404, never a truncated 200.
func TestDeletedBetweenNarinfoAndNAR(t *testing.T) {
	cl := buildClosure(t)
	for _, comp := range []string{"zstd", "none"} {
		t.Run(comp, func(t *testing.T) {
			// A fresh path per subtest: build "gone" with another tag.
			p := buildLoose(t, cl, comp)
			s := startServer(t, comp, nil)
			ni := fetchNarinfo(t, s.url, p)
			runNix(t, cl.env, "nix-store", "--delete", p)
			for _, url := range []string{"/" + ni.URL, "/nar/" + filepath.Base(p)[:32] + "-" + ni.NarHash.String()[7:] + ".nar"} {
				resp, body := get(t, s.url+url)
				if resp.StatusCode != 404 {
					t.Errorf("%s after delete: %d (%d bytes)", url, resp.StatusCode, len(body))
				}
			}
			if resp, _ := get(t, s.url+"/"+filepath.Base(p)[:32]+".narinfo"); resp.StatusCode != 404 {
				t.Errorf("narinfo after delete: %d", resp.StatusCode)
			}
		})
	}
}

// buildLoose builds an unrooted path so the test can delete it.
func buildLoose(t *testing.T, cl *closure, salt string) string {
	t.Helper()
	tagB := make([]byte, 5)
	rand.Read(tagB)
	expr := fmt.Sprintf(`derivation { name = "loose-%s-%s"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo bye > $out" ]; }`,
		salt, nixbase32.EncodeToString(tagB))
	return strings.TrimSpace(string(runNix(t, cl.env, "nix-build", "--no-out-link", "-E", expr)))
}

func decodeZstd(b []byte) ([]byte, error) {
	r, err := compress.NewReader(bytes.NewReader(b), "zstd")
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

// TestNixLogThroughServer: `nix log --store http://...` (Nix 2.8 sends no
// Accept-Encoding) gets the bzip2 build log decompressed.
func TestNixLogThroughServer(t *testing.T) {
	cl := buildClosure(t)
	s := startServer(t, "zstd", nil)
	drv := strings.TrimSpace(string(runNix(t, cl.env, "nix-store", "-qd", cl.a)))
	out := runNix(t, nixEnv(t), "nix", "log", "--store", s.url, drv)
	if !strings.Contains(string(out), "this-is-the-build-log-of-a") {
		t.Errorf("nix log through the server: %q", out)
	}
	resp, body := get(t, s.url+"/log/"+filepath.Base(drv), "Accept-Encoding", "bzip2")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Encoding") != "bzip2" || !bytes.HasPrefix(body, []byte("BZh")) {
		t.Errorf("bzip2 client: %d %q %q", resp.StatusCode, resp.Header.Get("Content-Encoding"), body[:min(len(body), 10)])
	}
}

// TestRealisationThroughServer: a content-addressed derivation's
// realisation, read from the Nix database, is what `nix realisation info`
// gets from the cache.
func TestRealisationThroughServer(t *testing.T) {
	cl := buildClosure(t)
	tagB := make([]byte, 5)
	rand.Read(tagB)
	expr := filepath.Join(t.TempDir(), "ca.nix")
	os.WriteFile(expr, []byte(fmt.Sprintf(`derivation { name = "ca-%s"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "echo ca > $out" ]; __contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256"; }`,
		nixbase32.EncodeToString(tagB))), 0o644)
	env := append(append([]string(nil), cl.env...), "NIX_CONFIG=experimental-features = nix-command ca-derivations\nsubstituters =")
	out := strings.TrimSpace(string(runNix(t, env, "nix-build", "--out-link", filepath.Join(t.TempDir(), "result"), expr)))
	drv := strings.TrimSpace(string(runNix(t, env, "nix-instantiate", expr)))
	s := startServer(t, "zstd", nil)
	cenv := append(nixEnv(t), "NIX_CONFIG=experimental-features = nix-command ca-derivations\nsubstituters =")
	info := runNix(t, cenv, "nix", "realisation", "info", "--store", s.url, "--json", drv)
	if !strings.Contains(string(info), filepath.Base(out)) {
		t.Errorf("realisation info through the cache: %s", info)
	}
	_, body := get(t, s.url+"/metrics")
	if !strings.Contains(string(body), `concordia_http_requests_total{code="200",route="realisation"}`) {
		t.Errorf("the client did not fetch the realisation from the server:\n%s", grep(string(body), "realisation"))
	}
}

// TestNixCopyOverTLS: the real client over HTTPS (Nix negotiates HTTP/2
// with TLS by default), trusting our self-signed certificate.
func TestNixCopyOverTLS(t *testing.T) {
	cl := buildClosure(t)
	logs := &syncbuf.Buffer{}
	s := startServer(t, "zstd", func(o *server.Options) {
		o.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	certFile, keyFile, _ := selfSigned(t)
	ln, err := server.Listen("127.0.0.1:0", 0)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.srv.Run(ctx, ln, server.RunOptions{TLSCert: certFile, TLSKey: keyFile}) }()
	t.Cleanup(func() { cancel(); <-done })
	url := "https://" + ln.Addr().String()
	env := append(nixEnv(t), "NIX_SSL_CERT_FILE="+certFile)
	dst := filepath.Join(t.TempDir(), "store")
	runNix(t, env, "nix", "copy", "--from", url, "--to", dst, cl.c,
		"--option", "require-sigs", "true", "--option", "trusted-public-keys", s.pub.String())
	runNix(t, env, "nix", "store", "verify", "--store", dst, "--sigs-needed", "1",
		"--trusted-public-keys", s.pub.String(), "-r", cl.c)
	if !strings.Contains(logs.String(), "route=nar status=200") || !strings.Contains(logs.String(), "proto=HTTP/2.0") {
		t.Errorf("want NARs sent over HTTP/2; access log:\n%s", logs.String())
	}
}
