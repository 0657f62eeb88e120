package server_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestNixCopyAfterGCCannotReplacePath: a closure uploaded by an unmodified
// nix copy and then garbage-collected keeps its store paths' NARs: another
// NAR for the leaf is 409 naming both NAR hashes and the day it was
// collected, while nix copy of the original closure again succeeds. After
// another GC, a write token cannot forget the tombstone (403, nothing
// changes); an admin can, and then the other NAR is accepted.
func TestNixCopyAfterGCCannotReplacePath(t *testing.T) {
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
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	e := newUpEnvWith(t, t.TempDir(), false, nil, true, freshReads)
	netrc := writeNetrc(t, "ci", e.writeTok)
	copyTo := func() {
		t.Helper()
		// A fresh client each time: the uploader's own disk cache would
		// say the paths are still there and upload nothing.
		if _, err := newNixClient(t).run(ctx, "nix", "copy", "--option", "netrc-file", netrc, "--to", e.url+"?compression=zstd", top); err != nil {
			t.Fatal(err)
		}
	}
	copyTo()
	hash := filepath.Base(leaf)[:32]
	orig := e.served(t, hash)
	gc := func() {
		t.Helper()
		code, body := e.do(t, "POST", "/api/gc?max-size=1", e.adminTok, nil)
		if code != 200 || !strings.Contains(body, leaf) {
			t.Fatalf("GC: %d %s", code, body)
		}
		if code, _ := e.do(t, "GET", "/"+hash+".narinfo", "", nil); code != 404 {
			t.Fatalf("collected leaf still served: %d", code)
		}
	}
	gc()
	evil := twinOf(t, leaf, []byte("swapped leaf\n"))
	refused := func(when string) {
		t.Helper()
		code, msg := e.putPath(t, evil)
		day := time.Now().UTC().Format("2006-01-02")
		if code != 409 || !strings.Contains(msg, orig.ni.NarHash.String()) || !strings.Contains(msg, evil.info.NarHash.String()) ||
			!strings.Contains(msg, "collected") || !strings.Contains(msg, day) || !strings.Contains(msg, "cache forget "+leaf) {
			t.Fatalf("%s: another NAR for the collected %s: %d %q, want 409 naming %s, %s and %s", when, leaf, code, msg, orig.ni.NarHash, evil.info.NarHash, day)
		}
		if code, _ := e.do(t, "GET", "/"+hash+".narinfo", "", nil); code != 404 {
			t.Fatalf("%s: the refused upload is served", when)
		}
	}
	refused("after GC")

	// The same closure again, with nix copy: accepted, the original NAR.
	copyTo()
	if again := e.served(t, hash); again.ni.NarHash.String() != orig.ni.NarHash.String() || string(again.file) != string(orig.file) {
		t.Fatalf("re-uploaded leaf differs:\n%s\n%s", orig.narinfo, again.narinfo)
	}
	gc()
	if code, msg := e.do(t, "DELETE", "/api/tombstones/"+hash, e.writeTok, nil); code != 403 {
		t.Fatalf("forget with the write token: %d %s", code, msg)
	}
	refused("after the write token's forget")
	if code, msg := e.do(t, "DELETE", "/api/tombstones/"+hash, e.adminTok, nil); code != 204 {
		t.Fatalf("forget as admin: %d %s", code, msg)
	}
	if code, msg := e.putPath(t, evil); code != 200 {
		t.Fatalf("another NAR after the admin's forget: %d %s", code, msg)
	}
	if got := e.served(t, hash); got.ni.NarHash.String() != evil.info.NarHash.String() {
		t.Fatalf("served after forget:\n%s", got.narinfo)
	}
}
