package upload_test

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/upload"
	"github.com/bos55/concordia/pkg/narinfo"
)

const upstream = "https://cache.nixos.org"

// pulled is p as an upstream serves it: signed by the upstream's key,
// under the upstream's URL.
func pulled(t testing.TB, p *fakePath, key narinfo.SecretKey) *narinfo.NarInfo {
	t.Helper()
	ni := *p.info
	ni.URL = "nar/upstream-" + p.fileName
	ni.References = slices.Clone(p.info.References)
	ni.Sign(key)
	return &ni
}

// adopt receives p's NAR and adopts ni for it, as pullthrough does.
func adopt(ctx context.Context, s *upload.Store, p *fakePath, ni *narinfo.NarInfo) error {
	if _, err := s.PutNAR(ctx, p.fileName, bytes.NewReader(p.file)); err != nil {
		return err
	}
	return s.Adopt(ctx, p.fileName, ni, upstream)
}

// TestAdopt: a pulled path is served with its upstream as Origin, its
// NAR from our file, signed by the upstream and by the cache, though
// none of its references is here.
func TestAdopt(t *testing.T) {
	ctx := context.Background()
	own, _, _ := narinfo.GenerateKey("cache-1")
	up, _, _ := narinfo.GenerateKey("upstream-1")
	s := openStore(t, t.TempDir(), upload.Options{SignKeys: []narinfo.SecretKey{own}})
	dep := newPath(t, "adopt-dep", []byte("never here"))
	p := newPath(t, "adopt", []byte("pulled"), dep.base, "self")
	ni := pulled(t, p, up)
	if err := adopt(ctx, s, p, ni); err != nil {
		t.Fatalf("Adopt: %v", err)
	}
	if ni.URL != "nar/upstream-"+p.fileName {
		t.Errorf("Adopt changed the caller's narinfo: URL %s", ni.URL)
	}
	info, err := s.PathInfo(ctx, p.hash)
	if err != nil || info.Origin != upstream {
		t.Fatalf("PathInfo = %+v, %v; want Origin %s", info, err, upstream)
	}
	if len(info.Sigs) != 2 || !strings.HasPrefix(info.Sigs[0], "cache-1:") || !strings.HasPrefix(info.Sigs[1], "upstream-1:") {
		t.Errorf("Sigs = %q; want the cache's and the upstream's", info.Sigs)
	}
	if got, err := narOf(t, s, p.hash); err != nil || !bytes.Equal(got, p.nar) {
		t.Errorf("NAR of the pulled path: %v", err)
	}
	stored, err := s.NarInfo(ctx, p.hash)
	if err != nil || stored.URL != "nar/"+p.fileName {
		t.Errorf("stored narinfo = %+v, %v; want our URL nar/%s", stored, err, p.fileName)
	}
	if f, _, err := s.OpenBlob(ctx, p.fileName); err != nil {
		t.Errorf("OpenBlob of the pulled NAR: %v", err)
	} else {
		f.Close()
	}
	// The same again (two clients pulled it at once): a no-op.
	if err := adopt(ctx, s, p, pulled(t, p, up)); err != nil {
		t.Errorf("Adopt again: %v", err)
	}
}

// TestAdoptRefusesMismatch: a narinfo that does not describe the NAR
// received is ErrInvalid, and nothing is served.
func TestAdoptRefusesMismatch(t *testing.T) {
	ctx := context.Background()
	up, _, _ := narinfo.GenerateKey("upstream-1")
	s := openStore(t, t.TempDir(), upload.Options{})
	p, q := newPath(t, "adopt-mismatch", []byte("one")), newPath(t, "adopt-other", []byte("two"))
	ni := pulled(t, p, up)
	ni.NarHash = q.info.NarHash
	if err := adopt(ctx, s, p, ni); !errors.Is(err, store.ErrInvalid) || !strings.Contains(err.Error(), "NarHash") {
		t.Fatalf("Adopt with another NarHash = %v; want ErrInvalid", err)
	}
	if err := s.Adopt(ctx, q.fileName, pulled(t, q, up), upstream); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("Adopt of a NAR never received = %v; want ErrInvalid", err)
	}
	for _, x := range []*fakePath{p, q} {
		if _, err := s.PathInfo(ctx, x.hash); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("refused %s is served: %v", x.base, err)
		}
		if f, _, err := s.OpenBlob(ctx, x.fileName); err == nil {
			f.Close()
			t.Errorf("refused %s: its NAR is served", x.base)
		}
	}
}

// TestAdoptOfUploadedPath: an uploaded path stays exactly as it is when
// the upstream has the same NAR, and the upstream's other NAR conflicts,
// naming both.
func TestAdoptOfUploadedPath(t *testing.T) {
	ctx := context.Background()
	up, _, _ := narinfo.GenerateKey("upstream-1")
	s := openStore(t, t.TempDir(), upload.Options{})
	p := newPath(t, "adopt-uploaded", []byte("ours"))
	if err := p.upload(ctx, s); err != nil {
		t.Fatal(err)
	}
	if err := adopt(ctx, s, p, pulled(t, p, up)); err != nil {
		t.Fatalf("Adopt of the uploaded NAR: %v", err)
	}
	info, err := s.PathInfo(ctx, p.hash)
	if err != nil || info.Origin != "" || len(info.Sigs) != 0 {
		t.Errorf("after the no-op PathInfo = %+v, %v; want the upload as it was", info, err)
	}
	q := newPath(t, "adopt-uploaded", []byte("theirs"))
	if err := adopt(ctx, s, q, pulled(t, q, up)); !errors.Is(err, store.ErrConflict) ||
		!strings.Contains(err.Error(), p.info.NarHash.String()) || !strings.Contains(err.Error(), q.info.NarHash.String()) {
		t.Errorf("Adopt of another NAR = %v; want ErrConflict naming both NAR hashes", err)
	}
	if got, err := narOf(t, s, p.hash); err != nil || !bytes.Equal(got, p.nar) {
		t.Errorf("after the conflict: %v", err)
	}
}

// TestUploadOfPulledPath: a client uploading a path the cache pulled,
// with the same NAR, is answered as for any path the cache has, and the
// path stays pulled (evicted first); another NAR is refused.
func TestUploadOfPulledPath(t *testing.T) {
	ctx := context.Background()
	up, _, _ := narinfo.GenerateKey("upstream-1")
	ci, _, _ := narinfo.GenerateKey("ci-1")
	s := openStore(t, t.TempDir(), upload.Options{})
	p := newPath(t, "pulled-uploaded", []byte("pulled"))
	if err := adopt(ctx, s, p, pulled(t, p, up)); err != nil {
		t.Fatal(err)
	}
	p.info.Sign(ci)
	if err := p.upload(ctx, s); err != nil {
		t.Fatalf("upload of the pulled path: %v", err)
	}
	info, err := s.PathInfo(ctx, p.hash)
	if err != nil || info.Origin != upstream || len(info.Sigs) != 2 {
		t.Errorf("after the upload PathInfo = %+v, %v; want it pulled still, both signatures kept", info, err)
	}
	q := newPath(t, "pulled-uploaded", []byte("other"))
	if err := q.upload(ctx, s); !errors.Is(err, store.ErrConflict) {
		t.Errorf("upload of another NAR for the pulled path = %v; want ErrConflict", err)
	}
}

// TestAdoptAfterCollection: a collected pulled path comes back with the
// same NAR, and its tombstone refuses another.
func TestAdoptAfterCollection(t *testing.T) {
	ctx := context.Background()
	up, _, _ := narinfo.GenerateKey("upstream-1")
	s := openStore(t, t.TempDir(), upload.Options{})
	p := newPath(t, "adopt-collected", []byte("pulled"))
	if err := adopt(ctx, s, p, pulled(t, p, up)); err != nil {
		t.Fatal(err)
	}
	rep, err := s.GCWith(ctx, upload.Policy{MaxSize: 1}, false)
	if err != nil || rep.PulledDeleted != 1 || rep.Tombstones != 1 {
		t.Fatalf("GC = %+v, %v; want the pulled path collected with a tombstone", rep, err)
	}
	q := newPath(t, "adopt-collected", []byte("other"))
	if err := adopt(ctx, s, q, pulled(t, q, up)); !errors.Is(err, store.ErrConflict) {
		t.Errorf("Adopt of another NAR for the collected path = %v; want ErrConflict", err)
	}
	if err := q.upload(ctx, s); !errors.Is(err, store.ErrConflict) {
		t.Errorf("upload of another NAR for the collected path = %v; want ErrConflict", err)
	}
	if err := adopt(ctx, s, p, pulled(t, p, up)); err != nil {
		t.Fatalf("Adopt of the collected NAR again: %v", err)
	}
	if info, err := s.PathInfo(ctx, p.hash); err != nil || info.Origin != upstream {
		t.Errorf("back: %+v, %v", info, err)
	}
}

// TestPulledPathSurvivesReopen: recovery does not take a pulled path for
// one with an incomplete closure, though none of its references is here
// and no store says it has them.
func TestPulledPathSurvivesReopen(t *testing.T) {
	ctx := context.Background()
	up, _, _ := narinfo.GenerateKey("upstream-1")
	dir := t.TempDir()
	s := openStore(t, dir, upload.Options{})
	dep := newPath(t, "reopen-dep", []byte("only upstream"))
	p := newPath(t, "reopen-pulled", []byte("pulled"), dep.base)
	if err := adopt(ctx, s, p, pulled(t, p, up)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = openStore(t, dir, upload.Options{})
	if info, err := s.PathInfo(ctx, p.hash); err != nil || info.Origin != upstream {
		t.Fatalf("after reopen PathInfo = %+v, %v; want the pulled path", info, err)
	}
}

// TestAdoptionsCounted: adoptions are counted beside uploads, by result,
// and an upload refused for an unreachable upstream as unavailable.
func TestAdoptionsCounted(t *testing.T) {
	ctx := context.Background()
	up, _, _ := narinfo.GenerateKey("upstream-1")
	s := openStore(t, t.TempDir(), upload.Options{Others: []store.Store{downUpstream()}})
	p, q := newPath(t, "counted", []byte("pulled")), newPath(t, "refused", []byte("not received"))
	if err := adopt(ctx, s, p, pulled(t, p, up)); err != nil {
		t.Fatal(err)
	}
	if err := s.Adopt(ctx, q.fileName, pulled(t, q, up), upstream); !errors.Is(err, store.ErrInvalid) {
		t.Fatal(err)
	}
	if err := q.upload(ctx, s); !errors.Is(err, store.ErrUnavailable) {
		t.Fatal(err)
	}
	uploads := s.Collectors()[0].(*prometheus.CounterVec)
	for _, l := range [][2]string{{"adopt", "ok"}, {"adopt", "invalid"}, {"narinfo", "unavailable"}} {
		if n := testutil.ToFloat64(uploads.WithLabelValues(l[0], l[1])); n != 1 {
			t.Errorf("concordia_upload_requests_total{kind=%q,result=%q} = %v; want 1", l[0], l[1], n)
		}
	}
}
