package upstream_test

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/upstream"
	"github.com/bos55/concordia/internal/upstream/upstreamtest"
	"github.com/bos55/concordia/pkg/narinfo"
)

const someHash = "0123456789abcdfghijklmnpqrsvwxyz"

// statusServer answers every request with code, counting them.
func statusServer(t *testing.T, code int) (*httptest.Server, *atomic.Int64) {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		http.Error(w, http.StatusText(code), code)
	}))
	t.Cleanup(srv.Close)
	return srv, &n
}

// Nix reads 401, 403, 404 and 410 on a narinfo as "absent": so does
// Lookup, and remembers it. Other statuses are "could not ask".
func TestStatuses(t *testing.T) {
	_, pk := upstreamtest.Key(t, "k-1")
	for _, tc := range []struct {
		code    int
		missing bool
	}{
		{401, true}, {403, true}, {404, true}, {410, true},
		{400, false}, {408, false}, {500, false}, {502, false},
	} {
		t.Run(http.StatusText(tc.code), func(t *testing.T) {
			srv, n := statusServer(t, tc.code)
			e := newEnv(t, upstream.Config{Name: "u", URL: srv.URL, Keys: []narinfo.PublicKey{pk}, PullThrough: true})
			_, err := e.set.Lookup(ctx(t), someHash, true)
			if tc.missing != errors.Is(err, store.ErrNotFound) || tc.missing == errors.Is(err, store.ErrUnavailable) {
				t.Fatalf("%d: Lookup = %v, want missing=%v", tc.code, err, tc.missing)
			}
			e.set.Lookup(ctx(t), someHash, true) // remembered, or in backoff: no request either way
			if n.Load() != 1 {
				t.Fatalf("%d requests, want 1", n.Load())
			}
		})
	}
}

func TestRedirects(t *testing.T) {
	f := newFake(t, "k-1")
	p := f.path(t, "moved", "none")
	// One redirect (to the real cache) is followed.
	mover := httptest.NewServer(http.RedirectHandler(f.srv.URL+"/"+p.HashPart()+".narinfo", http.StatusFound))
	t.Cleanup(mover.Close)
	c := f.config("u")
	c.URL = mover.URL
	e := newEnv(t, c)
	if _, err := e.set.Lookup(ctx(t), p.HashPart(), true); err != nil {
		t.Fatalf("through a redirect: %v", err)
	}
	// A loop is not.
	var n atomic.Int64
	var loop *httptest.Server
	loop = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		http.Redirect(w, r, loop.URL+r.URL.Path+"x", http.StatusFound)
	}))
	t.Cleanup(loop.Close)
	c.URL = loop.URL
	e = newEnv(t, c)
	_, err := e.set.Lookup(ctx(t), p.HashPart(), true)
	if !errors.Is(err, store.ErrUnavailable) || !strings.Contains(err.Error(), "redirects") {
		t.Fatalf("redirect loop: %v, want ErrUnavailable", err)
	}
	if n.Load() != 6 {
		t.Fatalf("%d requests in a redirect loop, want 6 (5 redirects followed)", n.Load())
	}
}
