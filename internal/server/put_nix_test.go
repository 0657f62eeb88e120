package server_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/server"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/local"
	"github.com/bos55/concordia/pkg/narinfo"
)

// nixClient runs the real nix CLI with its own HOME and XDG_CACHE_HOME, so
// the client's narinfo disk cache cannot hide a bug.
type nixClient struct {
	t    testing.TB
	home string
	// cacheHome, when set, is the XDG_CACHE_HOME instead of one inside
	// home: a command given its own throwaway narinfo disk cache.
	cacheHome string
	cpu       time.Duration // user+system time of the last command
}

func newNixClient(t testing.TB) *nixClient {
	t.Helper()
	if _, err := exec.LookPath("nix"); err != nil {
		t.Skip("nix not installed")
	}
	home := t.TempDir()
	if d := os.Getenv("BENCH_CLIENT_DIR"); d != "" { // e.g. /dev/shm: take the client's SQLite fsyncs out
		home, _ = os.MkdirTemp(d, "nixhome")
		t.Cleanup(func() { os.RemoveAll(home) })
	}
	return &nixClient{t: t, home: home}
}

func (n *nixClient) run(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cacheHome := n.cacheHome
	if cacheHome == "" {
		cacheHome = filepath.Join(n.home, "cache")
	}
	cmd.Env = append(os.Environ(),
		"HOME="+n.home,
		"XDG_CACHE_HOME="+cacheHome,
		"XDG_CONFIG_HOME="+filepath.Join(n.home, "config"),
		"NIX_CONFIG=experimental-features = nix-command\nsubstituters = \n",
	)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if cmd.ProcessState != nil {
		n.cpu = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	if err != nil {
		return out.String(), fmt.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

// buildUpClosure builds three derivations with references (c -> b -> a,
// c -> a) under unique names and returns the closure of c.
func buildUpClosure(t *testing.T, n *nixClient) (top string, closure []string) {
	t.Helper()
	tagb := make([]byte, 4)
	rand.Read(tagb)
	tag := hex.EncodeToString(tagb)
	expr := fmt.Sprintf(`
let
  tag = "%s";
  mk = name: script: derivation { inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ]; };
  a = mk "up-a-${tag}" "echo leaf ${tag} > $out";
  b = mk "up-b-${tag}" "/bin/mkdir $out; echo ${a} > $out/ref; echo hello > $out/f; /bin/ln -s f $out/link";
  c = mk "up-c-${tag}" "echo building c ${tag}; /bin/mkdir -p $out/bin; echo ${b} ${a} > $out/refs; printf '#!/bin/sh\necho hi\n' > $out/bin/hi; /bin/chmod +x $out/bin/hi; /bin/head -c 300000 /dev/urandom > $out/blob";
in c
`, tag)
	f := filepath.Join(t.TempDir(), "closure.nix")
	os.WriteFile(f, []byte(expr), 0o644)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := n.run(ctx, "nix-build", "--no-out-link", f)
	if err != nil {
		t.Fatal(err)
	}
	top = strings.TrimSpace(out)
	out, err = n.run(ctx, "nix-store", "-qR", top)
	if err != nil {
		t.Fatal(err)
	}
	closure = strings.Fields(out)
	slices.Sort(closure)
	if len(closure) != 3 {
		t.Fatalf("closure %v", closure)
	}
	return top, closure
}

// TestNixCopyRoundTrip: an unmodified nix copy uploads a closure with
// netrc credentials, in each compression; a second copy uploads nothing;
// and nix copy --from into a fresh store trusting only the cache's key
// gets it back, verified.
func TestNixCopyRoundTrip(t *testing.T) {
	if testing.Short() {
		t.Skip("runs nix")
	}
	n := newNixClient(t)
	top, closure := buildUpClosure(t, n)
	for _, comp := range []string{"zstd", "xz", "none"} {
		t.Run(comp, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			n := newNixClient(t) // fresh client caches per run
			e := newUpEnv(t, t.TempDir(), false)
			netrc := writeNetrc(t, "ci", e.writeTok)
			to := e.url + "?compression=" + comp

			// Without credentials the upload fails.
			if _, err := n.run(ctx, "nix", "copy", "--to", to, top); err == nil {
				t.Fatal("nix copy without credentials succeeded")
			}
			if _, err := n.run(ctx, "nix", "copy", "--option", "netrc-file", netrc, "--to", to, top); err != nil {
				t.Fatal(err)
			}
			paths, _ := e.up.Paths(ctx)
			if strings.Join(paths, " ") != strings.Join(closure, " ") {
				t.Fatalf("uploaded %v, want %v", paths, closure)
			}
			for _, p := range paths {
				ni, err := e.up.NarInfo(ctx, filepath.Base(p)[:32])
				if err != nil || ni.Compression != comp {
					t.Fatalf("%s stored with compression %v (%v), want %s", p, ni, err, comp)
				}
			}
			// A second copy, with a fresh client cache, uploads nothing.
			n2 := newNixClient(t)
			before := e.puts.Load()
			if _, err := n2.run(ctx, "nix", "copy", "--option", "netrc-file", netrc, "--to", to, top); err != nil {
				t.Fatal(err)
			}
			if d := e.puts.Load() - before; d != 0 {
				t.Fatalf("second nix copy made %d PUTs", d)
			}
			// Back into a fresh store, trusting only Concordia's key. A
			// fresh client: the uploader cached the narinfos it sent,
			// which lack the signature the cache added.
			n = newNixClient(t)
			dst := filepath.Join(t.TempDir(), "dst")
			key := e.key.Public().String()
			trust := []string{"--option", "trusted-public-keys", key, "--option", "require-sigs", "true"}
			args := append([]string{"copy"}, trust...)
			args = append(args, "--from", e.url, "--to", dst, top)
			if _, err := n.run(ctx, "nix", args...); err != nil {
				t.Fatal(err)
			}
			args = append([]string{"store", "verify", "--store", dst}, trust...)
			args = append(args, "--recursive", top)
			if _, err := n.run(ctx, "nix", args...); err != nil {
				t.Fatal(err)
			}
			// A wrong trusted key must make the same copy fail.
			_, wrong, _ := generateOtherKey()
			dst2 := filepath.Join(t.TempDir(), "dst2")
			if _, err := n.run(ctx, "nix", "copy", "--option", "trusted-public-keys", wrong,
				"--from", e.url, "--to", dst2, top); err == nil {
				t.Fatal("copy trusting another key succeeded: signatures are not checked")
			}
		})
	}
}

func generateOtherKey() (string, string, error) {
	sk, pk, err := narinfo.GenerateKey("other-key-1")
	return sk.String(), pk.String(), err
}

// TestNixCopyPrivate: with private = true, reads need a read token, and
// an unmodified client sends it from its netrc (HTTP Basic).
func TestNixCopyPrivate(t *testing.T) {
	if testing.Short() {
		t.Skip("runs nix")
	}
	n := newNixClient(t)
	top, _ := buildUpClosure(t, n)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	e := newUpEnv(t, t.TempDir(), true)
	netrc := writeNetrc(t, "ci", e.writeTok)
	if _, err := n.run(ctx, "nix", "copy", "--option", "netrc-file", netrc, "--to", e.url, top); err != nil {
		t.Fatal(err)
	}
	trust := []string{"--option", "trusted-public-keys", e.key.Public().String()}
	args := append([]string{"copy", "--from", e.url, "--to", filepath.Join(t.TempDir(), "dst")}, trust...)
	if _, err := newNixClient(t).run(ctx, "nix", append(args, top)...); err == nil {
		t.Fatal("copy from a private cache without credentials succeeded")
	}
	readNetrc := writeNetrc(t, "laptop", e.readTok)
	args = append([]string{"copy", "--option", "netrc-file", readNetrc, "--from", e.url,
		"--to", filepath.Join(t.TempDir(), "dst")}, trust...)
	if _, err := newNixClient(t).run(ctx, "nix", append(args, top)...); err != nil {
		t.Fatal(err)
	}
}

// TestNixCopyServedFromUploadOnly: after the closure is uploaded and
// deleted from the machine's /nix/store, a server answering from the
// local store first still serves it, from the upload store.
func TestNixCopyServedFromUploadOnly(t *testing.T) {
	if testing.Short() {
		t.Skip("runs nix")
	}
	n := newNixClient(t)
	top, closure := buildUpClosure(t, n)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ls, err := local.Open(ctx, local.Options{})
	if err != nil {
		t.Skipf("local store: %v", err)
	}
	t.Cleanup(func() { ls.Close() })
	// Upload to a server with the upload store only: one that answered
	// from the local store first would make nix copy skip these paths
	// (its narinfo GETs say 200), see the report.
	e := newUpEnv(t, t.TempDir(), false)
	netrc := writeNetrc(t, "ci", e.writeTok)
	if _, err := n.run(ctx, "nix", "copy", "--option", "netrc-file", netrc, "--to", e.url, top); err != nil {
		t.Fatal(err)
	}
	if paths, _ := e.up.Paths(ctx); len(paths) != len(closure) {
		t.Fatalf("uploaded %v", paths)
	}
	if _, err := n.run(ctx, "nix-store", "--delete", top, closure[0], closure[1], closure[2]); err != nil {
		t.Fatal(err)
	}
	for _, p := range closure {
		if _, err := os.Stat(p); err == nil {
			t.Fatalf("%s still in /nix/store", p)
		}
	}
	// Now a server asking the local store first (prefer = "local").
	srv, err := server.New(server.Options{Stores: []store.Store{ls, e.up}, Keys: []narinfo.SecretKey{e.key}})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	substituteVerified(ctx, t, hs.URL, e.key.Public().String(), top)
}

// TestNixCopyLog: `nix store copy-log --to` uploads a build log (PUT
// /log/<drv>), and `nix log` reads it back from the cache.
func TestNixCopyLog(t *testing.T) {
	if testing.Short() {
		t.Skip("runs nix")
	}
	n := newNixClient(t)
	top, _ := buildUpClosure(t, n)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := n.run(ctx, "nix-store", "-qd", top)
	if err != nil {
		t.Fatal(err)
	}
	drv := strings.TrimSpace(out)
	want, err := n.run(ctx, "nix-store", "-l", drv)
	if err != nil {
		t.Skipf("no local build log: %v", err)
	}
	e := newUpEnv(t, t.TempDir(), false)
	netrc := writeNetrc(t, "ci", e.writeTok)
	if _, err := n.run(ctx, "nix", "store", "copy-log", "--option", "netrc-file", netrc, "--to", e.url, drv); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(want, "building c") {
		t.Fatalf("local log %q lacks the builder's output", want)
	}
	code, body := e.do(t, "GET", "/log/"+filepath.Base(drv), "", nil)
	if code != 200 || body != want {
		t.Fatalf("GET log: %d %q, want %q", code, body, want)
	}
}

// TestNixCopyListing: with write-nar-listing=1 nix copy PUTs <hash>.ls
// before the narinfo; it is accepted and kept with the path.
func TestNixCopyListing(t *testing.T) {
	if testing.Short() {
		t.Skip("runs nix")
	}
	n := newNixClient(t)
	top, closure := buildUpClosure(t, n)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	e := newUpEnv(t, t.TempDir(), false)
	netrc := writeNetrc(t, "ci", e.writeTok)
	if _, err := n.run(ctx, "nix", "copy", "--option", "netrc-file", netrc, "--to", e.url+"?write-nar-listing=1&compression=zstd", top); err != nil {
		t.Fatal(err)
	}
	for _, p := range closure {
		ls, err := e.up.Listing(ctx, filepath.Base(p)[:32])
		if err != nil || !strings.HasPrefix(string(ls), `{"version":1,"root":{`) {
			t.Fatalf("listing of %s: %q %v", p, ls, err)
		}
		// The server computes .ls from the NAR; it must equal Nix's.
		if code, body := e.do(t, "GET", "/"+filepath.Base(p)[:32]+".ls", "", nil); code != 200 || body != string(ls) {
			t.Errorf("GET .ls of %s: %d\n%s\nNix uploaded:\n%s", p, code, body, ls)
		}
	}
}

// TestNixCopyConcurrent: two unmodified clients push the same closure at
// once; both succeed and each NAR is stored once.
func TestNixCopyConcurrent(t *testing.T) {
	if testing.Short() {
		t.Skip("runs nix")
	}
	n := newNixClient(t)
	top, closure := buildUpClosure(t, n)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	e := newFileUpEnv(t, dir) // counts the files
	netrc := writeNetrc(t, "ci", e.writeTok)
	errs := make(chan error, 2)
	for range 2 {
		c := newNixClient(t)
		go func() {
			_, err := c.run(ctx, "nix", "copy", "--option", "netrc-file", netrc, "--to", e.url+"?compression=zstd", top)
			errs <- err
		}()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	ents, _ := os.ReadDir(filepath.Join(dir, "blobs"))
	if len(ents) != len(closure) {
		t.Fatalf("%d blob files for %d paths: %v", len(ents), len(closure), ents)
	}
	if paths, _ := e.up.Paths(ctx); len(paths) != len(closure) {
		t.Fatalf("paths %v", paths)
	}
}

// TestNixUploaderSubstitutes: the uploading client keeps the narinfos it
// PUT in its disk cache (URL nar/<filehash>.nar.zst, without the cache's
// signature), and fetching through them works: those URLs are served.
func TestNixUploaderSubstitutes(t *testing.T) {
	if testing.Short() {
		t.Skip("runs nix")
	}
	n := newNixClient(t)
	top, _ := buildUpClosure(t, n)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	e := newUpEnv(t, t.TempDir(), false)
	netrc := writeNetrc(t, "ci", e.writeTok)
	if _, err := n.run(ctx, "nix", "copy", "--option", "netrc-file", netrc, "--to", e.url+"?compression=zstd", top); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "dst")
	if _, err := n.run(ctx, "nix", "copy", "--no-check-sigs", "--from", e.url, "--to", dst, top); err != nil {
		t.Fatal(err)
	}
	if got := e.blobGets.Load(); got != 3 {
		t.Fatalf("%d GETs of nar/<filehash> URLs, want 3 (the client's cached narinfos)", got)
	}
	if _, err := n.run(ctx, "nix", "store", "verify", "--no-trust", "--store", dst, "--recursive", top); err != nil {
		t.Fatal(err)
	}
}

// substituteVerified has a fresh client (its disk cache has never seen
// these paths), trusting only key, copy top from the cache at url into a
// fresh chroot store and verify it there; it returns the store's root.
func substituteVerified(ctx context.Context, t *testing.T, url, key, top string) string {
	t.Helper()
	c := newNixClient(t)
	dst := filepath.Join(t.TempDir(), "dst")
	trust := []string{"--option", "trusted-public-keys", key, "--option", "require-sigs", "true"}
	if _, err := c.run(ctx, "nix", append(append([]string{"copy"}, trust...), "--from", url, "--to", dst, top)...); err != nil {
		t.Fatal(err)
	}
	if _, err := c.run(ctx, "nix", append(append([]string{"store", "verify", "--store", dst}, trust...), "--recursive", top)...); err != nil {
		t.Fatal(err)
	}
	return dst
}

// writeNetrc writes a netrc giving the loopback server login's token, for
// nix's --option netrc-file, and returns its path.
func writeNetrc(t testing.TB, login, token string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "netrc")
	if err := os.WriteFile(p, []byte("machine 127.0.0.1 login "+login+" password "+token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestNixCopyCannotReplacePath: a path the cache serves, uploaded by an
// unmodified nix copy or in the cache host's own /nix/store, cannot be
// given another NAR with the write token (409 naming both hashes), and a
// fresh client trusting only the cache's key still gets the original and
// verifies it.
func TestNixCopyCannotReplacePath(t *testing.T) {
	if testing.Short() {
		t.Skip("runs nix")
	}
	n := newNixClient(t)
	top, closure := buildUpClosure(t, n)
	var leaf string
	for _, p := range closure {
		if strings.Contains(p, "-up-a-") {
			leaf = p
		}
	}
	want, err := os.ReadFile(leaf)
	if err != nil {
		t.Fatal(err)
	}
	for _, where := range []string{"upload store", "local store"} {
		t.Run(where, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			var e *upEnv
			if where == "local store" {
				ls, err := local.Open(ctx, local.Options{})
				if err != nil {
					t.Skipf("local store: %v", err)
				}
				t.Cleanup(func() { ls.Close() })
				e = newUpEnvWith(t, t.TempDir(), false, []store.Store{ls}, true, nil)
			} else {
				e = newUpEnv(t, t.TempDir(), false)
				netrc := writeNetrc(t, "ci", e.writeTok)
				if _, err := n.run(ctx, "nix", "copy", "--option", "netrc-file", netrc, "--to", e.url+"?compression=zstd", top); err != nil {
					t.Fatal(err)
				}
			}
			orig := e.served(t, filepath.Base(leaf)[:32])
			evil := twinOf(t, leaf, []byte("swapped leaf\n"))
			code, msg := e.putPath(t, evil)
			if code != 409 || !strings.Contains(msg, orig.ni.NarHash.String()) || !strings.Contains(msg, evil.info.NarHash.String()) {
				t.Fatalf("PUT of another NAR for %s: %d %q, want 409 naming %s and %s", leaf, code, msg, orig.ni.NarHash, evil.info.NarHash)
			}

			dst := substituteVerified(ctx, t, e.url, e.key.Public().String(), top)
			got, err := os.ReadFile(filepath.Join(dst, leaf))
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("%s in the fresh store: %q %v, want the original %q", leaf, got, err, want)
			}
		})
	}
}

// TestNixCopyRefusedAtOnce: an unmodified `nix copy --to` with a token that
// may not upload (read, pin) or none fails at once with the status the
// server sent, on a small NAR and on one far over net/http's drain limit
// (the server answers before the body and closes the connection), and
// nothing is published.
func TestNixCopyRefusedAtOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("runs nix")
	}
	n := newNixClient(t)
	top, closure := buildUpClosure(t, n)
	tagb := make([]byte, 4)
	rand.Read(tagb)
	f := filepath.Join(t.TempDir(), "big.nix")
	os.WriteFile(f, []byte(fmt.Sprintf(`derivation { name = "refused-big-%x"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "/bin/head -c 3000000 /dev/urandom > $out" ]; }`, tagb)), 0o644)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := n.run(ctx, "nix-build", "--no-out-link", f)
	if err != nil {
		t.Fatal(err)
	}
	big := strings.TrimSpace(out)
	e := newUpEnv(t, t.TempDir(), false)
	for _, tc := range []struct {
		who, token, status string
	}{{"read token", e.readTok, "403"}, {"pin token", e.pinTok, "403"}, {"nobody", "", "401"}} {
		for _, path := range []string{top, big} {
			args := []string{"copy", "--to", e.url + "?compression=none", path}
			if tc.token != "" {
				args = append([]string{"copy", "--option", "netrc-file", writeNetrc(t, "x", tc.token)}, args[1:]...)
			}
			cctx, ccancel := context.WithTimeout(ctx, 90*time.Second)
			_, err := newNixClient(t).run(cctx, "nix", args...)
			timedOut := cctx.Err() != nil
			ccancel()
			if err == nil || timedOut || !strings.Contains(err.Error(), "HTTP error "+tc.status) {
				t.Errorf("%s: nix copy %s: want a failure saying %s, got %v", tc.who, filepath.Base(path), tc.status, err)
			}
		}
	}
	for _, p := range append(closure, big) {
		if code, _ := e.do(t, "GET", "/"+filepath.Base(p)[:32]+".narinfo", "", nil); code != 404 {
			t.Errorf("%s published by a refused copy: %d", p, code)
		}
	}
}
