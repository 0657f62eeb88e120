package app_test

// Pull-through of an upstream cache, proven with real parts: the
// upstream is a file:// cache written and signed by real Nix 2.8 and
// served by a real nginx; the clients are real `nix copy`; the cache is
// opened from a config with an [[upstream]] table, as `cache serve` does.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/bos55/concordia/internal/nartest"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/pkg/narinfo"
)

// TestUpstreamNixSubstitutesAndKeeps: a client whose only substituter is
// the cache and whose only trusted key is the upstream's substitutes a
// closure only the upstream has (the upstream's signatures are passed
// through); each NAR was downloaded from the upstream once and kept. With
// nginx stopped, another fresh client substitutes the closure again from
// the kept copies, and it verifies (contents and signatures).
func TestUpstreamNixSubstitutesAndKeeps(t *testing.T) {
	f := pullFixtures(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ngx := startNginx(t, f.dir)
	c := newPullCache(t, ngx.url, f.pk, "")

	dst := substituteInto(ctx, t, c.url, f.c, f.pk)
	for _, p := range []string{f.a, f.b, f.c} {
		sameTree(ctx, t, dst, p)
	}
	if n := ngx.requests(t, "GET /nar/"); n != 3 {
		t.Fatalf("%d NAR requests reached the upstream for 3 paths, want 3", n)
	}
	for _, p := range []string{f.a, f.b, f.c} {
		info, err := c.app.Upload.PathInfo(ctx, hashOf(p))
		if err != nil {
			t.Fatalf("%s not kept after it was pulled: %v", p, err)
		}
		if info.Origin == "" {
			t.Errorf("%s kept without its origin", p)
		}
	}
	if ok := counter(t, c.app.Registry, "concordia_pull_through_total", func(l map[string]string) bool { return l["result"] == "ok" }); ok != 3 {
		t.Errorf("concordia_pull_through_total{result=ok} = %v, want 3", ok)
	}

	ngx.stop()
	dst2 := substituteInto(ctx, t, c.url, f.c, f.pk)
	for _, p := range []string{f.a, f.b, f.c} {
		sameTree(ctx, t, dst2, p)
	}
}

// TestUpstreamNixCopySkipsUpstreamPaths: `nix copy --to` the cache of a
// closure whose lower paths the upstream has uploads only the rest: the
// writer's probes of upstream paths answer 200, so exactly one narinfo
// and one NAR are PUT, and the upload's references to upstream paths are
// accepted. A fresh client then substitutes the whole closure from the
// cache, trusting the upstream's key and the cache's.
func TestUpstreamNixCopySkipsUpstreamPaths(t *testing.T) {
	f := pullFixtures(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ngx := startNginx(t, f.dir)
	c := newPullCache(t, ngx.url, f.pk, "")

	up := newNixUser(t)
	up.must(ctx, "nix", "copy", "--option", "netrc-file", c.netrc(t), "--to", c.url+"?compression=zstd", f.top)
	if ni, nar := c.narinfoPUTs.Load(), c.narPUTs.Load(); ni != 1 || nar != 1 {
		t.Fatalf("%d narinfo PUTs and %d NAR PUTs for a closure of 4 paths of which the upstream has 3, want 1 and 1", ni, nar)
	}
	if n := ngx.requests(t, "GET /nar/"); n != 0 {
		t.Fatalf("the upload made the cache download %d NARs from the upstream", n)
	}

	dst := substituteInto(ctx, t, c.url, f.top, f.pk, c.key())
	for _, p := range []string{f.a, f.b, f.c, f.top} {
		sameTree(ctx, t, dst, p)
	}
}

// TestUpstreamUploadCannotReplacePath: an upload (with the write token)
// of an upstream path with another NAR is refused with 409 naming both
// NAR hashes, before the path was ever pulled and after; the path still
// substitutes with the upstream's bytes.
func TestUpstreamUploadCannotReplacePath(t *testing.T) {
	f := pullFixtures(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ngx := startNginx(t, f.dir)
	c := newPullCache(t, ngx.url, f.pk, "")
	orig := f.upstreamNarinfo(t, f.a)

	evil := nartest.File([]byte("not what the upstream built\n"))
	sum := sha256.Sum256(evil)
	evilHash := narinfo.SHA256(sum[:])
	file := "nar/" + nixbase32.EncodeToString(sum[:]) + ".nar"
	ni := &narinfo.NarInfo{
		StorePath: f.a, URL: file, Compression: "none",
		FileHash: &evilHash, FileSize: uint64(len(evil)),
		NarHash: evilHash, NarSize: uint64(len(evil)),
	}
	claim := func(when string) {
		t.Helper()
		if code, msg := c.do(t, http.MethodPut, "/"+file, c.writeTok, evil); code != http.StatusOK {
			t.Fatalf("%s: PUT of the NAR alone: %d %s (a NAR alone publishes nothing)", when, code, msg)
		}
		code, msg := c.do(t, http.MethodPut, "/"+hashOf(f.a)+".narinfo", c.writeTok, []byte(ni.String()))
		if code != http.StatusConflict || !strings.Contains(string(msg), orig.NarHash.String()) || !strings.Contains(string(msg), evilHash.String()) {
			t.Fatalf("%s: PUT of another NAR for the upstream's %s: %d %q, want 409 naming %s and %s", when, f.a, code, msg, orig.NarHash, evilHash)
		}
	}

	claim("never pulled")
	if _, err := c.app.Upload.PathInfo(ctx, hashOf(f.a)); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("after the refused upload the upload store has %s: %v", f.a, err)
	}
	if code, got := c.narinfo(t, hashOf(f.a)); code != 200 || !got.NarHash.Equal(orig.NarHash) {
		t.Fatalf("narinfo of %s after the refused upload: %d %+v, want the upstream's NarHash %s", f.a, code, got, orig.NarHash)
	}
	dst := substituteInto(ctx, t, c.url, f.a, f.pk)
	sameTree(ctx, t, dst, f.a)

	claim("pulled")
	dst = substituteInto(ctx, t, c.url, f.a, f.pk)
	sameTree(ctx, t, dst, f.a)
}

// TestPullThroughOneDownloadFor16Readers: 16 clients GET one cold
// upstream NAR at once; the upstream sees exactly one NAR request and
// every body is the NAR the narinfo names.
func TestPullThroughOneDownloadFor16Readers(t *testing.T) {
	f := pullFixtures(t)
	ngx := startNginx(t, f.dir)
	c := newPullCache(t, ngx.url, f.pk, "")
	code, ni := c.narinfo(t, hashOf(f.c))
	if code != 200 {
		t.Fatalf("narinfo of %s: %d", f.c, code)
	}
	const readers = 16
	var wg sync.WaitGroup
	start := make(chan struct{})
	errs := make([]error, readers)
	for i := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			resp, err := http.Get(c.url + "/" + ni.URL)
			if err != nil {
				errs[i] = err
				return
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			switch {
			case err != nil:
				errs[i] = err
			case resp.StatusCode != 200:
				errs[i] = fmt.Errorf("GET %s: %s", ni.URL, resp.Status)
			default:
				errs[i] = verifyNARFile(ni, body)
			}
		}()
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("reader %d: %v", i, err)
		}
	}
	if n := ngx.requests(t, "GET /nar/"); n != 1 {
		t.Fatalf("%d NAR requests reached the upstream for %d concurrent readers, want 1", n, readers)
	}
	joined := counter(t, c.app.Registry, "concordia_pull_through_joined_total", nil)
	t.Logf("%v of %d readers joined the download under way; the others got the kept copy", joined, readers-1)
}

// TestUpstreamWriterProbeDownloadsNothing: a writer's probe (a narinfo
// GET with the write token, what nix copy --to sends) of an upstream
// path answers 200 and the upstream sees its narinfo asked, never its
// NAR; an anonymous narinfo GET downloads nothing either.
func TestUpstreamWriterProbeDownloadsNothing(t *testing.T) {
	f := pullFixtures(t)
	ngx := startNginx(t, f.dir)
	c := newPullCache(t, ngx.url, f.pk, "")
	for _, p := range []string{f.a, f.c} {
		code, body := c.do(t, http.MethodGet, "/"+hashOf(p)+".narinfo", c.writeTok, nil)
		if code != http.StatusOK {
			t.Fatalf("writer probe of %s: %d %s", p, code, body)
		}
		ni, err := narinfo.Parse(bytes.NewReader(body))
		if err != nil || ni.StorePath != p {
			t.Fatalf("writer probe of %s: %v\n%s", p, err, body)
		}
		if code, _ := c.narinfo(t, hashOf(p)); code != http.StatusOK {
			t.Fatalf("anonymous narinfo of %s: %d", p, code)
		}
	}
	if n := ngx.requests(t, "GET /"+hashOf(f.a)+".narinfo"); n == 0 {
		t.Fatal("the upstream was not asked for the narinfo")
	}
	if n := ngx.requests(t, "GET /nar/"); n != 0 {
		t.Fatalf("narinfo requests made the cache download %d NARs", n)
	}
	if _, err := c.app.Upload.PathInfo(context.Background(), hashOf(f.a)); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a narinfo probe kept %s: %v", f.a, err)
	}
}
