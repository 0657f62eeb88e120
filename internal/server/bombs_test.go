package server_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/limits"
	"github.com/bos55/concordia/internal/nartest"
	"github.com/bos55/concordia/internal/server"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/local"
	"github.com/bos55/concordia/internal/zstdcache"
	"github.com/bos55/concordia/pkg/nar"
)

// streamStore serves one path whose NAR is generated on every NAR call,
// never held in memory: the shape of a huge upload read back. It counts
// the dumps.
type streamStore struct {
	info  *store.PathInfo
	make  func() io.ReadCloser
	dumps atomic.Int64
}

func newStreamStore(t testing.TB, name string, make func() io.ReadCloser) *streamStore {
	r := make()
	h := sha256.New()
	n, err := io.Copy(h, r)
	r.Close()
	if err != nil {
		t.Fatal(err)
	}
	hash := hashOf(name)
	return &streamStore{make: make, info: &store.PathInfo{StorePath: "/nix/store/" + hash + "-" + name,
		NarHash: h.Sum(nil), NarSize: uint64(n), References: []string{}}}
}

func (s *streamStore) StoreDir() string { return "/nix/store" }

func (s *streamStore) PathInfo(ctx context.Context, hash string) (*store.PathInfo, error) {
	if !strings.HasPrefix(filepath.Base(s.info.StorePath), hash+"-") {
		return nil, store.ErrNotFound
	}
	info := *s.info
	return &info, nil
}

func (s *streamStore) NAR(ctx context.Context, info *store.PathInfo, w io.Writer) error {
	s.dumps.Add(1)
	r := s.make()
	defer r.Close()
	_, err := io.Copy(w, r)
	return err
}

func (s *streamStore) hash() string { return filepath.Base(s.info.StorePath)[:32] }

func metric(t testing.TB, srv http.Handler, name string) float64 {
	t.Helper()
	rec := httptest.NewRecorder()
	srv.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, l := range strings.Split(rec.Body.String(), "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

// heapPeak samples the Go heap while f runs and returns its peak above
// what it was before.
func heapPeak(f func()) uint64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m)
	base := m.HeapInuse
	var peak atomic.Uint64
	done := make(chan struct{})
	go func() {
		var m runtime.MemStats
		for {
			runtime.ReadMemStats(&m)
			if m.HeapInuse > base && m.HeapInuse-base > peak.Load() {
				peak.Store(m.HeapInuse - base)
			}
			select {
			case <-done:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	f()
	close(done)
	return peak.Load()
}

// getSum is get without holding the body: its SHA-256 and length.
func getSum(t testing.TB, url string, hdr ...string) (*http.Response, [32]byte, int64) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := (&http.Transport{DisableCompression: true}).RoundTrip(req)
	if err != nil {
		t.Error(err)
		return &http.Response{}, [32]byte{}, 0
	}
	defer resp.Body.Close()
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	if err != nil {
		t.Errorf("GET %s: %v", url, err)
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return resp, sum, n
}

// TestListingOfAMillionEntriesIsBuiltOnce: many anonymous .ls requests of
// a 1,000,000-entry NAR (streamed, ~200 MB) cost one dump and one build,
// whoever asks first and however many ask at once; the build streams
// into the cache without holding the listing, and later requests are a
// cache file read.
func TestListingOfAMillionEntriesIsBuiltOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	st := newStreamStore(t, "million", func() io.ReadCloser { return nartest.Wide(1_000_000) })
	cc, err := zstdcache.Open(t.TempDir(), 1<<30, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	srv, err := server.New(server.Options{Stores: []store.Store{st}, Listings: server.CompressCache(cc)})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv)
	defer ts.Close()
	url := ts.URL + "/" + st.hash() + ".ls"
	const clients = 16
	bodies := make([][32]byte, clients)
	var sizes [clients]int
	start := time.Now()
	peak := heapPeak(func() {
		var wg sync.WaitGroup
		for i := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				// zstd, as Nix 2.14 and later ask: the cached bytes go
				// out as they are.
				resp, sum, n := getSum(t, url, "Accept-Encoding", "zstd")
				if resp.StatusCode != 200 {
					t.Errorf("client %d: %d", i, resp.StatusCode)
				}
				bodies[i], sizes[i] = sum, int(n)
			}()
		}
		wg.Wait()
	})
	first := time.Since(start)
	for i := range clients {
		if bodies[i] != bodies[0] {
			t.Fatalf("client %d got another listing", i)
		}
	}
	start = time.Now()
	resp, plain, plainLen := getSum(t, url)
	again := time.Since(start)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Encoding") != "" {
		t.Fatalf("cached listing, identity: %d %v", resp.StatusCode, resp.Header)
	}
	t.Logf("%d concurrent .ls of a %d-byte NAR of 1,000,000 files: %v, heap peak %d MiB, listing %d bytes (%d as zstd); once built, decoded for a client: %v",
		clients, st.info.NarSize, first, peak>>20, plainLen, sizes[0], again)
	if n := metric(t, srv, "concordia_listing_builds_total"); n != 1 {
		t.Errorf("%v listing builds, want 1", n)
	}
	if n := st.dumps.Load(); n != 1 {
		t.Errorf("%d dumps, want 1", n)
	}
	// The whole listing is never in memory: a tree of a million nodes
	// is ~150 MB, the JSON 60 MB.
	if peak > 48<<20 {
		t.Errorf("heap peaked at %d MiB while building", peak>>20)
	}
	// It matches what the in-memory renderer makes.
	l, err := nar.ListingFromReader(nartest.Wide(1_000_000))
	if err != nil {
		t.Fatal(err)
	}
	js, _ := l.MarshalJSON()
	if sha256.Sum256(js) != plain {
		t.Error("served listing differs from Listing.MarshalJSON")
	}
}

// TestDeepListing: 4000 nested 255-byte names, 246 bytes as zstd, used to
// cost gigabytes and 12 s per anonymous .ls. Over the default depth bound
// the server refuses to list it (500: it is stored data, not the
// client's doing) without a crash; with the bound raised it lists it once
// in bounded memory.
func TestDeepListing(t *testing.T) {
	deep := func() io.ReadCloser { return nartest.Deep(4000, 255) }
	st := newStreamStore(t, "deep", deep)
	srv, err := server.New(server.Options{Stores: []store.Store{st}})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	srv.ServeHTTP(rec, httptest.NewRequest("GET", "/"+st.hash()+".ls", nil))
	if rec.Code != 500 {
		t.Fatalf("default limits: %d %.300s", rec.Code, rec.Body)
	}
	l := limits.Default()
	l.MaxDepth = 5000
	srv, err = server.New(server.Options{Stores: []store.Store{st}, Limits: l})
	if err != nil {
		t.Fatal(err)
	}
	var code int
	var body []byte
	start := time.Now()
	peak := heapPeak(func() {
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, httptest.NewRequest("GET", "/"+st.hash()+".ls", nil))
		code, body = rec.Code, rec.Body.Bytes()
	})
	t.Logf("listing of a %d-byte NAR 4000 directories deep: %v, heap peak %d MiB, %d bytes", st.info.NarSize, time.Since(start), peak>>20, len(body))
	want, err := nar.ListingFromReaderOptions(deep(), l.NAR())
	if err != nil {
		t.Fatal(err)
	}
	js, _ := want.MarshalJSON()
	if code != 200 || !bytes.Equal(body, js) {
		t.Fatalf("%d %.200s", code, body)
	}
	if peak > 32<<20 {
		t.Errorf("heap peaked at %d MiB", peak>>20)
	}
	for range 3 {
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, httptest.NewRequest("GET", "/"+st.hash()+".ls", nil))
	}
	if n := metric(t, srv, "concordia_listing_builds_total"); n != 1 {
		t.Errorf("%v builds, want 1 (the listing is small enough to keep in memory)", n)
	}
}

// seekStore gives a fake store RangeNAR, and counts what it produces.
type seekStore struct {
	*fakeStore
	produced atomic.Int64
}

func (s *seekStore) NARFrom(ctx context.Context, info *store.PathInfo, off int64, w io.Writer) error {
	s.mu.Lock()
	p, ok := s.paths[filepath.Base(info.StorePath)[:32]]
	s.mu.Unlock()
	if !ok {
		return store.ErrNotFound
	}
	s.produced.Add(int64(len(p.nar)) - off)
	_, err := writeChunks(w, p.nar[off:])
	return err
}

// TestRangeCostIsBounded: a suffix range is served from its offset by a
// store that can start there, or, by one that cannot, only if producing
// the bytes before it costs no more than a few MiB; otherwise the whole
// NAR is sent (200) rather than produced to send one byte.
func TestRangeCostIsBounded(t *testing.T) {
	big := strings.Repeat("0123456789abcdef", 1<<20) // 16 MiB
	for _, seekable := range []bool{true, false} {
		t.Run(fmt.Sprint("seekable=", seekable), func(t *testing.T) {
			fs := newFakeStore()
			p := fs.addTree(t, hashOf("big"), "big", map[string]string{"a": "x", "z": big})
			var st store.Store = fs
			ss := &seekStore{fakeStore: fs}
			if seekable {
				st = ss
			}
			srv, err := server.New(server.Options{Stores: []store.Store{st}})
			if err != nil {
				t.Fatal(err)
			}
			n := int64(len(p.nar))
			url := "/nar/" + hashOf("big") + "-" + narHashOf(&fixture{pa: p}) + ".nar"
			type rangeCase struct {
				rng         string
				status      int
				from        int64
				maxProduced int64
			}
			cases := []rangeCase{
				{fmt.Sprintf("bytes=%d-", n/2), 206, n / 2, n}, // a resume halfway: served either way
				{"bytes=1000-", 206, 1000, n},
			}
			if seekable {
				cases = append(cases,
					rangeCase{"bytes=-1", 206, n - 1, 1 << 20},
					rangeCase{"bytes=-300", 206, n - 300, 1 << 20},
					rangeCase{fmt.Sprintf("bytes=%d-", n-100), 206, n - 100, 1 << 20},
					rangeCase{fmt.Sprintf("bytes=%d-%d", n/2, n/2+10), 206, n / 2, 1 << 20})
			} else {
				// Producing 16 MiB to send a byte: the Range is ignored.
				cases = append(cases,
					rangeCase{"bytes=-1", 200, 0, n},
					rangeCase{"bytes=-300", 200, 0, n},
					rangeCase{fmt.Sprintf("bytes=%d-", n-100), 200, 0, n},
					rangeCase{fmt.Sprintf("bytes=%d-%d", n/2, n/2+10), 200, 0, n})
			}
			for _, tc := range cases {
				before := metric(t, srv, "concordia_nar_source_bytes_total")
				rec := httptest.NewRecorder()
				req := httptest.NewRequest("GET", url, nil)
				req.Header.Set("Range", tc.rng)
				srv.ServeHTTP(rec, req)
				produced := int64(metric(t, srv, "concordia_nar_source_bytes_total") - before)
				t.Logf("%s of %d bytes: %d, %d bytes sent, %d produced", tc.rng, n, rec.Code, rec.Body.Len(), produced)
				if rec.Code != tc.status {
					t.Fatalf("%s: %d, want %d", tc.rng, rec.Code, tc.status)
				}
				end := tc.from + int64(rec.Body.Len())
				if !bytes.Equal(rec.Body.Bytes(), p.nar[tc.from:end]) {
					t.Errorf("%s: wrong bytes", tc.rng)
				}
				if produced > min(tc.maxProduced, 2*int64(rec.Body.Len())+4<<20) {
					t.Errorf("%s: the store produced %d bytes to send %d", tc.rng, produced, rec.Body.Len())
				}
			}
		})
	}
}

// TestServeFileFromOffset: /serve of a file deep in a NAR reads it from
// its offset when the store can start there.
func TestServeFileFromOffset(t *testing.T) {
	fs := newFakeStore()
	big := strings.Repeat("x", 8<<20)
	fs.addTree(t, hashOf("doc"), "doc", map[string]string{"a/big": big, "z/last.txt": "the last file\n"})
	ss := &seekStore{fakeStore: fs}
	srv, err := server.New(server.Options{Stores: []store.Store{ss}})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	srv.ServeHTTP(rec, httptest.NewRequest("GET", "/serve/"+hashOf("doc")+"/z/last.txt", nil))
	if rec.Code != 200 || rec.Body.String() != "the last file\n" {
		t.Fatalf("%d %q", rec.Code, rec.Body)
	}
	// One dump for the listing, then only the file's bytes.
	if p := ss.produced.Load(); p > 1<<20 {
		t.Errorf("serving a 14-byte file produced %d NAR bytes", p)
	}
	rec = httptest.NewRecorder()
	srv.ServeHTTP(rec, httptest.NewRequest("GET", "/serve/"+hashOf("doc")+"/a/big", nil))
	if rec.Code != 200 || rec.Body.Len() != len(big) {
		t.Fatalf("big: %d %d", rec.Code, rec.Body.Len())
	}
}

// TestRangeOnLocalNAR: against the real local store, "Range: bytes=-1"
// on a large NAR costs its metadata, not a dump of its contents, and a
// resume from the middle gives the right bytes.
func TestRangeOnLocalNAR(t *testing.T) {
	needNix(t)
	const size = 235 << 20
	dir := filepath.Join(t.TempDir(), "big-range-test")
	os.MkdirAll(filepath.Join(dir, "share"), 0o755)
	f, err := os.Create(filepath.Join(dir, "share", "big"))
	if err != nil {
		t.Fatal(err)
	}
	rnd := bytes.Repeat([]byte(fmt.Sprintf("%d ", time.Now().UnixNano())), 1<<16)
	for written := 0; written < size; written += len(rnd) {
		f.Write(rnd[:min(len(rnd), size-written)])
	}
	f.Close()
	os.WriteFile(filepath.Join(dir, "tail"), []byte("tail\n"), 0o644)
	out, err := exec.Command("nix-store", "--add", dir).Output()
	if err != nil {
		t.Fatal(err)
	}
	p := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("nix-store", "--delete", p).Run() })
	s := startServer(t, "none", nil)
	ni := fetchNarinfo(t, s.url, p)
	url := s.url + "/" + ni.URL
	var full bytes.Buffer
	if _, err := nar.DumpPath(&full, p); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		rng  string
		from int64
	}{{"bytes=-1", int64(ni.NarSize) - 1}, {"bytes=-5000", int64(ni.NarSize) - 5000}, {fmt.Sprintf("bytes=%d-", ni.NarSize/2), int64(ni.NarSize / 2)}} {
		before := metric(t, s.srv, "concordia_nar_source_bytes_total")
		start := time.Now()
		resp, body := get(t, url, "Range", tc.rng)
		took := time.Since(start)
		produced := int64(metric(t, s.srv, "concordia_nar_source_bytes_total") - before)
		t.Logf("%s of a %d-byte local NAR: %d, %d bytes in %v; the store produced %d bytes", tc.rng, ni.NarSize, resp.StatusCode, len(body), took, produced)
		if resp.StatusCode != 206 || !bytes.Equal(body, full.Bytes()[tc.from:]) {
			t.Fatalf("%s: %d, %d bytes", tc.rng, resp.StatusCode, len(body))
		}
		if produced != int64(len(body)) {
			t.Errorf("%s: the store produced %d bytes for %d sent", tc.rng, produced, len(body))
		}
	}
}

// rangeFlaky is flakyStore with the local store's RangeNAR, so the real
// client's resumption goes through NARFrom.
type rangeFlaky struct {
	*flakyStore
	ls *local.Store
}

func (r *rangeFlaky) NARFrom(ctx context.Context, info *store.PathInfo, off int64, w io.Writer) error {
	return r.ls.NARFrom(ctx, info, off, w)
}

// TestNixResumesFromLocalOffset: real Nix, its first download cut,
// resumes with "Range: bytes=N-", which the local store serves from N
// (DumpPathFrom) rather than dumping and dropping the first N bytes; the
// copy verifies.
func TestNixResumesFromLocalOffset(t *testing.T) {
	cl := buildClosure(t)
	s := startServer(t, "none", nil)
	st := &rangeFlaky{flakyStore: &flakyStore{Store: s.ls, limit: 300 << 10, cut: map[string]bool{}}, ls: s.ls}
	srv, err := server.New(server.Options{Stores: []store.Store{st}, Keys: s.srv.Keys(), Compression: "none"})
	if err != nil {
		t.Fatal(err)
	}
	var ranges atomic.Int64
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Range") != "" {
			ranges.Add(1)
		}
		srv.ServeHTTP(w, r)
	}))
	defer ts.Close()
	env := nixEnv(t)
	dst := filepath.Join(t.TempDir(), "store")
	runNix(t, env, "nix", "copy", "--from", ts.URL, "--to", dst, cl.c,
		"--option", "require-sigs", "true", "--option", "trusted-public-keys", s.pub.String(),
		"--option", "download-attempts", "5")
	runNix(t, env, "nix", "store", "verify", "--store", dst, "--sigs-needed", "1",
		"--trusted-public-keys", s.pub.String(), "-r", cl.c)
	if ranges.Load() == 0 {
		t.Error("the client retried without a Range request")
	}
	ni := fetchNarinfo(t, ts.URL, cl.c)
	sent := metric(t, srv, `concordia_nar_bytes_sent_total{encoding="none"}`)
	produced := metric(t, srv, "concordia_nar_source_bytes_total")
	t.Logf("%d Range requests; %v NAR bytes sent, %v produced by the store (NAR of c: %d bytes)", ranges.Load(), sent, produced, ni.NarSize)
	if produced > sent+float64(64<<10) {
		t.Errorf("the store produced %v bytes to send %v: the resumption re-dumped", produced, sent)
	}
}
