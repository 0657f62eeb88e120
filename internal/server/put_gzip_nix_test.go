package server_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestNixCopyGzip: Nix names a gzip NAR "<file hash>.nar", the suffix of
// no compression (its table has none for gzip), with Compression: gzip in
// the narinfo. Such a copy is taken, kept as .nar.gz, and comes back with
// nix copy --from, both through the narinfo the cache serves and through
// the one the uploader cached when it sent it (which names the bare .nar).
func TestNixCopyGzip(t *testing.T) {
	if testing.Short() {
		t.Skip("runs nix")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	n := newNixClient(t)
	top, closure := buildUpClosure(t, n)
	e := newUpEnv(t, t.TempDir(), false)
	netrc := writeNetrc(t, "ci", e.writeTok)
	if _, err := n.run(ctx, "nix", "copy", "--option", "netrc-file", netrc, "--to", e.url+"?compression=gzip", top); err != nil {
		t.Fatal(err)
	}
	paths, _ := e.up.Paths(ctx)
	if strings.Join(paths, " ") != strings.Join(closure, " ") {
		t.Fatalf("uploaded %v, want %v", paths, closure)
	}
	for _, p := range paths {
		ni, err := e.up.NarInfo(ctx, filepath.Base(p)[:32])
		if err != nil || ni.Compression != "gzip" || !strings.HasSuffix(ni.URL, ".nar.gz") {
			t.Fatalf("%s stored as %v (%v), want a .nar.gz in gzip", p, ni, err)
		}
	}

	key := e.key.Public().String()
	trust := []string{"--option", "trusted-public-keys", key, "--option", "require-sigs", "true"}
	fresh := newNixClient(t)
	dst := filepath.Join(t.TempDir(), "dst")
	args := append(append([]string{"copy"}, trust...), "--from", e.url, "--to", dst, top)
	if _, err := fresh.run(ctx, "nix", args...); err != nil {
		t.Fatal(err)
	}
	args = append(append([]string{"store", "verify", "--store", dst}, trust...), "--recursive", top)
	if _, err := fresh.run(ctx, "nix", args...); err != nil {
		t.Fatal(err)
	}

	// The uploader's cached narinfos lack the cache's signature, so it
	// checks none; what it fetches is nar/<file hash>.nar.
	before := e.blobGets.Load()
	dst2 := filepath.Join(t.TempDir(), "dst2")
	if _, err := n.run(ctx, "nix", "copy", "--option", "require-sigs", "false", "--from", e.url, "--to", dst2, top); err != nil {
		t.Fatal(err)
	}
	if _, err := n.run(ctx, "nix", "store", "verify", "--store", dst2, "--no-trust", "--recursive", top); err != nil {
		t.Fatal(err)
	}
	t.Logf("the uploader fetched %d NARs by the names it uploaded them under", e.blobGets.Load()-before)
}

// TestNixCopyLz4Refused: this cache cannot decode lz4, so an upload in it
// fails at its first NAR, saying so, and publishes nothing.
func TestNixCopyLz4Refused(t *testing.T) {
	if testing.Short() {
		t.Skip("runs nix")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	n := newNixClient(t)
	dir := t.TempDir()
	tag := make([]byte, 8)
	rand.Read(tag)
	os.WriteFile(filepath.Join(dir, "f"), []byte("lz4 "+hex.EncodeToString(tag)), 0o644)
	out, err := n.run(ctx, "nix-store", "--add", dir)
	if err != nil {
		t.Fatal(err)
	}
	path := strings.TrimSpace(out)
	e := newUpEnv(t, t.TempDir(), false)
	netrc := writeNetrc(t, "ci", e.writeTok)
	_, err = n.run(ctx, "nix", "copy", "--option", "netrc-file", netrc, "--to", e.url+"?compression=lz4", path)
	if err == nil || !strings.Contains(err.Error(), "HTTP error 400") {
		t.Fatalf("nix copy in lz4: want HTTP error 400, got %v", err)
	}
	t.Logf("nix says: %v", err)
	if code, _ := e.do(t, "GET", "/"+filepath.Base(path)[:32]+".narinfo", "", nil); code != 404 {
		t.Fatalf("%s published by a refused copy: %d", path, code)
	}
}
