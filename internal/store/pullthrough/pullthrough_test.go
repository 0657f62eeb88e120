package pullthrough_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bos55/concordia/internal/compress"
	"github.com/bos55/concordia/internal/nartest"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/pullthrough"
	"github.com/bos55/concordia/internal/store/upload"
	"github.com/bos55/concordia/internal/upstream"
	"github.com/bos55/concordia/internal/upstream/upstreamtest"
	"github.com/bos55/concordia/pkg/narinfo"
)

// rig is a pull-through store over an upload store, in front of one
// misbehaving upstream.
type rig struct {
	up   *upstreamtest.Server
	key  narinfo.SecretKey
	set  *upstream.Set
	us   *upload.Store
	p    *pullthrough.Store
	reg  *prometheus.Registry
	ctx  context.Context
	name string
}

func newRig(t *testing.T) *rig {
	t.Helper()
	ctx := context.Background()
	sk, pk := upstreamtest.Key(t, "cache.nixos.org-1")
	own, _ := upstreamtest.Key(t, "concordia-1")
	r := &rig{up: upstreamtest.New(t), key: sk, reg: prometheus.NewRegistry(), ctx: ctx, name: "nixos"}
	var err error
	r.set, err = upstream.New(upstream.Options{
		Upstreams: []upstream.Config{{Name: r.name, URL: r.up.URL, Keys: []narinfo.PublicKey{pk}, Timeout: 2 * time.Second, PullThrough: true}},
		Registry:  r.reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	r.us, err = upload.Open(ctx, t.TempDir(), upload.Options{
		SignKeys: []narinfo.SecretKey{own},
		Others:   []store.Store{pullthrough.Checker(r.set, upstreamtest.StoreDir)},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.us.Close() })
	r.p, err = pullthrough.New(pullthrough.Options{Upstreams: r.set, Into: r.us, TempDir: t.TempDir(), Registry: r.reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.p.Close() })
	return r
}

// path adds an upstream path whose NAR holds contents.
func (r *rig) path(t *testing.T, name, contents, compression string, refs ...string) *upstreamtest.Path {
	t.Helper()
	p := upstreamtest.NewPath(t, r.key, name, nartest.File([]byte(contents)), compression, refs...)
	r.up.Add(p)
	return p
}

func (r *rig) info(t *testing.T, p *upstreamtest.Path) *store.PathInfo {
	t.Helper()
	info, err := r.p.PathInfo(r.ctx, p.HashPart())
	if err != nil {
		t.Fatalf("PathInfo %s: %v", p.StorePath(), err)
	}
	return info
}

// fetch reads the path's file through the pull-through store.
func (r *rig) fetch(p *upstreamtest.Path) ([]byte, error) {
	info, err := r.p.PathInfo(r.ctx, p.HashPart())
	if err != nil {
		return nil, err
	}
	f, _, _, _, err := r.p.OpenFileNAR(r.ctx, info)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}

func (r *rig) pulls(result string) float64 {
	return counter(r.reg, "concordia_pull_through_total", map[string]string{"upstream": r.name, "result": result})
}

// counter is the value of the series of name with labels (0 if none).
func counter(reg *prometheus.Registry, name string, labels map[string]string) float64 {
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.Metric {
			for _, l := range m.Label {
				if want, ok := labels[l.GetName()]; ok && want != l.GetValue() {
					continue series
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

// TestPullKeepsVerifiedNAR: a narinfo lookup downloads nothing; the first
// read downloads the file once, serves it, and keeps it (with the
// upstream's signature and its origin); the next read comes from the
// upload store, so it works with the upstream gone.
func TestPullKeepsVerifiedNAR(t *testing.T) {
	r := newRig(t)
	p := r.path(t, "glibc-2.40", "the libc", "zstd")
	info := r.info(t, p)
	if info.Origin != r.name || !slices(info.Sigs, p.NarInfo.Sigs) {
		t.Errorf("path info %+v: want origin %s and the upstream's signatures %v", info, r.name, p.NarInfo.Sigs)
	}
	comp, fh, size, err := r.p.StatFileNAR(r.ctx, info)
	if err != nil || comp != "zstd" || !bytes.Equal(fh, p.NarInfo.FileHash.Digest) || size != int64(len(p.File)) {
		t.Fatalf("StatFileNAR = %s %x %d %v", comp, fh, size, err)
	}
	if n := r.up.NARRequests(p.HashPart()); n != 0 {
		t.Fatalf("a narinfo lookup downloaded the NAR (%d requests)", n)
	}
	got, err := r.fetch(p)
	if err != nil || !bytes.Equal(got, p.File) {
		t.Fatalf("first read: %d bytes, %v", len(got), err)
	}
	kept, err := r.us.PathInfo(r.ctx, p.HashPart())
	if err != nil {
		t.Fatalf("not kept: %v", err)
	}
	if kept.Origin != r.name || !bytes.Equal(kept.NarHash, p.NarInfo.NarHash.Digest) || !slices(kept.Sigs, p.NarInfo.Sigs) {
		t.Errorf("kept %+v", kept)
	}
	r.up.Close()
	if got, err = r.fetch(p); err != nil || !bytes.Equal(got, p.File) {
		t.Fatalf("with the upstream gone: %d bytes, %v", len(got), err)
	}
	f, _, _, _, err := r.us.OpenFileNAR(r.ctx, kept)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got, _ = io.ReadAll(f); !bytes.Equal(got, p.File) {
		t.Errorf("kept file differs")
	}
	if r.pulls("ok") != 1 {
		t.Errorf("concordia_pull_through_total{ok} = %v", r.pulls("ok"))
	}
}

func slices(have, want []string) bool {
	for _, w := range want {
		found := false
		for _, h := range have {
			found = found || h == w
		}
		if !found {
			return false
		}
	}
	return true
}

// TestPullSingleFlight: 16 readers of one cold NAR at once cost one
// upstream request, and all get the whole file.
func TestPullSingleFlight(t *testing.T) {
	r := newRig(t)
	p := r.path(t, "big", strings.Repeat("0123456789abcdef", 1<<16), "zstd")
	info := r.info(t, p)
	release := r.up.Hold()
	var wg sync.WaitGroup
	errs := make([]error, 16)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f, _, _, _, err := r.p.OpenFileNAR(r.ctx, info)
			if err != nil {
				errs[i] = err
				return
			}
			defer f.Close()
			got, err := io.ReadAll(f)
			if err == nil && !bytes.Equal(got, p.File) {
				err = fmt.Errorf("%d bytes, not the file", len(got))
			}
			errs[i] = err
		}()
	}
	for r.up.NARRequests(p.HashPart()) == 0 {
		time.Sleep(time.Millisecond)
	}
	release()
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("reader %d: %v", i, err)
		}
	}
	if n := r.up.NARRequests(p.HashPart()); n != 1 {
		t.Errorf("%d upstream NAR requests for 16 readers, want 1", n)
	}
}

// TestPullRefusesBadNARs: a NAR that is not the one signed, or is cut, or
// stalls, fails every reader, is kept nowhere, and is counted; once the
// upstream behaves, the path pulls fine.
func TestPullRefusesBadNARs(t *testing.T) {
	for _, fault := range []upstreamtest.Fault{upstreamtest.WrongNarHash, upstreamtest.Truncated, upstreamtest.SlowBody, upstreamtest.Status500} {
		t.Run(fmt.Sprint(fault), func(t *testing.T) {
			r := newRig(t)
			p := r.path(t, "victim", strings.Repeat("payload ", 1<<14), "zstd")
			r.up.SetFault(p.HashPart(), upstreamtest.NAR, fault)
			if _, err := r.fetch(p); err == nil {
				t.Fatal("a bad NAR was read through")
			}
			if _, err := r.us.PathInfo(r.ctx, p.HashPart()); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("the bad NAR was kept: %v", err)
			}
			if r.pulls("ok") != 0 {
				t.Errorf("counted ok")
			}
			reason := map[upstreamtest.Fault]string{upstreamtest.WrongNarHash: upstream.ReasonInvalidNAR,
				upstreamtest.Truncated: upstream.ReasonTruncated, upstreamtest.SlowBody: upstream.ReasonTruncated,
				upstreamtest.Status500: "error"}[fault]
			if n := r.pulls(reason); n != 1 {
				t.Errorf("concordia_pull_through_total{result=%q} = %v, want 1", reason, n)
			}
			r.up.SetFault(p.HashPart(), upstreamtest.NAR, upstreamtest.OK)
			if fault == upstreamtest.WrongNarHash {
				// A NAR that is not the one signed is the upstream's
				// answer for the path until its negative_ttl: the next
				// upstream, if any, is asked instead.
				if _, err := r.p.PathInfo(r.ctx, p.HashPart()); !errors.Is(err, store.ErrNotFound) {
					t.Fatalf("the upstream that sent a wrong NAR still answers: %v", err)
				}
				return
			}
			got, err := r.fetch(p)
			if err != nil || !bytes.Equal(got, p.File) {
				t.Fatalf("after the fault: %d bytes, %v", len(got), err)
			}
			if _, err := r.us.PathInfo(r.ctx, p.HashPart()); err != nil {
				t.Errorf("not kept after a good pull: %v", err)
			}
		})
	}
}

// TestPullDecodesForIdentityReaders: NAR (a client that asked for the NAR
// uncompressed) decodes the upstream's file as it arrives.
func TestPullDecodesForIdentityReaders(t *testing.T) {
	r := newRig(t)
	p := r.path(t, "plain", "some bytes", "zstd")
	var buf bytes.Buffer
	if err := r.p.NAR(r.ctx, r.info(t, p), &buf); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), p.NAR) {
		t.Errorf("decoded %d bytes, not the NAR", buf.Len())
	}
	dec, _ := compress.NewReader(bytes.NewReader(p.File), "zstd")
	want, _ := io.ReadAll(dec)
	if !bytes.Equal(want, p.NAR) {
		t.Fatal("test data broken")
	}
}

// TestPullClosure: pulling a closure keeps every path of it an upstream
// has, references first or not.
func TestPullClosure(t *testing.T) {
	r := newRig(t)
	leaf := r.path(t, "leaf", "leaf", "none")
	mid := r.path(t, "mid", "mid", "zstd", leafBase(leaf))
	top := r.path(t, "top", "top", "zstd", leafBase(mid), leafBase(leaf))
	n, err := r.p.PullClosure(r.ctx, top.HashPart())
	if err != nil || n != 3 {
		t.Fatalf("PullClosure = %d, %v", n, err)
	}
	for _, p := range []*upstreamtest.Path{leaf, mid, top} {
		if _, err := r.us.PathInfo(r.ctx, p.HashPart()); err != nil {
			t.Errorf("%s not kept: %v", p.StorePath(), err)
		}
	}
	if n, err := r.p.PullClosure(r.ctx, top.HashPart()); err != nil || n != 0 {
		t.Errorf("again: %d, %v", n, err)
	}
}

func leafBase(p *upstreamtest.Path) string {
	return p.StorePath()[len(upstreamtest.StoreDir)+1:]
}

// TestCheckerTellsUnavailable: the writers' view says "cannot ask" when
// the upstream fails, and "absent" only when it says so.
func TestCheckerTellsUnavailable(t *testing.T) {
	r := newRig(t)
	p := r.path(t, "x", "x", "none")
	ck := pullthrough.Checker(r.set, upstreamtest.StoreDir)
	if _, err := ck.PathInfo(r.ctx, p.HashPart()); err != nil {
		t.Fatalf("present: %v", err)
	}
	missing := strings.Repeat("a", 32)
	if _, err := ck.PathInfo(r.ctx, missing); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("absent: %v", err)
	}
	other := r.path(t, "y", "y", "none")
	r.up.SetFault(other.HashPart(), upstreamtest.NarInfo, upstreamtest.Status500)
	if _, err := ck.PathInfo(r.ctx, other.HashPart()); !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("upstream failing: %v, want ErrUnavailable", err)
	}
	if _, err := r.p.PathInfo(r.ctx, other.HashPart()); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("readers' view of a failing upstream: %v, want a miss", err)
	}
}

// TestPullRefusesOtherNAR: FileHash and URL are not signed, so someone
// between the upstream and the cache can serve another valid NAR with a
// narinfo whose file fields describe it: the intake accepts the file, and
// the NarHash comparison with what the upstream signed refuses it.
func TestPullRefusesOtherNAR(t *testing.T) {
	r := newRig(t)
	good := upstreamtest.NewPath(t, r.key, "glibc-2.40", nartest.File([]byte("the real libc")), "zstd")
	evil := upstreamtest.NewPath(t, r.key, "evil", nartest.File([]byte("a backdoored libc")), "zstd")
	swapped := *good
	ni := *good.NarInfo
	ni.URL, ni.FileHash, ni.FileSize = evil.NarInfo.URL, evil.NarInfo.FileHash, evil.NarInfo.FileSize
	swapped.NarInfo, swapped.File = &ni, evil.File
	r.up.Add(&swapped)
	if got, err := r.fetch(&swapped); err == nil {
		t.Fatalf("another NAR was served as the signed one (%d bytes)", len(got))
	}
	if _, err := r.us.PathInfo(r.ctx, good.HashPart()); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the other NAR was kept: %v", err)
	}
	if n := r.pulls(upstream.ReasonNarHash); n != 1 {
		t.Errorf("concordia_pull_through_total{result=nar-hash} = %v", n)
	}
	if n := counter(r.reg, "concordia_upstream_bad_total", map[string]string{"upstream": r.name, "reason": upstream.ReasonNarHash}); n != 1 {
		t.Errorf("concordia_upstream_bad_total{reason=nar-hash} = %v", n)
	}
}
