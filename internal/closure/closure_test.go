package closure_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/bos55/concordia/internal/closure"
	"github.com/bos55/concordia/pkg/narinfo"
)

const nix32 = "0123456789abcdfghijklmnpqrsvwxyz"

// storePath makes a deterministic, valid store path for name.
func storePath(name string) string {
	sum := sha256.Sum256([]byte(name))
	var b strings.Builder
	for i := 0; i < 32; i++ {
		b.WriteByte(nix32[int(sum[i])%32])
	}
	return "/nix/store/" + b.String() + "-" + name
}

func base(p string) string { return p[len("/nix/store/"):] }

// fakeCache serves narinfos for a graph of paths, signed by key unless
// the path is listed in unsigned, and absent if listed in missing.
type fakeCache struct {
	mu       sync.Mutex
	docs     map[string]string // hash -> narinfo text
	requests atomic.Int64
	inflight atomic.Int64
	peak     atomic.Int64
	status   int // when non-zero, every request answers this
	token    string
}

func newFakeCache(t *testing.T, graph map[string][]string, key narinfo.SecretKey, unsigned, missing map[string]bool) (*fakeCache, *httptest.Server) {
	t.Helper()
	fc := &fakeCache{docs: map[string]string{}}
	for p, refs := range graph {
		if missing[p] {
			continue
		}
		ni := &narinfo.NarInfo{
			StorePath:   p,
			URL:         "nar/x.nar",
			Compression: "none",
			NarHash:     narinfo.SHA256(make([]byte, 32)),
			NarSize:     100,
		}
		for _, r := range refs {
			ni.References = append(ni.References, base(r))
		}
		if !unsigned[p] {
			ni.Sign(key)
		}
		fc.docs[base(p)[:32]] = ni.String()
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fc.requests.Add(1)
		n := fc.inflight.Add(1)
		defer fc.inflight.Add(-1)
		for {
			p := fc.peak.Load()
			if n <= p || fc.peak.CompareAndSwap(p, n) {
				break
			}
		}
		if fc.token != "" && r.Header.Get("Authorization") != "Bearer "+fc.token {
			http.Error(w, "no", http.StatusUnauthorized)
			return
		}
		if fc.status != 0 {
			http.Error(w, "boom", fc.status)
			return
		}
		h := strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/"), ".narinfo")
		fc.mu.Lock()
		doc, ok := fc.docs[h]
		fc.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/x-nix-narinfo")
		fmt.Fprint(w, doc)
	}))
	t.Cleanup(srv.Close)
	return fc, srv
}

// graph builds toplevel -> a, b; a -> c, self; b -> c; c -> nothing, plus
// `wide` leaves under toplevel so the walk has parallel work.
func graph(wide int) (string, map[string][]string) {
	top, a, b, c := storePath("nixos-system-x"), storePath("a"), storePath("b"), storePath("c")
	g := map[string][]string{top: {a, b}, a: {a, c}, b: {c}, c: nil}
	for i := 0; i < wide; i++ {
		l := storePath(fmt.Sprintf("leaf-%d", i))
		g[l] = []string{c}
		g[top] = append(g[top], l)
	}
	return top, g
}

func TestCheck(t *testing.T) {
	sk, pk, err := narinfo.GenerateKey("cache-1")
	if err != nil {
		t.Fatal(err)
	}
	_, otherPK, _ := narinfo.GenerateKey("other-1")
	top, g := graph(10)
	a, c := storePath("a"), storePath("c")
	tests := []struct {
		name              string
		trusted           []narinfo.PublicKey
		unsigned, missing map[string]bool
		wantMissing       []string
		wantUnsigned      []string
		wantPaths         int
	}{
		{name: "complete", trusted: []narinfo.PublicKey{pk}, wantPaths: 14},
		{name: "missing leaf", trusted: []narinfo.PublicKey{pk}, missing: map[string]bool{c: true}, wantMissing: []string{c}, wantPaths: 13},
		{name: "missing root", trusted: []narinfo.PublicKey{pk}, missing: map[string]bool{top: true}, wantMissing: []string{top}},
		{name: "unsigned", trusted: []narinfo.PublicKey{pk}, unsigned: map[string]bool{a: true}, wantUnsigned: []string{a}, wantPaths: 14},
		{name: "untrusted key", trusted: []narinfo.PublicKey{otherPK}, wantPaths: 14, wantUnsigned: sortedKeys(g)},
		{name: "no trusted keys", trusted: nil, wantPaths: 14, wantUnsigned: sortedKeys(g)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, srv := newFakeCache(t, g, sk, tt.unsigned, tt.missing)
			ck := &closure.Checker{Cache: srv.URL, Trusted: tt.trusted, Workers: 4}
			res, err := ck.Check(context.Background(), top)
			if err != nil {
				t.Fatal(err)
			}
			if res.Paths != tt.wantPaths {
				t.Errorf("Paths = %d, want %d", res.Paths, tt.wantPaths)
			}
			if fmt.Sprint(res.Missing) != fmt.Sprint(tt.wantMissing) {
				t.Errorf("Missing = %v, want %v", res.Missing, tt.wantMissing)
			}
			if fmt.Sprint(res.Unsigned) != fmt.Sprint(tt.wantUnsigned) {
				t.Errorf("Unsigned = %v, want %v", res.Unsigned, tt.wantUnsigned)
			}
			if res.OK() != (len(tt.wantMissing) == 0 && len(tt.wantUnsigned) == 0) {
				t.Errorf("OK() = %v", res.OK())
			}
		})
	}
}

func sortedKeys(g map[string][]string) []string {
	var out []string
	for k := range g {
		out = append(out, k)
	}
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

func TestCheckParallelAndMemo(t *testing.T) {
	sk, pk, _ := narinfo.GenerateKey("cache-1")
	top, g := graph(200)
	fc, srv := newFakeCache(t, g, sk, nil, nil)
	ck := &closure.Checker{Cache: srv.URL, Trusted: []narinfo.PublicKey{pk}, Workers: 8}
	var wg sync.WaitGroup
	for i := 0; i < 5; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := ck.Check(context.Background(), top)
			if err != nil || !res.OK() || res.Paths != len(g) {
				t.Errorf("Check = %+v, %v", res, err)
			}
		}()
	}
	wg.Wait()
	if got := fc.requests.Load(); got != int64(len(g)) {
		t.Errorf("requests = %d, want %d (one per path, shared across checks)", got, len(g))
	}
	if p := fc.peak.Load(); p > 8 {
		t.Errorf("peak concurrent requests = %d, want <= 8", p)
	}
}

func TestCheckErrors(t *testing.T) {
	sk, pk, _ := narinfo.GenerateKey("cache-1")
	top, g := graph(3)
	t.Run("server error", func(t *testing.T) {
		fc, srv := newFakeCache(t, g, sk, nil, nil)
		fc.status = http.StatusInternalServerError
		_, err := (&closure.Checker{Cache: srv.URL, Trusted: []narinfo.PublicKey{pk}}).Check(context.Background(), top)
		if !errors.Is(err, closure.ErrCache) {
			t.Fatalf("err = %v, want ErrCache", err)
		}
	})
	t.Run("token", func(t *testing.T) {
		fc, srv := newFakeCache(t, g, sk, nil, nil)
		fc.token = "s3cret"
		_, err := (&closure.Checker{Cache: srv.URL, Trusted: []narinfo.PublicKey{pk}}).Check(context.Background(), top)
		if !errors.Is(err, closure.ErrCache) {
			t.Fatalf("without token: err = %v, want ErrCache", err)
		}
		res, err := (&closure.Checker{Cache: srv.URL, Token: "s3cret", Trusted: []narinfo.PublicKey{pk}}).Check(context.Background(), top)
		if err != nil || !res.OK() {
			t.Fatalf("with token: %+v, %v", res, err)
		}
	})
	t.Run("bad root", func(t *testing.T) {
		_, err := (&closure.Checker{Cache: "http://127.0.0.1:1"}).Check(context.Background(), "/nix/store/nope")
		if err == nil {
			t.Fatal("want error")
		}
	})
	t.Run("unreachable", func(t *testing.T) {
		_, err := (&closure.Checker{Cache: "http://127.0.0.1:1"}).Check(context.Background(), top)
		if !errors.Is(err, closure.ErrCache) {
			t.Fatalf("err = %v, want ErrCache", err)
		}
	})
}

// TestCheckContentAddressed: a content-addressed path needs no signature,
// as in Nix (its store path is derived from its CA), but a narinfo whose CA
// does not produce its store path is no such proof.
func TestCheckContentAddressed(t *testing.T) {
	_, pk, _ := narinfo.GenerateKey("cache-1")
	// Written by `nix copy` from a `nix-store --add` path (pkg/narinfo's fixtures), unsigned.
	const doc = "StorePath: /nix/store/74bdasmc8wsgir1vmpwjml685ssdi46q-concordia-narinfo-flat\nURL: nar/1hz895vkrd9mfbmk89rj4i3ax1g1m3sbr4pqdwfa84bzbij5l27n.nar\nCompression: none\nNarHash: sha256:1hz895vkrd9mfbmk89rj4i3ax1g1m3sbr4pqdwfa84bzbij5l27n\nNarSize: 120\nReferences: \nCA: fixed:sha256:1xk2hhjr0f2n4adj1h688wlz59xpl86y1r8bd2pjasg8gy16mikb\n"
	for _, tt := range []struct {
		name, doc    string
		wantUnsigned bool
	}{
		{"valid CA", doc, false},
		{"CA not matching the path", strings.Replace(doc, "1xk2hhjr", "0xk2hhjr", 1), true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/74bdasmc8wsgir1vmpwjml685ssdi46q.narinfo" {
					http.NotFound(w, r)
					return
				}
				fmt.Fprint(w, tt.doc)
			}))
			defer srv.Close()
			ck := &closure.Checker{Cache: srv.URL, Trusted: []narinfo.PublicKey{pk}, Workers: 2}
			res, err := ck.Check(context.Background(), "/nix/store/74bdasmc8wsgir1vmpwjml685ssdi46q-concordia-narinfo-flat")
			if err != nil {
				t.Fatal(err)
			}
			if got := len(res.Unsigned) == 1; got != tt.wantUnsigned || len(res.Missing) != 0 {
				t.Fatalf("unsigned %v missing %v, want unsigned=%v", res.Unsigned, res.Missing, tt.wantUnsigned)
			}
		})
	}
}
