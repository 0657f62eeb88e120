package closure_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bos55/concordia/internal/closure"
	"github.com/bos55/concordia/pkg/narinfo"
)

// TestCheckNixCache walks a closure that real Nix built and copied to a
// signed file:// binary cache (what `nix copy --to` writes), served over
// HTTP: references, a self-reference and Nix's own signatures.
func TestCheckNixCache(t *testing.T) {
	for _, bin := range []string{"nix-build", "nix", "nix-store"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("no %s", bin)
		}
	}
	dir := t.TempDir()
	t.Setenv("HOME", filepath.Join(dir, "home"))
	t.Setenv("XDG_CACHE_HOME", filepath.Join(dir, "xdg"))
	var salt [4]byte
	rand.Read(salt[:])
	s := hex.EncodeToString(salt[:])
	// leaf <- mid (refers to itself too) <- top
	expr := fmt.Sprintf(`let
  mk = name: script: derivation { inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ]; };
  leaf = mk "closure-leaf-%[1]s" "echo leaf > $out";
  mid = mk "closure-mid-%[1]s" "echo ${leaf} $out > $out";
in mk "closure-top-%[1]s" "echo ${mid} > $out"`, s)
	run := func(name string, args ...string) string {
		t.Helper()
		out, err := exec.Command(name, args...).Output()
		if err != nil {
			var stderr []byte
			if ee, ok := err.(*exec.ExitError); ok {
				stderr = ee.Stderr
			}
			t.Fatalf("%s %v: %v %s", name, args, err, stderr)
		}
		return strings.TrimSpace(string(out))
	}
	top := run("nix-build", "--no-out-link", "-E", expr)
	paths := strings.Fields(run("nix-store", "-qR", top))
	if len(paths) != 3 {
		t.Fatalf("closure %v", paths)
	}
	sk, pk := filepath.Join(dir, "sk"), filepath.Join(dir, "pk")
	run("nix-store", "--generate-binary-cache-key", "closure-test-1", sk, pk)
	cache := filepath.Join(dir, "cache")
	run("nix", "--extra-experimental-features", "nix-command", "copy", "--to", "file://"+cache+"?compression=none&secret-key="+sk, top)
	srv := httptest.NewServer(http.FileServer(http.Dir(cache)))
	defer srv.Close()
	key, err := narinfo.LoadPublicKeyFile(pk)
	if err != nil {
		t.Fatal(err)
	}
	_, other, _ := narinfo.GenerateKey("other-1")
	ctx := context.Background()

	res, err := (&closure.Checker{Cache: srv.URL, Trusted: []narinfo.PublicKey{key}}).Check(ctx, top)
	if err != nil || !res.OK() || res.Paths != 3 {
		t.Fatalf("signed closure: %+v %v", res, err)
	}
	res, err = (&closure.Checker{Cache: srv.URL, Trusted: []narinfo.PublicKey{other}}).Check(ctx, top)
	if err != nil || len(res.Unsigned) != 3 {
		t.Fatalf("untrusted key: %+v %v", res, err)
	}
	var leaf string
	for _, p := range paths {
		if strings.Contains(p, "closure-leaf-") {
			leaf = p
		}
	}
	if err := os.Remove(filepath.Join(cache, filepath.Base(leaf)[:32]+".narinfo")); err != nil {
		t.Fatal(err)
	}
	res, err = (&closure.Checker{Cache: srv.URL, Trusted: []narinfo.PublicKey{key}}).Check(ctx, top)
	if err != nil || len(res.Missing) != 1 || res.Missing[0] != leaf || res.Paths != 2 {
		t.Fatalf("missing leaf: %+v %v", res, err)
	}
}
