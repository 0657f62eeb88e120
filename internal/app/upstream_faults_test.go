package app_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/nartest"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/upstream/upstreamtest"
	"github.com/bos55/concordia/pkg/narinfo"
)

// TestUpstreamFaults: an upstream that answers badly, hangs or fails
// costs a reader a miss (a 404 narinfo, never a 5xx, also when it hangs:
// the answer comes after the upstream's timeout) or a failed transfer of
// that NAR, never wrong bytes; nothing is kept, so once the upstream
// answers well again the good path is served and kept; and the failure
// is counted in a metric an operator would alert on.
func TestUpstreamFaults(t *testing.T) {
	badAnswers := func(l map[string]string) bool { return true }
	narinfoErrors := func(l map[string]string) bool { return l["kind"] == "narinfo" && l["result"] == "error" }
	failedPulls := func(l map[string]string) bool { return l["result"] != "ok" }
	for _, tc := range []struct {
		fault upstreamtest.Fault
		doc   upstreamtest.Doc
		// metric and labels that must move
		metric string
		keep   func(map[string]string) bool
		// others: the fault touches only its path (no backoff of the
		// whole upstream)
		others bool
	}{
		{upstreamtest.WrongSignature, upstreamtest.NarInfo, "concordia_upstream_bad_total", badAnswers, true},
		{upstreamtest.Unsigned, upstreamtest.NarInfo, "concordia_upstream_bad_total", badAnswers, true},
		{upstreamtest.WrongPath, upstreamtest.NarInfo, "concordia_upstream_bad_total", badAnswers, true},
		{upstreamtest.Malformed, upstreamtest.NarInfo, "concordia_upstream_bad_total", badAnswers, true},
		{upstreamtest.Oversize, upstreamtest.NarInfo, "concordia_upstream_bad_total", badAnswers, true},
		{upstreamtest.Hang, upstreamtest.NarInfo, "concordia_upstream_requests_total", narinfoErrors, false},
		{upstreamtest.Status500, upstreamtest.NarInfo, "concordia_upstream_requests_total", narinfoErrors, false},
		{upstreamtest.Status503, upstreamtest.NarInfo, "concordia_upstream_requests_total", narinfoErrors, false},
		{upstreamtest.Status429, upstreamtest.NarInfo, "concordia_upstream_requests_total", narinfoErrors, false},
		{upstreamtest.WrongNarHash, upstreamtest.NAR, "concordia_pull_through_total", failedPulls, true},
		{upstreamtest.Truncated, upstreamtest.NAR, "concordia_pull_through_total", failedPulls, true},
		{upstreamtest.SlowBody, upstreamtest.NAR, "concordia_pull_through_total", failedPulls, false},
		{upstreamtest.Hang, upstreamtest.NAR, "concordia_pull_through_total", failedPulls, false},
		{upstreamtest.Status500, upstreamtest.NAR, "concordia_pull_through_total", failedPulls, false},
		{upstreamtest.Status503, upstreamtest.NAR, "concordia_pull_through_total", failedPulls, false},
		{upstreamtest.Status429, upstreamtest.NAR, "concordia_pull_through_total", failedPulls, false},
	} {
		doc := map[upstreamtest.Doc]string{upstreamtest.NarInfo: "narinfo", upstreamtest.NAR: "nar"}[tc.doc]
		t.Run(fmt.Sprintf("%s/%s", doc, faultName(tc.fault)), func(t *testing.T) {
			t.Parallel()
			sk, pk := upstreamtest.Key(t, "cache.nixos.org-1")
			up := upstreamtest.New(t)
			p := upstreamtest.NewPath(t, sk, "faulty", nartest.File(nartest.Mixed(256<<10, 1)), "zstd")
			other := upstreamtest.NewPath(t, sk, "other", nartest.File([]byte("fine\n")), "zstd")
			up.Add(p, other)
			c := newPullCache(t, up.URL, pk.String(), "timeout = \"1s\"\nnegative_ttl = \"100ms\"\n")
			before := counter(t, c.app.Registry, tc.metric, tc.keep)
			up.SetFault(p.HashPart(), tc.doc, tc.fault)

			if tc.doc == upstreamtest.NarInfo {
				if code := narinfoStatus(t, c, p.HashPart()); code != http.StatusNotFound {
					t.Fatalf("narinfo with the upstream's narinfo %s: %d, want 404", faultName(tc.fault), code)
				}
			} else {
				code, ni := c.narinfo(t, p.HashPart())
				if code != http.StatusOK {
					t.Fatalf("narinfo: %d (only the NAR is faulty)", code)
				}
				if err := fetchNAR(c, ni, nil); err == nil {
					t.Fatalf("NAR with the upstream's NAR %s: a whole, good 200", faultName(tc.fault))
				}
				if n := up.NARRequests(p.HashPart()); n == 0 {
					t.Fatal("the upstream was not asked for the NAR")
				}
			}
			waitFor(t, "the failure to be counted", func() error {
				if got := counter(t, c.app.Registry, tc.metric, tc.keep); got <= before {
					return fmt.Errorf("%s did not move (%v)", tc.metric, got)
				}
				return nil
			})
			if _, err := c.app.Upload.PathInfo(context.Background(), p.HashPart()); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("the upload store kept the faulty path: %v", err)
			}
			if tc.others {
				code, ni := c.narinfo(t, other.HashPart())
				if code != http.StatusOK {
					t.Fatalf("another path's narinfo: %d", code)
				}
				if err := fetchNAR(c, ni, other.NAR); err != nil {
					t.Fatalf("another path's NAR: %v", err)
				}
			}

			up.SetFault(p.HashPart(), tc.doc, upstreamtest.OK)
			waitFor(t, "the good path to be served", func() error {
				if code := narinfoStatus(t, c, p.HashPart()); code != http.StatusOK {
					return fmt.Errorf("narinfo: %d", code)
				}
				_, ni := c.narinfo(t, p.HashPart())
				return fetchNAR(c, ni, p.NAR)
			})
			info, err := c.app.Upload.PathInfo(context.Background(), p.HashPart())
			if err != nil || info.Origin == "" {
				t.Fatalf("the good path, served, was not kept: %+v %v", info, err)
			}
		})
	}
}

func faultName(f upstreamtest.Fault) string {
	return map[upstreamtest.Fault]string{
		upstreamtest.WrongSignature: "wrong-signature", upstreamtest.Unsigned: "unsigned",
		upstreamtest.WrongPath: "wrong-path", upstreamtest.WrongNarHash: "wrong-nar-hash",
		upstreamtest.Truncated: "truncated", upstreamtest.Hang: "hang", upstreamtest.SlowBody: "slow-body",
		upstreamtest.Status500: "500", upstreamtest.Status503: "503", upstreamtest.Status429: "429",
		upstreamtest.Malformed: "malformed", upstreamtest.Oversize: "oversize",
	}[f]
}

// narinfoStatus GETs a narinfo anonymously and fails the test on any
// answer but 200 and 404: Nix disables a substituter that answers 5xx.
func narinfoStatus(t *testing.T, c *pullCache, hash string) int {
	t.Helper()
	code, body := c.do(t, http.MethodGet, "/"+hash+".narinfo", "", nil)
	if code != http.StatusOK && code != http.StatusNotFound {
		t.Fatalf("narinfo %s: %d %s: a reader must get a hit or a miss, never an error", hash, code, body)
	}
	return code
}

// fetchNAR GETs the NAR URL of a narinfo the cache served; an error
// unless it is a whole 200 and, when want is set, decodes to want.
func fetchNAR(c *pullCache, ni *narinfo.NarInfo, want []byte) error {
	url := ni.URL
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.url+"/"+url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("reading the body: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	if want == nil {
		return nil
	}
	if err := verifyNARFile(ni, body); err != nil {
		return err
	}
	if sum := sha256.Sum256(want); !bytes.Equal(sum[:], ni.NarHash.Digest) {
		return fmt.Errorf("the cache's narinfo names NAR %s, not the upstream's", ni.NarHash)
	}
	return nil
}

// waitFor polls cond until it holds; the deadline only keeps a broken
// cache from hanging the test (nothing asserts how long it took).
func waitFor(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestPullThroughFileWithoutHash: an upstream narinfo that does not give
// its file's hash and size (they are optional, and unsigned) cannot be
// named before the file is whole: the cache announces its own form, the
// download is hashed on the way to name it, and the path is served,
// verified and kept all the same.
func TestPullThroughFileWithoutHash(t *testing.T) {
	sk, pk := upstreamtest.Key(t, "cache.nixos.org-1")
	up := upstreamtest.New(t)
	p := upstreamtest.NewPath(t, sk, "unnamed", nartest.File(nartest.Mixed(512<<10, 2)), "zstd")
	p.NarInfo.FileHash, p.NarInfo.FileSize = nil, 0
	up.Add(p)
	c := newPullCache(t, up.URL, pk.String(), "")
	code, ni := c.narinfo(t, p.HashPart())
	if code != http.StatusOK {
		t.Fatalf("narinfo: %d", code)
	}
	if err := fetchNAR(c, ni, p.NAR); err != nil {
		t.Fatal(err)
	}
	if n := up.NARRequests(p.HashPart()); n != 1 {
		t.Fatalf("%d NAR requests reached the upstream, want 1", n)
	}
	waitFor(t, "the path to be kept", func() error {
		_, err := c.app.Upload.PathInfo(context.Background(), p.HashPart())
		return err
	})
	if err := fetchNAR(c, ni, p.NAR); err != nil {
		t.Fatalf("the kept copy: %v", err)
	}
}

// TestPullThroughHeadAndOtherFormsDownloadNothing: requests that will not
// read an upstream path's file start no download: a HEAD of its URL (200,
// the file's length) and a GET of a form the upstream does not have (a
// .nar.xz of a zstd file: 404). The GET of its own URL then downloads it
// once.
func TestPullThroughHeadAndOtherFormsDownloadNothing(t *testing.T) {
	sk, pk := upstreamtest.Key(t, "cache.nixos.org-1")
	up := upstreamtest.New(t)
	p := upstreamtest.NewPath(t, sk, "probed", nartest.File(nartest.Mixed(256<<10, 3)), "zstd")
	up.Add(p)
	c := newPullCache(t, up.URL, pk.String(), "")
	_, ni := c.narinfo(t, p.HashPart())
	started := func() float64 {
		return counter(t, c.app.Registry, "concordia_pull_through_in_progress", nil) +
			counter(t, c.app.Registry, "concordia_pull_through_total", nil)
	}
	req, _ := http.NewRequest(http.MethodHead, c.url+"/"+ni.URL, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ContentLength != int64(len(p.File)) {
		t.Fatalf("HEAD %s: %s, Content-Length %d, want 200 and %d", ni.URL, resp.Status, resp.ContentLength, len(p.File))
	}
	xz := strings.TrimSuffix(ni.URL, ".zst") + ".xz"
	if code, _ := c.do(t, http.MethodGet, "/"+xz, "", nil); code != http.StatusNotFound {
		t.Fatalf("GET %s of a zstd upstream file: %d, want 404", xz, code)
	}
	if n := started(); n != 0 || up.NARRequests(p.HashPart()) != 0 {
		t.Fatalf("a HEAD and a GET of another form started %v downloads (%d NAR requests at the upstream)", n, up.NARRequests(p.HashPart()))
	}
	if err := fetchNAR(c, ni, p.NAR); err != nil {
		t.Fatal(err)
	}
	if n := up.NARRequests(p.HashPart()); n != 1 {
		t.Fatalf("%d NAR requests, want 1", n)
	}
}
