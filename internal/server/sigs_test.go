package server_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	closurecheck "github.com/bos55/concordia/internal/closure"
	"github.com/bos55/concordia/internal/limits"
	"github.com/bos55/concordia/internal/store/upload"
	"github.com/bos55/concordia/pkg/narinfo"
)

// fakeSigs makes n distinct, well-formed signature lines (key names
// tag-0, tag-1, ...; 64 bytes of base64 each, as ed25519 gives).
func fakeSigs(tag string, n int) []string {
	out := make([]string, n)
	for i := range out {
		sum := sha256.Sum256([]byte(fmt.Sprint(tag, i)))
		out[i] = fmt.Sprintf("%s-%d:%s", tag, i, base64.StdEncoding.EncodeToString(append(sum[:], sum[:]...)))
	}
	return out
}

// withSigs is p's narinfo carrying sigs.
func withSigs(p *upPath, sigs []string) []byte {
	ni := *p.info
	ni.Sigs = sigs
	return []byte(ni.String())
}

// putEncoded PUTs body with Content-Encoding: zstd (Nix 2.32+).
func (e *upEnv) putEncoded(t *testing.T, path string, body []byte) (int, string) {
	t.Helper()
	enc, _ := zstd.NewWriter(nil)
	req, _ := http.NewRequest("PUT", e.url+path, bytes.NewReader(enc.EncodeAll(body, nil)))
	req.Header.Set("Content-Encoding", "zstd")
	req.SetBasicAuth("ci", e.writeTok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	return resp.StatusCode, b.String()
}

// checkClosure runs the deployer's closure check (internal/closure, which
// reads at most 1 MiB of a narinfo) against the cache for root.
func (e *upEnv) checkClosure(t *testing.T, root string) {
	t.Helper()
	c := &closurecheck.Checker{Cache: e.url, Trusted: []narinfo.PublicKey{e.key.Public()}}
	res, err := c.Check(context.Background(), root)
	if err != nil || !res.OK() {
		t.Fatalf("closure check of %s: %+v %v", root, res, err)
	}
}

// servedSigs is the narinfo anonymous clients get for p, its size and
// signatures.
func (e *upEnv) servedSigs(t *testing.T, p *upPath) (int, []string) {
	t.Helper()
	code, body := e.do(t, "GET", "/"+p.hash+".narinfo", "", nil)
	if code != 200 {
		t.Fatalf("GET narinfo of %s: %d %s", p.base, code, body)
	}
	ni, err := narinfo.Parse(strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	return len(body), ni.Sigs
}

// TestSignaturePileUp plays a write token re-uploading one path six times
// with 10,000 Sig lines each (plain and zstd-encoded), then with 16 new
// signatures each time, then with 17: the big ones are refused 413 naming
// limits.max_narinfo_size, 17 is refused 400 naming limits.max_signatures,
// the re-uploads within the limits are accepted but never grow the record
// past them (the cache's and the first upload's signatures kept), and the
// deployer's closure check of a closure containing the path succeeds
// throughout. Nothing stored is lost; another path stays served.
func TestSignaturePileUp(t *testing.T) {
	e := newUpEnv(t, t.TempDir(), false)
	dep := newUpPath(t, "sigs-dep", []byte("dep"))
	top := newUpPath(t, "sigs-top", []byte("top"), dep.base)
	other := newUpPath(t, "sigs-other", []byte("other"))
	first := fakeSigs("builder", 2)
	top.info.Sigs = first
	for _, p := range []*upPath{dep, top, other} {
		e.upload(t, p)
	}
	before := e.served(t, other.hash)
	max := limits.Default().MaxNarinfoSize
	for i := range 6 {
		body := withSigs(top, fakeSigs(fmt.Sprintf("pile%d", i), 10_000))
		code, msg := e.do(t, "PUT", "/"+top.hash+".narinfo", e.writeTok, body)
		if code != http.StatusRequestEntityTooLarge || !strings.Contains(msg, limits.KeyNarinfoSize) {
			t.Fatalf("upload %d of %d bytes: %d %q, want 413 naming %s", i, len(body), code, msg, limits.KeyNarinfoSize)
		}
		code, msg = e.putEncoded(t, "/"+top.hash+".narinfo", body)
		if code != http.StatusRequestEntityTooLarge || !strings.Contains(msg, limits.KeyNarinfoSize) {
			t.Fatalf("zstd-encoded upload %d: %d %q, want 413 naming %s", i, code, msg, limits.KeyNarinfoSize)
		}
		e.checkClosure(t, top.info.StorePath)
	}
	size, sigs := e.servedSigs(t, top)
	if len(sigs) != 3 || int64(size) > max {
		t.Fatalf("after the refused uploads: %d bytes, signatures %v", size, sigs)
	}
	t.Logf("six uploads of %d bytes (10,000 Sig lines) refused; the narinfo served is %d bytes, %d signatures", len(withSigs(top, fakeSigs("pile0", 10_000))), size, len(sigs))
	// Within the limits, six times: accepted, trimmed to the limit.
	for i := range 6 {
		if code, msg := e.do(t, "PUT", "/"+top.hash+".narinfo", e.writeTok, withSigs(top, fakeSigs(fmt.Sprintf("more%d", i), 16))); code != 200 {
			t.Fatalf("re-upload %d with 16 signatures: %d %s", i, code, msg)
		}
		size, sigs := e.servedSigs(t, top)
		if len(sigs) != limits.DefaultMaxSignatures || int64(size) > max {
			t.Fatalf("re-upload %d: the record grew to %d signatures, %d bytes", i, len(sigs), size)
		}
		joined := strings.Join(sigs, " ")
		for _, keep := range append([]string{e.key.Name() + ":"}, first...) {
			if !strings.Contains(joined, keep) {
				t.Fatalf("re-upload %d dropped %s: %v", i, keep, sigs)
			}
		}
		e.checkClosure(t, top.info.StorePath)
	}
	size, sigs = e.servedSigs(t, top)
	t.Logf("after six re-uploads of 16 new signatures each: %d bytes, %d signatures", size, len(sigs))
	code, msg := e.do(t, "PUT", "/"+other.hash+".narinfo", e.writeTok, withSigs(other, fakeSigs("many", 17)))
	if code != http.StatusBadRequest || !strings.Contains(msg, limits.KeySignatures) {
		t.Fatalf("17 signatures: %d %q, want 400 naming %s", code, msg, limits.KeySignatures)
	}
	if got := e.served(t, other.hash); got.narinfo != before.narinfo || !bytes.Equal(got.file, before.file) {
		t.Fatalf("the other path changed:\n%s\n%s", before.narinfo, got.narinfo)
	}
	for _, p := range []*upPath{dep, top} {
		if got := e.served(t, p.hash); !bytes.Equal(unzstd(t, got.file), p.nar) {
			t.Fatalf("%s: NAR changed", p.base)
		}
	}
}

// TestLegacySignaturesServedTrimmed: a record stored before the limits,
// with 6,000 signatures (600 KB), is kept, but served within them, with
// the cache's own signature, so the deployer's closure check succeeds.
func TestLegacySignaturesServedTrimmed(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	loose := limits.Default()
	loose.MaxNarinfoSize, loose.MaxSignatures = narinfo.MaxSize, 1<<20
	old, err := upload.Open(ctx, dir, upload.Options{Limits: loose})
	if err != nil {
		t.Fatal(err)
	}
	p := newUpPath(t, "legacy-sigs", []byte("legacy"))
	if _, err := old.PutNAR(ctx, p.fileName, bytes.NewReader(p.file)); err != nil {
		t.Fatal(err)
	}
	if err := old.PutNarInfo(ctx, p.hash, bytes.NewReader(withSigs(p, fakeSigs("legacy", 6000)))); err != nil {
		t.Fatal(err)
	}
	old.Close()

	e := newUpEnv(t, dir, false)
	size, sigs := e.servedSigs(t, p)
	t.Logf("a record stored with 6,000 signatures (%d bytes) is served as %d bytes, %d signatures", len(withSigs(p, fakeSigs("legacy", 6000))), size, len(sigs))
	if int64(size) > limits.DefaultMaxNarinfoSize || len(sigs) > limits.DefaultMaxSignatures || !strings.Contains(strings.Join(sigs, " "), e.key.Name()+":") {
		t.Fatalf("legacy record served as %d bytes with %d signatures: %v", size, len(sigs), sigs)
	}
	info, err := e.up.PathInfo(ctx, p.hash)
	if err != nil || len(info.Sigs) > limits.DefaultMaxSignatures {
		t.Fatalf("the store's path info: %d signatures, %v", len(info.Sigs), err)
	}
	e.checkClosure(t, p.info.StorePath)
	if got := e.served(t, p.hash); !bytes.Equal(unzstd(t, got.file), p.nar) {
		t.Fatal("the legacy path's NAR changed")
	}
	// Uploading it again adds nothing to the record, and drops nothing
	// stored: it is still served trimmed.
	if code, msg := e.putPath(t, withSigsPath(p, fakeSigs("again", 3))); code != 200 {
		t.Fatalf("re-upload of the legacy path: %d %s", code, msg)
	}
	e.up.Close()
	again, err := upload.Open(ctx, dir, upload.Options{Limits: loose})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if ni, err := again.NarInfo(ctx, p.hash); err != nil || len(ni.Sigs) != 6000 {
		t.Fatalf("the stored record after a re-upload: %d signatures, %v", len(ni.Sigs), err)
	}
}

// withSigsPath is p with its narinfo carrying sigs.
func withSigsPath(p *upPath, sigs []string) *upPath {
	q := *p
	info := *p.info
	info.Sigs = sigs
	q.info = &info
	return &q
}
