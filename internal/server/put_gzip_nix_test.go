package server_test

import (
	"context"
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

	substituteVerified(ctx, t, e.url, e.key.Public().String(), top)

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

// TestNixCopyNewCompressions: nix copy --to with compression=br, lz4 and
// lzip (which this cache refused before it decoded them) uploads each NAR
// under Nix's suffix for it, the cache keeps the file as it came, and a
// fresh client trusting only the cache's key copies the closure back and
// verifies it.
func TestNixCopyNewCompressions(t *testing.T) {
	if testing.Short() {
		t.Skip("runs nix")
	}
	n := newNixClient(t)
	top, closure := buildUpClosure(t, n)
	for _, tc := range []struct{ compression, suffix string }{
		{"br", ".nar.br"}, {"lz4", ".nar.lz4"}, {"lzip", ".nar.lzip"},
	} {
		t.Run(tc.compression, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			up := newNixClient(t)
			e := newUpEnv(t, t.TempDir(), false)
			netrc := writeNetrc(t, "ci", e.writeTok)
			if _, err := up.run(ctx, "nix", "copy", "--option", "netrc-file", netrc, "--to", e.url+"?compression="+tc.compression, top); err != nil {
				t.Fatal(err)
			}
			paths, _ := e.up.Paths(ctx)
			if strings.Join(paths, " ") != strings.Join(closure, " ") {
				t.Fatalf("uploaded %v, want %v", paths, closure)
			}
			for _, p := range paths {
				ni, err := e.up.NarInfo(ctx, filepath.Base(p)[:32])
				if err != nil || ni.Compression != tc.compression || !strings.HasSuffix(ni.URL, tc.suffix) {
					t.Fatalf("%s stored as %v (%v), want a %s in %s", p, ni, err, tc.suffix, tc.compression)
				}
				t.Logf("%s: URL %s, Compression %s, FileSize %d, NarSize %d", filepath.Base(p), ni.URL, ni.Compression, ni.FileSize, ni.NarSize)
			}
			substituteVerified(ctx, t, e.url, e.key.Public().String(), top)
		})
	}
}
