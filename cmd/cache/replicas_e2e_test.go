package main

// Two `cache serve` processes on one S3 bucket (MinIO) and one PostgreSQL
// database, as two replicas behind a load balancer, driven by the real
// Nix client.

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/bos55/concordia/internal/auth"
	"github.com/bos55/concordia/internal/sharedtest"
	"github.com/bos55/concordia/pkg/narinfo"
)

// replicas is a shared backend and the config both replicas start from.
type replicas struct {
	env *sharedtest.Env
	key narinfo.SecretKey
	tok string // read, write, pin and admin
	cfg string // the common config: signing key, tokens, tables
	dir string
}

func newReplicas(t *testing.T) *replicas {
	t.Helper()
	r := &replicas{env: sharedtest.New(t), dir: t.TempDir()}
	sk, _, err := narinfo.GenerateKey("replicas-1")
	if err != nil {
		t.Fatal(err)
	}
	r.key = sk
	keyFile := filepath.Join(r.dir, "key.sec")
	os.WriteFile(keyFile, []byte(sk.String()), 0o600)
	tok, line, _ := auth.Generate("ci", auth.Read|auth.Write|auth.Admin)
	r.tok = tok
	tokens := filepath.Join(r.dir, "tokens")
	os.WriteFile(tokens, []byte(line+"\n"), 0o600)
	r.cfg = fmt.Sprintf("sign_key_paths = [%q]\n[upload]\ntokens_file = %q\n", keyFile, tokens) + r.env.ConfigTables(t, r.dir)
	return r
}

// start starts replica name: its own state dir (and compression cache),
// no local store, the common tables.
func (r *replicas) start(t *testing.T, name string) *serveProc {
	t.Helper()
	state := filepath.Join(r.dir, name)
	os.MkdirAll(state, 0o700)
	cfg := filepath.Join(state, "cache.toml")
	head := fmt.Sprintf("bind = \"127.0.0.1:0\"\nstate_dir = %q\nnix_db_path = \"\"\n", state)
	if err := os.WriteFile(cfg, []byte(head+r.cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return startServe(t, "--config", cfg)
}

func (r *replicas) do(t *testing.T, method, url string) (int, string) {
	t.Helper()
	return r.doBody(t, method, url, nil)
}

func (r *replicas) doBody(t *testing.T, method, url string, body []byte) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, bytes.NewReader(body))
	req.SetBasicAuth("ci", r.tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// nixRun runs nix with its own HOME and caches (the client caches narinfo
// answers and would hide bugs).
func nixRun(t *testing.T, args ...string) string {
	t.Helper()
	home := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Env = append(os.Environ(), "HOME="+home, "XDG_CACHE_HOME="+filepath.Join(home, ".cache"),
		"NIX_CONFIG=experimental-features = nix-command\nsubstituters =\nconnect-timeout = 5")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, errb.String())
	}
	return strings.TrimSpace(out.String())
}

// buildReplicaClosure builds leaf <- mid <- top (top with 2 MiB of random
// bytes, several S3 parts in no NAR, many in the file) and a path apart.
func buildReplicaClosure(t *testing.T) (top, apart string, closure []string) {
	t.Helper()
	tagB := make([]byte, 5)
	rand.Read(tagB)
	tag := nixbase32.EncodeToString(tagB)
	dir := t.TempDir()
	expr := filepath.Join(dir, "c.nix")
	os.WriteFile(expr, []byte(`{ tag }:
let mk = name: script: derivation { name = "${name}-${tag}"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ]; };
in rec {
  leaf = mk "replica-leaf" "echo leaf > $out";
  mid = mk "replica-mid" "/bin/mkdir $out; echo ${leaf} > $out/ref; /bin/ln -s ref $out/link";
  top = mk "replica-top" "/bin/mkdir $out; echo ${mid} > $out/ref; /bin/head -c 2097152 /dev/urandom > $out/random";
  apart = mk "replica-apart" "echo apart > $out";
}
`), 0o644)
	out := nixRun(t, "nix-build", expr, "--argstr", "tag", tag, "--out-link", filepath.Join(dir, "result"), "-A", "top", "-A", "apart")
	paths := strings.Fields(out)
	if len(paths) != 2 {
		t.Fatalf("nix-build printed %q", out)
	}
	top, apart = paths[0], paths[1]
	closure = strings.Fields(nixRun(t, "nix-store", "-qR", top))
	return top, apart, closure
}

// TestReplicasServeEachOthersUploads: nix copy --to replica A, nix copy
// --from replica B into a fresh store trusting only the cache's key,
// verified; a pin made through A holds against GC through B, and both
// stop serving what that GC collected.
func TestReplicasServeEachOthersUploads(t *testing.T) {
	needNixDB(t)
	r := newReplicas(t)
	a, b := r.start(t, "a"), r.start(t, "b")
	top, apart, closure := buildReplicaClosure(t)
	netrc := filepath.Join(r.dir, "netrc")
	os.WriteFile(netrc, []byte("machine 127.0.0.1 login ci password "+r.tok+"\n"), 0o600)
	aURL, bURL := strings.TrimSuffix(a.url, "/"), strings.TrimSuffix(b.url, "/")

	nixRun(t, "nix", "copy", "--option", "netrc-file", netrc, "--to", aURL+"?compression=zstd", top, apart)
	trust := []string{"--option", "trusted-public-keys", r.key.Public().String(), "--option", "require-sigs", "true", "--option", "netrc-file", netrc}
	dst := filepath.Join(t.TempDir(), "dst")
	nixRun(t, append(append([]string{"nix", "copy"}, trust...), "--from", bURL, "--to", dst, top)...)
	nixRun(t, append(append([]string{"nix", "store", "verify", "--store", dst}, trust...), "--recursive", top)...)

	hash := func(p string) string { return filepath.Base(p)[:32] }
	if code, body := r.do(t, "POST", aURL+"/api/pins/"+hash(top)); code != 200 {
		t.Fatalf("pin through A: %d %s", code, body)
	}
	// A has served apart's narinfo (its cache holds it) before B collects.
	if code, _ := r.do(t, "GET", aURL+"/"+hash(apart)+".narinfo"); code != 200 {
		t.Fatalf("apart through A: %d", code)
	}
	if code, body := r.do(t, "POST", bURL+"/api/gc?max-size=1"); code != 200 || !strings.Contains(body, hash(apart)) {
		t.Fatalf("GC through B: %d %s (want apart collected)", code, body)
	}
	for _, p := range closure {
		for _, u := range []string{aURL, bURL} {
			if code, _ := r.do(t, "GET", u+"/"+hash(p)+".narinfo"); code != 200 {
				t.Fatalf("%s through %s after GC: %d, want the pinned closure whole", p, u, code)
			}
		}
	}
	// A learns of the deletion within its narinfo cache's recheck (1 s).
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, _ := r.do(t, "GET", aURL+"/"+hash(apart)+".narinfo")
		if code == 404 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("A still answers %d for a path B collected", code)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The maintenance commands open the shared store beside the running
	// replicas (no file lock to wait for): verify finds it intact.
	for _, args := range [][]string{{"verify", "--config", filepath.Join(r.dir, "b", "cache.toml")},
		{"gc", "--dry-run", "--config", filepath.Join(r.dir, "b", "cache.toml")}} {
		if out, err := exec.Command(cacheBinary(t), args...).CombinedOutput(); err != nil {
			t.Fatalf("cache %s beside the replicas: %v\n%s", args[0], err, out)
		}
	}
	// The closure still substitutes whole from A, into another fresh store.
	dst2 := filepath.Join(t.TempDir(), "dst2")
	nixRun(t, append(append([]string{"nix", "copy"}, trust...), "--from", aURL, "--to", dst2, top)...)
	nixRun(t, append(append([]string{"nix", "store", "verify", "--store", dst2}, trust...), "--recursive", top)...)
}

// TestReplicaRedirectsToBucket: with upload.s3.redirect, a NAR GET is a
// redirect to a presigned URL of the bucket, and real Nix substitutes
// through it.
func TestReplicaRedirectsToBucket(t *testing.T) {
	needNixDB(t)
	r := newReplicas(t)
	r.cfg = strings.Replace(r.cfg, "[upload.s3]\n", "[upload.s3]\nredirect = true\n", 1)
	a := r.start(t, "a")
	top, _, _ := buildReplicaClosure(t)
	netrc := filepath.Join(r.dir, "netrc")
	os.WriteFile(netrc, []byte("machine 127.0.0.1 login ci password "+r.tok+"\n"), 0o600)
	aURL := strings.TrimSuffix(a.url, "/")
	nixRun(t, "nix", "copy", "--option", "netrc-file", netrc, "--to", aURL, top)

	_, body := r.do(t, "GET", aURL+"/"+filepath.Base(top)[:32]+".narinfo")
	var narURL string
	for _, l := range strings.Split(body, "\n") {
		if u, ok := strings.CutPrefix(l, "URL: "); ok {
			narURL = u
		}
	}
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, _ := http.NewRequest("GET", aURL+"/"+narURL, nil)
	req.SetBasicAuth("ci", r.tok)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusFound || !strings.HasPrefix(loc, r.env.MinIO.Endpoint()+"/"+r.env.Bucket+"/") {
		t.Fatalf("GET %s: %d to %q, want a redirect into the bucket", narURL, resp.StatusCode, loc)
	}
	trust := []string{"--option", "trusted-public-keys", r.key.Public().String(), "--option", "require-sigs", "true", "--option", "netrc-file", netrc}
	dst := filepath.Join(t.TempDir(), "dst")
	nixRun(t, append(append([]string{"nix", "copy"}, trust...), "--from", aURL, "--to", dst, top)...)
	nixRun(t, append(append([]string{"nix", "store", "verify", "--store", dst}, trust...), "--recursive", top)...)
}
