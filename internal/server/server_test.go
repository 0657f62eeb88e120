package server_test

import (
	"bytes"
	"compress/bzip2"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"html"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/bos55/concordia/internal/auth"
	"github.com/bos55/concordia/internal/server"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/zstdcache"
	"github.com/bos55/concordia/pkg/nar"
	"github.com/bos55/concordia/pkg/narinfo"
)

// hashOf makes a valid 32-character nix32 hash part from a seed.
func hashOf(seed string) string {
	sum := sha256.Sum256([]byte(seed))
	return narinfo.SHA256(sum[:]).String()[7:39]
}

type fixture struct {
	t     testing.TB
	st    *fakeStore
	key   narinfo.SecretKey
	srv   *server.Server
	a, b  string // hashes: a references b
	pa    *fakePath
	pb    *fakePath
	cache *memCache
}

func newFixture(t testing.TB, mutate func(*server.Options)) *fixture {
	t.Helper()
	f := &fixture{t: t, st: newFakeStore(), a: hashOf("a"), b: hashOf("b")}
	f.pb = f.st.addTree(t, f.b, "lib", map[string]string{"lib/libx.so": strings.Repeat("x", 5000)})
	f.pa = f.st.addTree(t, f.a, "app", map[string]string{
		"bin/app":    strings.Repeat("binary bytes ", 700),
		"share/doc":  "docs here\n",
		"share/more": strings.Repeat("m", 12345),
	}, f.b+"-lib")
	f.pa.info.References = append(f.pa.info.References, f.pa.info.StorePath) // self reference
	f.pa.info.Sigs = []string{"cache.example.org-1:" + strings.Repeat("A", 86) + "=="}
	sk, _, err := narinfo.GenerateKey("test-cache-1")
	if err != nil {
		t.Fatal(err)
	}
	f.key = sk
	opts := server.Options{Stores: []store.Store{f.st}, Keys: []narinfo.SecretKey{sk}, NegotiateEncoding: true}
	if mutate != nil {
		mutate(&opts)
	}
	f.srv, err = server.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// do runs one request through the real handler.
func (f *fixture) do(method, target string, hdr ...string) *httptest.ResponseRecorder {
	f.t.Helper()
	req := httptest.NewRequest(method, target, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	rec := httptest.NewRecorder()
	f.srv.ServeHTTP(rec, req)
	return rec
}

func (f *fixture) narinfo(hash string) *narinfo.NarInfo {
	f.t.Helper()
	rec := f.do("GET", "/"+hash+".narinfo")
	if rec.Code != 200 {
		f.t.Fatalf("narinfo %s: %d %s", hash, rec.Code, rec.Body)
	}
	ni, err := narinfo.Parse(rec.Body)
	if err != nil {
		f.t.Fatal(err)
	}
	return ni
}

func TestCacheInfo(t *testing.T) {
	f := newFixture(t, func(o *server.Options) { o.Priority = 41 })
	for _, m := range []string{"GET", "HEAD"} {
		rec := f.do(m, "/nix-cache-info")
		if rec.Code != 200 || rec.Header().Get("Content-Type") != "text/x-nix-cache-info" {
			t.Fatalf("%s: %d %q", m, rec.Code, rec.Header().Get("Content-Type"))
		}
		want := "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 41\n"
		if m == "GET" && rec.Body.String() != want {
			t.Errorf("body %q, want %q", rec.Body, want)
		}
		if m == "HEAD" && rec.Body.Len() != 0 {
			t.Errorf("HEAD has a body")
		}
	}
}

func TestNarinfoSignedAndWellFormed(t *testing.T) {
	for _, comp := range []string{"zstd", "none"} {
		t.Run(comp, func(t *testing.T) {
			f := newFixture(t, func(o *server.Options) { o.Compression = comp })
			rec := f.do("GET", "/"+f.a+".narinfo")
			if ct := rec.Header().Get("Content-Type"); ct != "text/x-nix-narinfo" {
				t.Errorf("Content-Type %q", ct)
			}
			if rec.Header().Get("Content-Length") != fmt.Sprint(rec.Body.Len()) {
				t.Errorf("Content-Length %q for %d bytes", rec.Header().Get("Content-Length"), rec.Body.Len())
			}
			ni := f.narinfo(f.a)
			if ni.StorePath != f.pa.info.StorePath || ni.NarSize != f.pa.info.NarSize || !bytes.Equal(ni.NarHash.Digest, f.pa.info.NarHash) {
				t.Errorf("narinfo fields: %+v", ni)
			}
			if _, ok := ni.Verify([]narinfo.PublicKey{f.key.Public()}); !ok {
				t.Errorf("our signature does not verify:\n%s", ni)
			}
			if len(ni.Sigs) != 2 {
				t.Errorf("want our sig plus the store's, got %v", ni.Sigs)
			}
			if ni.Compression != comp {
				t.Errorf("Compression %q", ni.Compression)
			}
			wantURL := "nar/" + f.a + "-" + ni.NarHash.String()[7:] + map[string]string{"zstd": ".nar.zst", "none": ".nar"}[comp]
			if ni.URL != wantURL {
				t.Errorf("URL %q, want %q", ni.URL, wantURL)
			}
			if len(ni.References) != 2 || ni.Deriver == "" {
				t.Errorf("refs %v deriver %q", ni.References, ni.Deriver)
			}
			head := f.do("HEAD", "/"+f.a+".narinfo")
			if head.Code != 200 || head.Body.Len() != 0 || head.Header().Get("Content-Length") != rec.Header().Get("Content-Length") {
				t.Errorf("HEAD: %d, %d body bytes, length %q", head.Code, head.Body.Len(), head.Header().Get("Content-Length"))
			}
		})
	}
}

func TestNarinfoCacheAndGC(t *testing.T) {
	f := newFixture(t, func(o *server.Options) { o.NarInfoTTL = time.Hour })
	f.narinfo(f.a)
	calls := f.st.infoCalls.Load()
	for range 5 {
		f.narinfo(f.a)
	}
	if got := f.st.infoCalls.Load(); got != calls {
		t.Errorf("cached narinfo asked the store %d more times", got-calls)
	}
	m := f.do("GET", "/metrics").Body.String()
	if !strings.Contains(m, `concordia_narinfo_cache_total{result="hit"} 5`) {
		t.Errorf("hit metric missing:\n%s", grep(m, "narinfo_cache"))
	}

	// With a tiny TTL, a path deleted from the store stops answering.
	g := newFixture(t, func(o *server.Options) { o.NarInfoTTL = time.Nanosecond })
	g.narinfo(g.a)
	g.st.delete(g.a)
	time.Sleep(time.Millisecond)
	if rec := g.do("GET", "/"+g.a+".narinfo"); rec.Code != 404 {
		t.Errorf("deleted path: %d", rec.Code)
	}
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func TestBadInputIs404(t *testing.T) {
	f := newFixture(t, nil)
	long := "/" + strings.Repeat("a", 5000)
	for _, target := range []string{
		"/" + hashOf("unknown") + ".narinfo",                // unknown
		"/" + f.a[:31] + ".narinfo",                         // short
		"/" + strings.ToUpper(f.a) + ".narinfo",             // bad alphabet
		"/" + "e" + f.a[1:] + ".narinfo",                    // e is not nix32
		"/" + f.a + ".narinf",                               // wrong extension
		"/" + f.a + ".narinfo.zst",                          //
		"/" + f.a,                                           //
		"/" + f.a + ".ls.gz",                                //
		"/nar/" + f.a + ".nar.zst",                          // unknown form
		"/nar/" + f.a + "-" + f.a + ".nar",                  // narhash too short
		"/nar/" + hashOf("x") + "-" + narHashOf(f) + ".nar", // unknown out hash
		"/nar/" + narHashOf(f) + ".nar",                     // Harmonia form without ?hash=
		"/nar/" + narHashOf(f) + ".nar?hash=zzz",            //
		"/nar/" + f.a + "-" + narHashOf(f) + ".nar.xz",      // no xz for a plain store
		"/nar/../../etc/passwd",                             // traversal
		"/log/../../etc/passwd",                             //
		"/nar/%2e%2e/%2e%2e/etc/passwd",                     //
		"/" + f.a + "%00.narinfo",                           // NUL
		"/log/" + f.a + "-x.drv%00",                         //
		long,                                                // over-long
		"/log/notahash-x.drv",                               //
		"/log/" + f.a + "-app",                              // not a .drv
		"/realisations/sha256:abc!out.doi",                  //
		"/realisations/" + "sha256:" + strings.Repeat("0", 64) + "!out.doi", // unknown (no capability)
		"/build-trace-v2/x/out.doi",                                         //
		"/serve/" + f.a + "/etc/passwd",                                     // no /serve route
	} {
		t.Run(target[:min(len(target), 60)], func(t *testing.T) {
			for _, m := range []string{"GET", "HEAD"} {
				rec := f.do(m, target)
				if rec.Code != 404 {
					t.Errorf("%s %s: %d, want 404", m, target, rec.Code)
				}
			}
		})
	}
}

func narHashOf(f *fixture) string { return narinfo.SHA256(f.pa.info.NarHash).String()[7:] }

func TestIOErrorIs500(t *testing.T) {
	f := newFixture(t, nil)
	f.st.infoErr = errors.New("database is locked")
	for _, target := range []string{"/" + f.a + ".narinfo", "/nar/" + f.a + "-" + narHashOf(f) + ".nar", "/" + f.a + ".ls"} {
		rec := f.do("GET", target)
		if rec.Code != 500 {
			t.Errorf("%s: %d, want 500", target, rec.Code)
		}
		if strings.Contains(rec.Body.String(), "locked") {
			t.Errorf("500 leaks the internal error: %q", rec.Body)
		}
	}
}

func TestStatusMapping(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{fmt.Errorf("x: %w", store.ErrNotFound), 404},
		{fmt.Errorf("x: %w", store.ErrInvalid), 400},
		{fmt.Errorf("x: %w", nar.ErrInvalid), 400},
		{fmt.Errorf("x: %w", narinfo.ErrInvalid), 400},
		{fmt.Errorf("x: %w", store.ErrNoSpace), 507},
		{fmt.Errorf("x: %w", store.ErrConflict), 409},
		{auth.ErrNoCredentials, 401},
		{auth.ErrUnknownToken, 401},
		{fmt.Errorf("x: %w", auth.ErrForbidden), 403},
		{errors.New("EIO"), 500},
		{context.DeadlineExceeded, 500},
	} {
		if got := server.Status(tc.err); got != tc.want {
			t.Errorf("Status(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}

func narURL(f *fixture, ext string) string {
	return "/nar/" + f.a + "-" + narHashOf(f) + ".nar" + ext
}

func TestNARIdentity(t *testing.T) {
	f := newFixture(t, nil)
	want := f.pa.nar
	for _, target := range []string{
		narURL(f, ""), // Concordia and nix-serve
		"/nar/" + narHashOf(f) + ".nar?hash=" + f.a, // Harmonia
		"/nar/" + f.a + ".nar",                      // nix-serve legacy
	} {
		rec := f.do("GET", target)
		if rec.Code != 200 || !bytes.Equal(rec.Body.Bytes(), want) {
			t.Fatalf("%s: %d, %d bytes (want %d)", target, rec.Code, rec.Body.Len(), len(want))
		}
		h := rec.Header()
		if h.Get("Content-Length") != fmt.Sprint(len(want)) || h.Get("Accept-Ranges") != "bytes" || h.Get("Content-Encoding") != "" {
			t.Errorf("%s headers: %v", target, h)
		}
	}
	head := f.do("HEAD", narURL(f, ""))
	if head.Code != 200 || head.Body.Len() != 0 || head.Header().Get("Content-Length") != fmt.Sprint(len(want)) {
		t.Errorf("HEAD: %d %d %v", head.Code, head.Body.Len(), head.Header())
	}
}

func TestNARRanges(t *testing.T) {
	f := newFixture(t, nil)
	data := f.pa.nar
	n := len(data)
	for _, tc := range []struct {
		rng        string
		start, end int // inclusive end
	}{
		{"bytes=0-0", 0, 0},
		{"bytes=0-99", 0, 99},
		{"bytes=999-1000", 999, 1000}, // across a chunk boundary
		{"bytes=1500-", 1500, n - 1},
		{fmt.Sprintf("bytes=%d-", n-1), n - 1, n - 1},
		{"bytes=-300", n - 300, n - 1},
		{fmt.Sprintf("bytes=100-%d", n+500), 100, n - 1},
	} {
		rec := f.do("GET", narURL(f, ""), "Range", tc.rng, "Accept-Encoding", "zstd")
		if rec.Code != 206 {
			t.Fatalf("%s: %d", tc.rng, rec.Code)
		}
		if !bytes.Equal(rec.Body.Bytes(), data[tc.start:tc.end+1]) {
			t.Errorf("%s: wrong bytes (%d)", tc.rng, rec.Body.Len())
		}
		if cr := rec.Header().Get("Content-Range"); cr != fmt.Sprintf("bytes %d-%d/%d", tc.start, tc.end, n) {
			t.Errorf("%s: Content-Range %q", tc.rng, cr)
		}
		if rec.Header().Get("Content-Encoding") != "" {
			t.Errorf("%s: a range must not be content-encoded", tc.rng)
		}
	}
	for _, rng := range []string{fmt.Sprintf("bytes=%d-", n), "bytes=-0", fmt.Sprintf("bytes=%d-%d", n+10, n+20)} {
		rec := f.do("GET", narURL(f, ""), "Range", rng)
		if rec.Code != 416 || rec.Header().Get("Content-Range") != fmt.Sprintf("bytes */%d", n) {
			t.Errorf("%s: %d %q, want 416", rng, rec.Code, rec.Header().Get("Content-Range"))
		}
	}
	// Ignored: malformed, several ranges, If-Range for something else.
	for _, hdr := range [][]string{{"Range", "bytes=a-b"}, {"Range", "bytes=0-1,5-6"}, {"Range", "bytes=0-1", "If-Range", `"other"`}} {
		rec := f.do("GET", narURL(f, ""), hdr...)
		if rec.Code != 200 || rec.Body.Len() != n {
			t.Errorf("%v: %d, %d bytes; want full 200", hdr, rec.Code, rec.Body.Len())
		}
	}
	etag := f.do("HEAD", narURL(f, "")).Header().Get("ETag")
	if rec := f.do("GET", narURL(f, ""), "Range", "bytes=5-9", "If-Range", etag); rec.Code != 206 {
		t.Errorf("matching If-Range: %d", rec.Code)
	}
}

func unzstd(t *testing.T, b []byte) []byte {
	t.Helper()
	d, err := zstd.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	out, err := io.ReadAll(d)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestNARAcceptEncoding(t *testing.T) {
	for _, withCache := range []bool{false, true} {
		t.Run(fmt.Sprint("cache=", withCache), func(t *testing.T) {
			f := newFixture(t, func(o *server.Options) {
				if withCache {
					o.Cache = newMemCache()
				}
			})
			for _, tc := range []struct {
				ae      string
				encoded bool
			}{
				{"", false},
				{"gzip, deflate", false},
				{"identity", false},
				{"*", false},
				{"zstd;q=0", false},
				{"gzip, zstd", true},
				{"ZSTD;q=0.5", true},
			} {
				rec := f.do("GET", narURL(f, ""), "Accept-Encoding", tc.ae)
				ce := rec.Header().Get("Content-Encoding")
				if rec.Code != 200 || (ce == "zstd") != tc.encoded || (ce != "" && ce != "zstd") {
					t.Fatalf("Accept-Encoding %q: %d, Content-Encoding %q", tc.ae, rec.Code, ce)
				}
				body := rec.Body.Bytes()
				if tc.encoded {
					body = unzstd(t, body)
				} else if rec.Header().Get("Accept-Ranges") != "bytes" {
					t.Errorf("identity without Accept-Ranges")
				}
				if !bytes.Equal(body, f.pa.nar) {
					t.Errorf("Accept-Encoding %q: body differs from the NAR", tc.ae)
				}
				if !strings.Contains(rec.Header().Get("Vary"), "Accept-Encoding") {
					t.Errorf("no Vary: Accept-Encoding")
				}
			}
		})
	}
	// Harmonia's enable_compression = false: never encoded.
	f := newFixture(t, func(o *server.Options) { o.NegotiateEncoding = false })
	if rec := f.do("GET", narURL(f, ""), "Accept-Encoding", "zstd"); rec.Header().Get("Content-Encoding") != "" {
		t.Errorf("encoded although negotiation is off")
	}
}

func TestNARZst(t *testing.T) {
	for _, mode := range []string{"no-cache", "complete", "incomplete"} {
		t.Run(mode, func(t *testing.T) {
			var c *memCache
			f := newFixture(t, func(o *server.Options) {
				if mode != "no-cache" {
					c = newMemCache()
					c.incomplete = mode == "incomplete"
					o.Cache = c
				}
			})
			for range 2 {
				rec := f.do("GET", narURL(f, ".zst"))
				if rec.Code != 200 || rec.Header().Get("Content-Encoding") != "" {
					t.Fatalf("%d, Content-Encoding %q", rec.Code, rec.Header().Get("Content-Encoding"))
				}
				if !bytes.Equal(unzstd(t, rec.Body.Bytes()), f.pa.nar) {
					t.Fatal(".nar.zst does not decode to the NAR")
				}
			}
			if c != nil && c.produced.Load() != 1 {
				t.Errorf("compressed %d times", c.produced.Load())
			}
			rec := f.do("GET", narURL(f, ".zst"), "Range", "bytes=4-9")
			switch mode {
			case "complete":
				full := f.do("GET", narURL(f, ".zst")).Body.Bytes()
				if rec.Code != 206 || !bytes.Equal(rec.Body.Bytes(), full[4:10]) || rec.Header().Get("Accept-Ranges") != "bytes" {
					t.Errorf("range on a complete .nar.zst: %d", rec.Code)
				}
				if bad := f.do("GET", narURL(f, ".zst"), "Range", fmt.Sprintf("bytes=%d-", len(full))); bad.Code != 416 {
					t.Errorf("unsatisfiable range on .nar.zst: %d", bad.Code)
				}
			default:
				if rec.Code != 200 {
					t.Errorf("range on a growing .nar.zst: %d, want full 200", rec.Code)
				}
			}
			if h := f.do("HEAD", narURL(f, ".zst")); h.Code != 200 || h.Body.Len() != 0 {
				t.Errorf("HEAD: %d", h.Code)
			}
		})
	}
}

func TestNARHashMismatchIs404(t *testing.T) {
	f := newFixture(t, nil)
	other := narinfo.SHA256(make([]byte, 32)).String()[7:]
	for _, target := range []string{"/nar/" + f.a + "-" + other + ".nar", "/nar/" + other + ".nar?hash=" + f.a, "/nar/" + f.a + "-" + other + ".nar.zst"} {
		if rec := f.do("GET", target); rec.Code != 404 {
			t.Errorf("%s: %d", target, rec.Code)
		}
	}
}

func TestNARGoneBetweenLookupAndDump(t *testing.T) {
	for _, cache := range []string{"none", "fake", "compress"} {
		t.Run(cache, func(t *testing.T) { testNARGone(t, cache) })
	}
}

func testNARGone(t *testing.T, cache string) {
	f := newFixture(t, func(o *server.Options) {
		switch cache {
		case "fake":
			o.Cache = newMemCache()
		case "compress":
			cc, err := zstdcache.Open(t.TempDir(), 1<<20, 1, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { cc.Close() })
			o.Cache = server.CompressCache(cc)
		}
	})
	f.pa.goneAtNAR = true
	for _, target := range []string{narURL(f, ""), narURL(f, ".zst")} {
		for _, ae := range []string{"", "zstd"} {
			rec := f.do("GET", target, "Accept-Encoding", ae)
			if rec.Code != 404 || rec.Header().Get("Content-Encoding") != "" || rec.Header().Get("Content-Length") == fmt.Sprint(len(f.pa.nar)) {
				t.Errorf("%s (AE %q): %d %v", target, ae, rec.Code, rec.Header())
			}
		}
	}
	// The narinfo path is gone too once the store forgets it.
	f.st.delete(f.a)
	if rec := f.do("GET", narURL(f, "")); rec.Code != 404 {
		t.Errorf("deleted path NAR: %d", rec.Code)
	}
}

// TestNARAbortMidStream checks that an error after the first byte cuts
// the connection: the client must see a failed read, not a clean short
// body.
func TestNARAbortMidStream(t *testing.T) {
	f := newFixture(t, func(o *server.Options) { o.Cache = nil })
	// Incompressible and larger than the zstd encoder's buffers, so the
	// compressed variants have sent bytes when the failure comes.
	random := make([]byte, 4<<20)
	for i := range random {
		random[i] = byte(rand.Uint32())
	}
	f.pa = f.st.addTree(t, f.a, "app", map[string]string{"big": string(random)})
	f.pa.failAfter = 3 << 20
	ts := httptest.NewServer(f.srv)
	defer ts.Close()
	for _, tc := range []struct{ url, ae string }{
		{narURL(f, ""), ""},
		{narURL(f, ""), "zstd"},
		{narURL(f, ".zst"), ""},
	} {
		req, _ := http.NewRequest("GET", ts.URL+tc.url, nil)
		if tc.ae != "" {
			req.Header.Set("Accept-Encoding", tc.ae)
		}
		resp, err := ts.Client().Transport.RoundTrip(req)
		if err != nil {
			t.Errorf("%s: cut before the headers: %v", tc.url, err)
			continue
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil {
			t.Errorf("%s AE=%q: clean %d with %d bytes; want a failed transfer", tc.url, tc.ae, resp.StatusCode, len(body))
		}
	}
	rec := httptest.NewRecorder()
	f.srv.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if !strings.Contains(rec.Body.String(), `concordia_http_requests_total{code="aborted",route="nar"} 3`) {
		t.Errorf("aborted responses not counted:\n%s", grep(rec.Body.String(), "aborted"))
	}
}

func TestListing(t *testing.T) {
	f := newFixture(t, nil)
	rec := f.do("GET", "/"+f.a+".ls")
	if rec.Code != 200 || rec.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("%d %v", rec.Code, rec.Header())
	}
	l, err := nar.ListingFromReader(bytes.NewReader(f.pa.nar))
	if err != nil {
		t.Fatal(err)
	}
	want, _ := l.MarshalJSON()
	if !bytes.Equal(rec.Body.Bytes(), want) {
		t.Errorf("listing\n%s\nwant\n%s", rec.Body, want)
	}
	// narOffset points at the file contents in the NAR.
	n := l.Lookup("/share/doc")
	if n == nil || string(f.pa.nar[n.NarOffset:n.NarOffset+n.Size]) != "docs here\n" {
		t.Errorf("narOffset of /share/doc wrong: %+v", n)
	}
	if rec := f.do("GET", "/"+hashOf("nope")+".ls"); rec.Code != 404 {
		t.Errorf("unknown .ls: %d", rec.Code)
	}
	// A listing is cached (keyed by path and NAR hash); a deleted path
	// still 404s because the store is asked first.
	f.st.delete(f.a)
	if rec := f.do("GET", "/"+f.a+".ls"); rec.Code != 404 {
		t.Errorf("deleted .ls: %d", rec.Code)
	}
	g := newFixture(t, nil)
	g.pa.goneAtNAR = true
	if rec := g.do("GET", "/"+g.a+".ls"); rec.Code != 404 {
		t.Errorf("vanished .ls: %d", rec.Code)
	}
	g.pa.goneAtNAR = false
	g.pa.failAfter = 100
	if rec := g.do("GET", "/"+g.a+".ls"); rec.Code != 500 {
		t.Errorf("broken dump .ls: %d", rec.Code)
	}
	g.pa.failAfter = 0
	if rec := g.do("GET", "/"+g.a+".ls"); rec.Code != 200 {
		t.Errorf("failures must not be cached: %d", rec.Code)
	}
}

func bz2(t *testing.T, s string) []byte {
	// No bzip2 writer in the standard library; use the system's.
	t.Helper()
	b, err := runBzip2([]byte(s))
	if err != nil {
		t.Skip("bzip2 not available:", err)
	}
	return b
}

func TestLogs(t *testing.T) {
	f := newFixture(t, nil)
	plain := f.a + "-app.drv"
	packed := f.b + "-lib.drv"
	f.st.logs[plain] = []byte("building app\n")
	f.st.logs[packed+".bz2"] = bz2(t, "building lib\n")
	rec := f.do("GET", "/log/"+plain)
	if rec.Code != 200 || rec.Body.String() != "building app\n" {
		t.Errorf("plain log: %d %q", rec.Code, rec.Body)
	}
	rec = f.do("GET", "/log/"+packed)
	if rec.Code != 200 || rec.Body.String() != "building lib\n" || rec.Header().Get("Content-Encoding") != "" {
		t.Errorf("bz2 log for a client without bzip2: %d %q %v", rec.Code, rec.Body, rec.Header())
	}
	rec = f.do("GET", "/log/"+packed, "Accept-Encoding", "gzip, bzip2")
	if rec.Code != 200 || rec.Header().Get("Content-Encoding") != "bzip2" {
		t.Fatalf("bz2 log for a bzip2 client: %d %v", rec.Code, rec.Header())
	}
	got, err := io.ReadAll(bzip2.NewReader(rec.Body))
	if err != nil || string(got) != "building lib\n" {
		t.Errorf("passed-through bz2: %q %v", got, err)
	}
	if rec := f.do("GET", "/log/"+hashOf("q")+"-none.drv"); rec.Code != 404 {
		t.Errorf("missing log: %d", rec.Code)
	}
}

func TestRealisations(t *testing.T) {
	fs := newFakeStore()
	id := "sha256:" + strings.Repeat("ab", 32) + "!out"
	rs := &realStore{fakeStore: fs, docs: map[string][]byte{
		id:                         []byte(`{"id":"x"}`),
		hashOf("d") + "-x.drv!out": []byte(`{"v":2}`),
	}}
	srv, err := server.New(server.Options{Stores: []store.Store{rs}})
	if err != nil {
		t.Fatal(err)
	}
	get := func(target string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, httptest.NewRequest("GET", target, nil))
		return rec
	}
	if rec := get("/realisations/" + id + ".doi"); rec.Code != 200 || rec.Body.String() != `{"id":"x"}` {
		t.Errorf("realisation: %d %q", rec.Code, rec.Body)
	}
	if rec := get("/realisations/sha256%3A" + strings.Repeat("ab", 32) + "%21out.doi"); rec.Code != 200 {
		t.Errorf("percent-encoded realisation: %d", rec.Code)
	}
	if rec := get("/build-trace-v2/" + hashOf("d") + "-x.drv/out.doi"); rec.Code != 200 || rec.Body.String() != `{"v":2}` {
		t.Errorf("build trace: %d %q", rec.Code, rec.Body)
	}
	if rec := get("/realisations/sha256:" + strings.Repeat("cd", 32) + "!out.doi"); rec.Code != 404 {
		t.Errorf("unknown realisation: %d", rec.Code)
	}
}

func TestFileNARStore(t *testing.T) {
	fs := newFakeStore()
	h := hashOf("up")
	p := fs.addTree(t, h, "uploaded", map[string]string{"f": strings.Repeat("u", 3000)})
	xzBytes := []byte("pretend these are xz bytes of the NAR")
	st := &fileStore{fakeStore: fs, comp: "xz", files: map[string][]byte{h: xzBytes}}
	srv, err := server.New(server.Options{Stores: []store.Store{st}})
	if err != nil {
		t.Fatal(err)
	}
	get := func(target string, hdr ...string) *httptest.ResponseRecorder {
		req := httptest.NewRequest("GET", target, nil)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, req)
		return rec
	}
	ni, err := narinfo.Parse(get("/" + h + ".narinfo").Body)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(xzBytes)
	if ni.Compression != "xz" || !strings.HasSuffix(ni.URL, ".nar.xz") || ni.FileSize != uint64(len(xzBytes)) || ni.FileHash == nil || !bytes.Equal(ni.FileHash.Digest, sum[:]) {
		t.Errorf("narinfo of a file store: %+v", ni)
	}
	if rec := get("/" + ni.URL); rec.Code != 200 || !bytes.Equal(rec.Body.Bytes(), xzBytes) {
		t.Errorf("file bytes: %d %q", rec.Code, rec.Body)
	}
	if rec := get("/"+ni.URL, "Range", "bytes=3-7"); rec.Code != 206 || rec.Body.String() != string(xzBytes[3:8]) {
		t.Errorf("file range: %d %q", rec.Code, rec.Body)
	}
	// The identity URL still streams the plain NAR from the store.
	if rec := get("/nar/" + h + ".nar"); rec.Code != 200 || !bytes.Equal(rec.Body.Bytes(), p.nar) {
		t.Errorf("identity from a file store: %d", rec.Code)
	}
}

func TestStoreOrder(t *testing.T) {
	first, second := newFakeStore(), newFakeStore()
	h := hashOf("both")
	second.addTree(t, h, "p", map[string]string{"f": "second"})
	only2 := hashOf("only2")
	second.addTree(t, only2, "q", map[string]string{"f": "q"})
	p1 := first.addTree(t, h, "p", map[string]string{"f": "first"})
	srv, err := server.New(server.Options{Stores: []store.Store{first, second}})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	srv.ServeHTTP(rec, httptest.NewRequest("GET", "/"+h+".narinfo", nil))
	ni, err := narinfo.Parse(rec.Body)
	if err != nil || !bytes.Equal(ni.NarHash.Digest, p1.info.NarHash) {
		t.Errorf("first store did not win: %v %v", ni, err)
	}
	rec = httptest.NewRecorder()
	srv.ServeHTTP(rec, httptest.NewRequest("GET", "/"+only2+".narinfo", nil))
	if rec.Code != 200 {
		t.Errorf("second store not asked: %d", rec.Code)
	}
}

func TestAuthorizeHook(t *testing.T) {
	f := newFixture(t, func(o *server.Options) {
		o.Authorize = func(r *http.Request) error {
			if r.Header.Get("Authorization") == "" {
				return auth.ErrNoCredentials
			}
			return nil
		}
	})
	for _, target := range []string{"/" + f.a + ".narinfo", narURL(f, ""), "/nix-cache-info", "/" + f.a + ".ls"} {
		rec := f.do("GET", target)
		if rec.Code != 401 || !strings.Contains(rec.Header().Get("WWW-Authenticate"), "Basic") {
			t.Errorf("%s without credentials: %d %v", target, rec.Code, rec.Header())
		}
		rec = f.do("GET", target, "Authorization", "Bearer x")
		if rec.Code != 200 {
			t.Errorf("%s with credentials: %d", target, rec.Code)
		}
		if cc := rec.Header().Get("Cache-Control"); cc != "" && !strings.HasPrefix(cc, "private") {
			t.Errorf("%s of a private cache: Cache-Control %q", target, cc)
		}
	}
	if rec := f.do("GET", "/health"); rec.Code != 200 {
		t.Errorf("health needs no credentials: %d", rec.Code)
	}
}

func TestMiscRoutes(t *testing.T) {
	f := newFixture(t, func(o *server.Options) { o.Version = "1.2.3" })
	if rec := f.do("GET", "/version"); rec.Code != 200 || !strings.Contains(rec.Body.String(), "1.2.3") {
		t.Errorf("version: %d %q", rec.Code, rec.Body)
	}
	if rec := f.do("GET", "/health"); rec.Code != 200 {
		t.Errorf("health: %d", rec.Code)
	}
	req := httptest.NewRequest("GET", "/", nil)
	req.Host = "cache.lan:5000"
	rec := httptest.NewRecorder()
	f.srv.ServeHTTP(rec, req)
	body := html.UnescapeString(rec.Body.String())
	pub := f.key.Public().String()
	for _, want := range []string{"substituters = http://cache.lan:5000", "trusted-public-keys = " + pub, `substituters = [ "http://cache.lan:5000" ];`} {
		if !strings.Contains(body, want) {
			t.Errorf("landing page lacks %q:\n%s", want, body)
		}
	}
	req = httptest.NewRequest("GET", "/", nil)
	req.Host = `<script>alert(1)</script>`
	rec = httptest.NewRecorder()
	f.srv.ServeHTTP(rec, req)
	if strings.Contains(rec.Body.String(), "<script>") {
		t.Errorf("landing page does not escape Host")
	}
	if rec := f.do("DELETE", "/"+f.a+".narinfo"); rec.Code != 405 {
		t.Errorf("DELETE narinfo: %d", rec.Code)
	}
	// Generate some traffic, then check the series a dashboard needs.
	f.do("GET", narURL(f, ""))
	f.do("GET", narURL(f, ""), "Accept-Encoding", "zstd")
	f.do("GET", "/"+hashOf("missing")+".narinfo")
	f.do("GET", "/"+f.a+".narinfo")
	m := f.do("GET", "/metrics").Body.String()
	for _, want := range []string{
		`concordia_http_requests_total{code="200",route="nar"} 2`,
		`concordia_http_requests_total{code="404",route="narinfo"} 1`,
		`concordia_http_requests_total{code="200",route="narinfo"} 1`,
		`concordia_http_request_duration_seconds_bucket{route="nar"`,
		`concordia_nar_bytes_sent_total{encoding="none"} ` + fmt.Sprint(len(f.pa.nar)),
		`concordia_nar_bytes_sent_total{encoding="zstd"}`,
		`concordia_narinfo_cache_total{result="miss"} 1`,
		`concordia_nar_active_streams 0`,
		`concordia_narinfo_cache_entries 1`,
		`concordia_narinfo_cache_bytes`,
		`go_goroutines`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// TestLiveCompressionSlots: without a cache, on-the-fly encoders are
// bounded; a request finding them all busy gets the identity NAR.
func TestLiveCompressionSlots(t *testing.T) {
	f := newFixture(t, func(o *server.Options) { o.MaxLiveCompressions = 1 })
	ts := httptest.NewServer(f.srv)
	defer ts.Close()
	f.pa.entered = make(chan struct{}, 2)
	f.pa.block = make(chan struct{})
	first := make(chan []byte, 1)
	go func() {
		req, _ := http.NewRequest("GET", ts.URL+narURL(f, ""), nil)
		req.Header.Set("Accept-Encoding", "zstd")
		resp, err := (&http.Transport{DisableCompression: true}).RoundTrip(req)
		if err != nil {
			first <- nil
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		first <- b
	}()
	<-f.pa.entered // the first request holds the only encoder
	req, _ := http.NewRequest("GET", ts.URL+narURL(f, ""), nil)
	req.Header.Set("Accept-Encoding", "zstd")
	done := make(chan struct{})
	var resp *http.Response
	var body []byte
	go func() {
		defer close(done)
		var err error
		resp, err = (&http.Transport{DisableCompression: true}).RoundTrip(req)
		if err == nil {
			body, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
	}()
	// Once the second request is in the store too, it has chosen its
	// encoding while the first held the encoder; release both.
	<-f.pa.entered
	close(f.pa.block)
	<-done
	if resp == nil || resp.Header.Get("Content-Encoding") != "" || !bytes.Equal(body, f.pa.nar) {
		t.Errorf("second request with all encoders busy: want identity NAR")
	}
	if b := <-first; !bytes.Equal(unzstd(t, b), f.pa.nar) {
		t.Errorf("first request: not the zstd NAR")
	}
}

// TestNarinfoCacheBounded: the byte bound evicts least recently used
// entries, and an evicted narinfo is rendered again correctly.
func TestNarinfoCacheBounded(t *testing.T) {
	f := newFixture(t, func(o *server.Options) { o.NarInfoCacheBytes = 1500; o.NarInfoTTL = time.Hour })
	var hashes []string
	for i := range 10 {
		h := hashOf(fmt.Sprint("many", i))
		f.st.addTree(t, h, "p", map[string]string{"f": fmt.Sprint(i)})
		hashes = append(hashes, h)
	}
	for _, h := range hashes {
		f.narinfo(h)
	}
	m := f.do("GET", "/metrics").Body.String()
	var entries int
	for _, l := range strings.Split(m, "\n") {
		if strings.HasPrefix(l, "concordia_narinfo_cache_entries ") {
			fmt.Sscan(strings.TrimPrefix(l, "concordia_narinfo_cache_entries "), &entries)
		}
	}
	if entries == 0 || entries >= 10 {
		t.Errorf("cache holds %d entries under a 1500-byte bound", entries)
	}
	if ni := f.narinfo(hashes[0]); !strings.Contains(ni.StorePath, hashes[0]) {
		t.Errorf("evicted narinfo re-rendered wrong: %s", ni.StorePath)
	}
}
