package upstream_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/upstream"
	"github.com/bos55/concordia/internal/upstream/upstreamtest"
	"github.com/bos55/concordia/pkg/narinfo"
)

func TestLookupFound(t *testing.T) {
	f := newFake(t, "cache.nixos.org-1")
	p := f.path(t, "hello-2.12", "zstd")
	e := newEnv(t, f.config("nixos"))
	a, err := e.set.Lookup(ctx(t), p.HashPart(), true)
	if err != nil {
		t.Fatal(err)
	}
	if a.NarInfo.StorePath != p.StorePath() || a.Signer != "cache.nixos.org-1" || a.Upstream.Name != "nixos" {
		t.Fatalf("answer %s signed by %q from %s", a.NarInfo.StorePath, a.Signer, a.Upstream.Name)
	}
	if got := e.requests(t, "nixos", "narinfo", "hit"); got != 1 {
		t.Fatalf("narinfo hits = %v, want 1", got)
	}
	// Kept: a second lookup asks nobody.
	if _, err := e.set.Lookup(ctx(t), p.HashPart(), true); err != nil {
		t.Fatal(err)
	}
	if n := f.srv.NarInfoRequests(p.HashPart()); n != 1 {
		t.Fatalf("%d narinfo requests, want 1", n)
	}
	if got := e.metric(t, "concordia_upstream_cache_answers_total", map[string]string{"result": "hit"}); got != 1 {
		t.Fatalf("cache hits = %v, want 1", got)
	}
}

func TestLookupInvalidHashPart(t *testing.T) {
	f := newFake(t, "k-1")
	e := newEnv(t, f.config("u"))
	for _, h := range []string{"", "short", strings.Repeat("e", 32), "../../etc/passwd"} {
		if _, err := e.set.Lookup(ctx(t), h, true); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Lookup(%q) = %v, want ErrNotFound", h, err)
		}
	}
	if n := f.srv.Requests(); n != 0 {
		t.Fatalf("%d requests for invalid hash parts", n)
	}
}

// Every bad answer is a miss for that upstream: counted, logged, cached as
// a miss (never as an answer) for the NegativeTTL.
func TestLookupBadAnswers(t *testing.T) {
	for _, tc := range []struct {
		fault  upstreamtest.Fault
		reason string
	}{
		{upstreamtest.WrongSignature, "wrong-signature"},
		{upstreamtest.Unsigned, "unsigned"},
		{upstreamtest.WrongPath, "wrong-path"},
		{upstreamtest.Malformed, "malformed"},
		{upstreamtest.Oversize, "oversize"},
	} {
		t.Run(tc.reason, func(t *testing.T) {
			f := newFake(t, "cache.nixos.org-1")
			p := f.path(t, "hello", "none")
			f.srv.SetFault(p.HashPart(), upstreamtest.NarInfo, tc.fault)
			e := newEnv(t, f.config("nixos"))
			if a, err := e.set.Lookup(ctx(t), p.HashPart(), true); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("Lookup = %v, %v; want ErrNotFound", a, err)
			}
			if got := e.metric(t, "concordia_upstream_bad_total", map[string]string{"upstream": "nixos", "reason": tc.reason}); got != 1 {
				t.Fatalf("bad_total{reason=%s} = %v, want 1", tc.reason, got)
			}
			if got := e.requests(t, "nixos", "narinfo", "bad"); got != 1 {
				t.Fatalf("requests{result=bad} = %v, want 1", got)
			}
			if log := e.log.String(); !strings.Contains(log, "upstream=nixos") || !strings.Contains(log, "reason="+tc.reason) || !strings.Contains(log, p.HashPart()) {
				t.Fatalf("log does not name upstream, reason and hash:\n%s", log)
			}
			// Healed, the upstream still is not asked until the miss expires...
			f.srv.SetFault(p.HashPart(), upstreamtest.NarInfo, upstreamtest.OK)
			if _, err := e.set.Lookup(ctx(t), p.HashPart(), true); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("second Lookup = %v, want the remembered miss", err)
			}
			if n := f.srv.NarInfoRequests(p.HashPart()); n != 1 {
				t.Fatalf("%d requests, want 1", n)
			}
			// ...and then answers.
			e.clock.Advance(upstream.DefaultNegativeTTL + time.Second)
			if _, err := e.set.Lookup(ctx(t), p.HashPart(), true); err != nil {
				t.Fatalf("after the negative TTL: %v", err)
			}
		})
	}
}

func TestLookupTooManySignatures(t *testing.T) {
	f := newFake(t, "k-1")
	p := f.path(t, "many-sigs", "none")
	for i := range 20 {
		sk, _ := upstreamtest.Key(t, "other-"+string(rune('a'+i)))
		p.NarInfo.Sign(sk)
	}
	e := newEnv(t, f.config("u"))
	if _, err := e.set.Lookup(ctx(t), p.HashPart(), true); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Lookup = %v, want ErrNotFound", err)
	}
	if got := e.metric(t, "concordia_upstream_bad_total", map[string]string{"upstream": "u", "reason": "too-many-signatures"}); got != 1 {
		t.Fatalf("bad_total = %v, want 1", got)
	}
}

func TestLookupForeignNARURL(t *testing.T) {
	f := newFake(t, "k-1")
	p := upstreamtest.NewPath(t, f.sk, "foreign", []byte("nar"), "none")
	p.NarInfo.URL = "http://elsewhere.example/nar/x.nar"
	f.srv.Add(p)
	e := newEnv(t, f.config("u"))
	if _, err := e.set.Lookup(ctx(t), p.HashPart(), true); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Lookup = %v, want ErrNotFound", err)
	}
	if got := e.metric(t, "concordia_upstream_bad_total", map[string]string{"upstream": "u", "reason": "foreign-url"}); got != 1 {
		t.Fatalf("bad_total = %v, want 1", got)
	}
}

func TestLookupOrder(t *testing.T) {
	first, second := newFake(t, "first-1"), newFake(t, "second-1")
	nar := []byte("the same NAR")
	p1 := upstreamtest.NewPath(t, first.sk, "both", nar, "none")
	p2 := upstreamtest.NewPath(t, second.sk, "both", nar, "none")
	first.srv.Add(p1)
	second.srv.Add(p2)
	only2 := second.path(t, "only-second", "none")

	e := newEnv(t, first.config("first"), second.config("second"))
	a, err := e.set.Lookup(ctx(t), p1.HashPart(), true)
	if err != nil || a.Upstream.Name != "first" || a.Signer != "first-1" {
		t.Fatalf("path on both: %v from %v", err, a)
	}
	if n := second.srv.Requests(); n != 0 {
		t.Fatalf("second asked %d times for a path the first had", n)
	}
	a, err = e.set.Lookup(ctx(t), only2.HashPart(), true)
	if err != nil || a.Upstream.Name != "second" {
		t.Fatalf("path on the second: %v from %v", err, a)
	}
	// A key of another upstream does not count.
	wrong := upstreamtest.NewPath(t, second.sk, "signed-by-second", nar, "none")
	first.srv.Add(wrong)
	if _, err := e.set.Lookup(ctx(t), wrong.HashPart(), true); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("first's path signed by the second's key: %v", err)
	}
}

func TestLookupReaders(t *testing.T) {
	writers, readers := newFake(t, "w-1"), newFake(t, "r-1")
	nar := []byte("nar")
	pw := upstreamtest.NewPath(t, writers.sk, "p", nar, "none")
	pr := upstreamtest.NewPath(t, readers.sk, "p", nar, "none")
	writers.srv.Add(pw)
	readers.srv.Add(pr)
	wc := writers.config("writers")
	wc.PullThrough = false
	e := newEnv(t, wc, readers.config("readers"))
	if !e.set.PullThrough() {
		t.Fatal("PullThrough() = false")
	}
	a, err := e.set.Lookup(ctx(t), pw.HashPart(), true)
	if err != nil || a.Upstream.Name != "readers" {
		t.Fatalf("for readers: %v from %v", err, a)
	}
	if n := writers.srv.Requests(); n != 0 {
		t.Fatalf("a PullThrough=false upstream was asked %d times for readers", n)
	}
	a, err = e.set.Lookup(ctx(t), pw.HashPart(), false)
	if err != nil || a.Upstream.Name != "writers" {
		t.Fatalf("for writers: %v from %v", err, a)
	}

	only := newEnv(t, wc)
	if only.set.PullThrough() {
		t.Fatal("PullThrough() = true without a PullThrough upstream")
	}
	if _, err := only.set.Lookup(ctx(t), pw.HashPart(), true); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("no upstream for readers: %v, want ErrNotFound", err)
	}
}

func TestNegativeCache(t *testing.T) {
	f := newFake(t, "k-1")
	p := upstreamtest.NewPath(t, f.sk, "later", []byte("nar"), "none")
	c := f.config("u")
	c.NegativeTTL = 10 * time.Minute
	e := newEnv(t, c)
	for range 3 {
		if _, err := e.set.Lookup(ctx(t), p.HashPart(), true); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("Lookup = %v, want ErrNotFound", err)
		}
	}
	if n := f.srv.NarInfoRequests(p.HashPart()); n != 1 {
		t.Fatalf("%d requests for a remembered miss, want 1", n)
	}
	if got := e.requests(t, "u", "narinfo", "miss"); got != 1 {
		t.Fatalf("misses = %v, want 1", got)
	}
	f.srv.Add(p)
	e.clock.Advance(9 * time.Minute)
	if _, err := e.set.Lookup(ctx(t), p.HashPart(), true); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("within the TTL: %v, want ErrNotFound", err)
	}
	e.clock.Advance(2 * time.Minute)
	if _, err := e.set.Lookup(ctx(t), p.HashPart(), true); err != nil {
		t.Fatalf("after the TTL: %v", err)
	}
	if n := f.srv.NarInfoRequests(p.HashPart()); n != 2 {
		t.Fatalf("%d requests, want 2", n)
	}
}

func TestPositiveTTLAndEntries(t *testing.T) {
	f := newFake(t, "k-1")
	p1, p2 := f.path(t, "one", "none"), f.path(t, "two", "none")
	e := &env{clock: newClock()}
	set, err := upstream.New(upstream.Options{Upstreams: []upstream.Config{f.config("u")},
		PositiveTTL: time.Minute, CacheEntries: 1, Now: e.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	look := func(p *upstreamtest.Path) {
		t.Helper()
		if _, err := set.Lookup(ctx(t), p.HashPart(), true); err != nil {
			t.Fatal(err)
		}
	}
	look(p1)
	look(p1)
	look(p2) // evicts p1: one entry only
	look(p1)
	if n := f.srv.NarInfoRequests(p1.HashPart()); n != 2 {
		t.Fatalf("%d requests for p1, want 2 (cached once, then evicted)", n)
	}
	e.clock.Advance(2 * time.Minute)
	look(p1)
	if n := f.srv.NarInfoRequests(p1.HashPart()); n != 3 {
		t.Fatalf("%d requests for p1, want 3 (expired)", n)
	}
}

func TestLookupHangIsUnavailable(t *testing.T) {
	f := newFake(t, "k-1")
	p := f.path(t, "hangs", "none")
	f.srv.SetFault("", upstreamtest.NarInfo, upstreamtest.Hang)
	c := f.config("u")
	c.Timeout = 200 * time.Millisecond
	e := newEnv(t, c)
	_, err := e.set.Lookup(ctx(t), p.HashPart(), true)
	if !errors.Is(err, store.ErrUnavailable) || errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Lookup of a hanging upstream = %v, want ErrUnavailable", err)
	}
	if got := e.requests(t, "u", "narinfo", "error"); got != 1 {
		t.Fatalf("errors = %v, want 1", got)
	}
}

// A failing upstream goes into backoff: the next lookups skip it without
// a request until the backoff ends, and the first answer after it brings
// it back. Failures are never remembered as misses.
func TestBackoff(t *testing.T) {
	for _, fault := range []upstreamtest.Fault{upstreamtest.Status500, upstreamtest.Status503, upstreamtest.Status429, upstreamtest.Truncated} {
		t.Run(faultName(fault), func(t *testing.T) {
			f := newFake(t, "k-1")
			p, other := f.path(t, "p", "none"), f.path(t, "other", "none")
			f.srv.SetFault("", upstreamtest.NarInfo, fault)
			c := f.config("u")
			c.Timeout = time.Second
			e := newEnv(t, c)
			if _, err := e.set.Lookup(ctx(t), p.HashPart(), true); !errors.Is(err, store.ErrUnavailable) {
				t.Fatalf("Lookup = %v, want ErrUnavailable", err)
			}
			if got := e.metric(t, "concordia_upstream_up", map[string]string{"upstream": "u"}); got != 0 {
				t.Fatalf("up = %v during backoff", got)
			}
			f.srv.SetFault("", upstreamtest.NarInfo, upstreamtest.OK)
			_, err := e.set.Lookup(ctx(t), other.HashPart(), true)
			if !errors.Is(err, upstream.ErrDown) || !errors.Is(err, store.ErrUnavailable) {
				t.Fatalf("Lookup during backoff = %v, want ErrDown", err)
			}
			if n := f.srv.Requests(); n != 1 {
				t.Fatalf("%d requests, want 1: the second lookup should skip the upstream", n)
			}
			if !strings.Contains(e.log.String(), "down") {
				t.Fatalf("no log line for going down:\n%s", e.log)
			}
			e.clock.Advance(2*c.Timeout + time.Millisecond)
			if _, err := e.set.Lookup(ctx(t), p.HashPart(), true); err != nil {
				t.Fatalf("after the backoff: %v (a failure must not be cached as a miss)", err)
			}
			if got := e.metric(t, "concordia_upstream_up", map[string]string{"upstream": "u"}); got != 1 {
				t.Fatalf("up = %v after coming back", got)
			}
			if !strings.Contains(e.log.String(), "back up") {
				t.Fatalf("no log line for coming back:\n%s", e.log)
			}
		})
	}
}

func faultName(f upstreamtest.Fault) string {
	return map[upstreamtest.Fault]string{upstreamtest.Status500: "500", upstreamtest.Status503: "503",
		upstreamtest.Status429: "429", upstreamtest.Truncated: "truncated"}[f]
}

func TestBackoffDoubles(t *testing.T) {
	f := newFake(t, "k-1")
	p := f.path(t, "p", "none")
	f.srv.SetFault("", upstreamtest.NarInfo, upstreamtest.Status503)
	c := f.config("u")
	c.Timeout = time.Second
	e := newEnv(t, c)
	e.set.Lookup(ctx(t), p.HashPart(), true) // down for 2s
	e.clock.Advance(2*time.Second + time.Millisecond)
	e.set.Lookup(ctx(t), p.HashPart(), true) // the probe fails: down for 4s
	e.clock.Advance(3 * time.Second)
	if _, err := e.set.Lookup(ctx(t), p.HashPart(), true); !errors.Is(err, upstream.ErrDown) {
		t.Fatalf("3s into a doubled backoff: %v, want ErrDown", err)
	}
	if n := f.srv.Requests(); n != 2 {
		t.Fatalf("%d requests, want 2", n)
	}
}

func TestUnavailableFallsThrough(t *testing.T) {
	down, good := newFake(t, "d-1"), newFake(t, "g-1")
	down.srv.SetFault("", upstreamtest.NarInfo, upstreamtest.Status503)
	nar := []byte("nar")
	pd := upstreamtest.NewPath(t, down.sk, "p", nar, "none")
	down.srv.Add(pd)
	good.srv.Add(upstreamtest.NewPath(t, good.sk, "p", nar, "none"))
	e := newEnv(t, down.config("down"), good.config("good"))
	a, err := e.set.Lookup(ctx(t), pd.HashPart(), true)
	if err != nil || a.Upstream.Name != "good" {
		t.Fatalf("%v from %v, want the second upstream's answer", err, a)
	}
	// None has it and one could not be asked: cannot tell.
	missing := upstreamtest.NewPath(t, good.sk, "missing", nar, "none")
	_, err = e.set.Lookup(ctx(t), missing.HashPart(), true)
	if !errors.Is(err, store.ErrUnavailable) || !strings.Contains(err.Error(), "down") {
		t.Fatalf("Lookup = %v, want ErrUnavailable naming the upstream", err)
	}
}

func TestCoalesce(t *testing.T) {
	f := newFake(t, "k-1")
	p := f.path(t, "popular", "none")
	e := newEnv(t, f.config("u"))
	release := f.srv.Hold()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := e.set.Lookup(ctx(t), p.HashPart(), true)
			errs <- err
		}()
	}
	waitFor(t, func() bool { return f.srv.Requests() >= 1 })
	time.Sleep(50 * time.Millisecond) // let the others join (or, wrongly, ask)
	release()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := f.srv.NarInfoRequests(p.HashPart()); n != 1 {
		t.Fatalf("%d requests for 16 concurrent lookups, want 1", n)
	}
}

// A caller that gives up returns at once, and the request it started
// still completes and is kept for the next caller.
func TestCallerCancelDoesNotPoison(t *testing.T) {
	f := newFake(t, "k-1")
	p := f.path(t, "p", "none")
	e := newEnv(t, f.config("u"))
	release := f.srv.Hold()
	c, cancel := context.WithCancel(ctx(t))
	done := make(chan error)
	go func() {
		_, err := e.set.Lookup(c, p.HashPart(), true)
		done <- err
	}()
	waitFor(t, func() bool { return f.srv.Requests() >= 1 })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Lookup = %v, want context.Canceled", err)
	}
	release()
	waitFor(t, func() bool { _, err := e.set.Lookup(ctx(t), p.HashPart(), true); return err == nil })
	if n := f.srv.NarInfoRequests(p.HashPart()); n != 1 {
		t.Fatalf("%d requests, want 1", n)
	}
}

func TestCredentials(t *testing.T) {
	f := newFake(t, "k-1")
	p := f.path(t, "private", "none")
	for _, tc := range []struct {
		name   string
		set    func(*upstream.Config)
		header string
	}{
		{"bearer", func(c *upstream.Config) { c.Token = "s3cret" }, "Bearer s3cret"},
		{"basic", func(c *upstream.Config) { c.User, c.Password = "ci", "pw" }, "Basic Y2k6cHc="},
		{"none", func(c *upstream.Config) {}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := f.config("u")
			tc.set(&c)
			e := newEnv(t, c)
			a, err := e.set.Lookup(ctx(t), p.HashPart(), true)
			if err != nil {
				t.Fatal(err)
			}
			if got := f.srv.Header().Get("Authorization"); got != tc.header {
				t.Fatalf("narinfo Authorization %q, want %q", got, tc.header)
			}
			if ua := f.srv.Header().Get("User-Agent"); !strings.HasPrefix(ua, "concordia/") {
				t.Fatalf("User-Agent %q", ua)
			}
			r, err := e.set.OpenNAR(ctx(t), a)
			if err != nil {
				t.Fatal(err)
			}
			r.Close()
			if got := f.srv.Header().Get("Authorization"); got != tc.header {
				t.Fatalf("NAR Authorization %q, want %q", got, tc.header)
			}
		})
	}
}

// waitFor polls cond for up to 10s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatal("condition not met within 10s")
}

// When a backoff ends, one request probes the upstream; the lookups that
// come while it is out still skip the upstream, so a dead upstream costs
// one timeout per backoff, not one per path asked.
func TestBackoffOneProbe(t *testing.T) {
	f := newFake(t, "k-1")
	p, q := f.path(t, "p", "none"), f.path(t, "q", "none")
	f.srv.SetFault("", upstreamtest.NarInfo, upstreamtest.Status503)
	c := f.config("u")
	c.Timeout = time.Second
	e := newEnv(t, c)
	e.set.Lookup(ctx(t), p.HashPart(), true)
	e.clock.Advance(3 * time.Second)
	f.srv.SetFault("", upstreamtest.NarInfo, upstreamtest.OK)
	release := f.srv.Hold()
	probe := make(chan error)
	go func() {
		_, err := e.set.Lookup(ctx(t), p.HashPart(), true)
		probe <- err
	}()
	waitFor(t, func() bool { return f.srv.Requests() == 2 })
	if _, err := e.set.Lookup(ctx(t), q.HashPart(), true); !errors.Is(err, upstream.ErrDown) {
		t.Fatalf("Lookup while the probe is out = %v, want ErrDown", err)
	}
	release()
	if err := <-probe; err != nil {
		t.Fatalf("probe: %v", err)
	}
	if _, err := e.set.Lookup(ctx(t), q.HashPart(), true); err != nil {
		t.Fatalf("after the probe answered: %v", err)
	}
	if n := f.srv.Requests(); n != 3 {
		t.Fatalf("%d requests, want 3", n)
	}
}

// caNarinfo is a content-addressed path as nix 2.8 wrote it, unsigned
// (pkg/narinfo/testdata/nix28/zstd).
const caNarinfo = `StorePath: /nix/store/p5fivlm6cwx7ymb1hyj5pq39ixp1apcs-concordia-narinfo-t.txt
URL: nar/0rs6ch8chzaqyzb0h1m6balf756awzncbkrikpwdlwfppy8rbwky.nar.zst
Compression: zstd
FileHash: sha256:0rs6ch8chzaqyzb0h1m6balf756awzncbkrikpwdlwfppy8rbwky
FileSize: 89
NarHash: sha256:1cybv4dcqggyyw0zmkxsrwyiwvkd5rsdp028vl8jbpwhm815v7fn
NarSize: 120
References: 
CA: text:sha256:0cz729xf10lrw014jj2hlbxalgdpahxbg61gdg51jnryx8dqxrmr
`

// Nix would take a content-addressed path without a signature; the cache
// does not, since it signs and serves the narinfo before any NAR is
// checked.
func TestContentAddressedNeedsSignature(t *testing.T) {
	ni, err := narinfo.Parse(strings.NewReader(caNarinfo))
	if err != nil || !ni.ContentAddressed() {
		t.Fatalf("fixture: %v, content-addressed %v", err, err == nil && ni.ContentAddressed())
	}
	f := newFake(t, "k-1")
	f.srv.Add(&upstreamtest.Path{NarInfo: ni, File: []byte("not read"), Key: f.sk})
	e := newEnv(t, f.config("u"))
	if _, err := e.set.Lookup(ctx(t), ni.HashPart(), true); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("unsigned content-addressed path: %v, want ErrNotFound", err)
	}
	if got := e.metric(t, "concordia_upstream_bad_total", map[string]string{"upstream": "u", "reason": "unsigned"}); got != 1 {
		t.Fatalf("bad_total{unsigned} = %v, want 1", got)
	}
	// Signed by the upstream's key, it is an answer.
	ni.Sign(f.sk)
	e.clock.Advance(upstream.DefaultNegativeTTL + time.Second)
	if _, err := e.set.Lookup(ctx(t), ni.HashPart(), true); err != nil {
		t.Fatalf("signed content-addressed path: %v", err)
	}
}
