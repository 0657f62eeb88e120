package upstream_test

import (
	"bytes"
	"errors"
	"io"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/upstream"
	"github.com/bos55/concordia/internal/upstream/upstreamtest"
)

func readNAR(t *testing.T, e *env, a *upstream.Answer) ([]byte, error) {
	t.Helper()
	r, err := e.set.OpenNAR(ctx(t), a)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

func TestOpenNAR(t *testing.T) {
	for _, comp := range []string{"none", "zstd"} {
		t.Run(comp, func(t *testing.T) {
			f := newFake(t, "k-1")
			p := f.path(t, "hello", comp)
			// Under a prefix: the NAR URL is relative to it, as Nix reads it.
			c := f.config("u")
			c.URL = f.srv.URL + "/cache/"
			e := newEnv(t, c)
			a, err := e.set.Lookup(ctx(t), p.HashPart(), true)
			if err != nil {
				t.Fatal(err)
			}
			got, err := readNAR(t, e, a)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, p.File) {
				t.Fatalf("got %d bytes, want the %d of the file", len(got), len(p.File))
			}
			if n := f.srv.Count("/cache/" + a.NarInfo.URL); n != 1 {
				t.Fatalf("%d requests for /cache/%s, want 1", n, a.NarInfo.URL)
			}
			if n := f.srv.NARRequests(p.HashPart()); n != 1 {
				t.Fatalf("%d NAR requests, want 1", n)
			}
			if got := e.metric(t, "concordia_upstream_bytes_total", map[string]string{"upstream": "u"}); got != float64(len(p.File)) {
				t.Fatalf("bytes_total = %v, want %d", got, len(p.File))
			}
			if got := e.requests(t, "u", "nar", "hit"); got != 1 {
				t.Fatalf("nar hits = %v, want 1", got)
			}
		})
	}
}

func TestOpenNARURLs(t *testing.T) {
	f := newFake(t, "k-1")
	p := f.path(t, "hello", "none")
	e := newEnv(t, f.config("u"))
	a, err := e.set.Lookup(ctx(t), p.HashPart(), true)
	if err != nil {
		t.Fatal(err)
	}
	base, _ := url.Parse(f.srv.URL)
	with := func(u string) *upstream.Answer {
		ni := *a.NarInfo
		ni.URL = u
		return &upstream.Answer{Upstream: a.Upstream, NarInfo: &ni, Signer: a.Signer}
	}
	// The same host, absolutely: allowed.
	if got, err := readNAR(t, e, with(f.srv.URL+"/"+p.NarInfo.URL)); err != nil || !bytes.Equal(got, p.File) {
		t.Fatalf("absolute URL on the upstream's host: %v", err)
	}
	for _, foreign := range []string{
		"http://elsewhere.example/" + p.NarInfo.URL,
		"https://" + base.Host + "/" + p.NarInfo.URL, // another scheme
		"//elsewhere.example/" + p.NarInfo.URL,
		"http://user:pw@" + base.Host + "/" + p.NarInfo.URL,
		"ftp://" + base.Host + "/x",
	} {
		before := f.srv.Requests()
		if _, err := e.set.OpenNAR(ctx(t), with(foreign)); !errors.Is(err, upstream.ErrNARURL) {
			t.Errorf("OpenNAR(%q) = %v, want ErrNARURL", foreign, err)
		}
		if f.srv.Requests() != before {
			t.Errorf("OpenNAR(%q) sent a request", foreign)
		}
	}
}

func TestOpenNARNotFound(t *testing.T) {
	f := newFake(t, "k-1")
	p := f.path(t, "hello", "none")
	f.srv.SetFault(p.HashPart(), upstreamtest.NAR, upstreamtest.NotFound)
	e := newEnv(t, f.config("u"))
	a, err := e.set.Lookup(ctx(t), p.HashPart(), true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.set.OpenNAR(ctx(t), a); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("OpenNAR = %v, want ErrNotFound", err)
	}
	f.srv.SetFault(p.HashPart(), upstreamtest.NAR, upstreamtest.Status503)
	if _, err := e.set.OpenNAR(ctx(t), a); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("OpenNAR = %v, want ErrUnavailable", err)
	}
}

func TestOpenNARStall(t *testing.T) {
	for _, fault := range []upstreamtest.Fault{upstreamtest.SlowBody, upstreamtest.Hang} {
		name := map[upstreamtest.Fault]string{upstreamtest.SlowBody: "slow-body", upstreamtest.Hang: "hang"}[fault]
		t.Run(name, func(t *testing.T) {
			f := newFake(t, "k-1")
			p := upstreamtest.NewPath(t, f.sk, "big", bytes.Repeat([]byte("x"), 64<<10), "none")
			f.srv.Add(p)
			f.srv.SetFault(p.HashPart(), upstreamtest.NAR, fault)
			c := f.config("u")
			c.Timeout = 500 * time.Millisecond // the narinfo before must still arrive on a busy machine
			e := newEnv(t, c)
			a, err := e.set.Lookup(ctx(t), p.HashPart(), true)
			if err != nil {
				t.Fatal(err)
			}
			_, err = readNAR(t, e, a)
			if !errors.Is(err, upstream.ErrStalled) || !errors.Is(err, store.ErrUnavailable) {
				t.Fatalf("read of a stalled NAR = %v, want ErrStalled", err)
			}
			if got := e.requests(t, "u", "nar", "error"); got != 1 {
				t.Fatalf("nar errors = %v, want 1", got)
			}
		})
	}
}

// A slow reader is not a stalled upstream: the watchdog runs only while a
// Read waits.
func TestOpenNARSlowReader(t *testing.T) {
	f := newFake(t, "k-1")
	p := f.path(t, "hello", "none")
	c := f.config("u")
	c.Timeout = 300 * time.Millisecond
	e := newEnv(t, c)
	a, err := e.set.Lookup(ctx(t), p.HashPart(), true)
	if err != nil {
		t.Fatal(err)
	}
	r, err := e.set.OpenNAR(ctx(t), a)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	time.Sleep(time.Second)
	if got, err := io.ReadAll(r); err != nil || !bytes.Equal(got, p.File) {
		t.Fatalf("read after a pause: %v", err)
	}
}

func TestOpenNARTruncated(t *testing.T) {
	f := newFake(t, "k-1")
	p := upstreamtest.NewPath(t, f.sk, "cut", bytes.Repeat([]byte("y"), 32<<10), "none")
	f.srv.Add(p)
	f.srv.SetFault(p.HashPart(), upstreamtest.NAR, upstreamtest.Truncated)
	e := newEnv(t, f.config("u"))
	a, err := e.set.Lookup(ctx(t), p.HashPart(), true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := readNAR(t, e, a); !errors.Is(err, io.ErrUnexpectedEOF) || !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("read of a truncated NAR = %v, want io.ErrUnexpectedEOF", err)
	}
}

// The caller finds the NAR does not match (OpenNAR does not check) and
// reports it with Bad: counted, logged, and the answer dropped so the
// next lookup does not hand out the same NAR.
func TestBadNAR(t *testing.T) {
	f := newFake(t, "k-1")
	p := f.path(t, "hello", "none")
	f.srv.SetFault(p.HashPart(), upstreamtest.NAR, upstreamtest.WrongNarHash)
	e := newEnv(t, f.config("u"))
	a, err := e.set.Lookup(ctx(t), p.HashPart(), true)
	if err != nil {
		t.Fatal(err)
	}
	got, err := readNAR(t, e, a)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(got, p.File) || len(got) != len(p.File) {
		t.Fatal("WrongNarHash served the right bytes")
	}
	e.set.Bad(a.Upstream, a.NarInfo.StorePath, upstream.ReasonNarHash, errors.New("test"))
	if got := e.metric(t, "concordia_upstream_bad_total", map[string]string{"upstream": "u", "reason": "nar-hash"}); got != 1 {
		t.Fatalf("bad_total{nar-hash} = %v, want 1", got)
	}
	if log := e.log.String(); !strings.Contains(log, "reason=nar-hash") || !strings.Contains(log, a.NarInfo.StorePath) {
		t.Fatalf("log does not name the reason and path:\n%s", log)
	}
	if _, err := e.set.Lookup(ctx(t), p.HashPart(), true); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Lookup after Bad = %v, want ErrNotFound", err)
	}
}
