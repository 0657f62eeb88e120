package zstdcache_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/compress"
	"github.com/bos55/concordia/internal/zstdcache"
	"github.com/prometheus/client_golang/prometheus"
)

func openCache(t *testing.T, dir string, max int64) *zstdcache.Cache {
	t.Helper()
	c, err := zstdcache.Open(dir, max, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func readEntry(t testing.TB, c *zstdcache.Cache, key string, p *producer) []byte {
	t.Helper()
	e, err := c.Get(context.Background(), key, p.produce)
	if err != nil {
		t.Fatalf("Get %s: %v", key, err)
	}
	defer e.Close()
	b, err := io.ReadAll(e)
	if err != nil {
		t.Fatalf("read %s: %v", key, err)
	}
	return b
}

func listDir(t *testing.T, dir string) (blobs, temps []string) {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, de := range des {
		switch {
		case strings.HasSuffix(de.Name(), ".zst"):
			blobs = append(blobs, de.Name())
		case strings.HasPrefix(de.Name(), ".tmp-"):
			temps = append(temps, de.Name())
		}
	}
	return blobs, temps
}

func TestGetConcurrentSharesOneProduction(t *testing.T) {
	data := testData(4<<20, 1)
	p := &producer{data: data, chunk: 32 << 10, pause: time.Millisecond}
	c := openCache(t, t.TempDir(), 1<<30)

	const readers = 16
	got := make([][]byte, readers)
	var wg sync.WaitGroup
	for i := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(time.Duration(rand.Intn(150)) * time.Millisecond)
			e, err := c.Get(context.Background(), "k0", p.produce)
			if err != nil {
				t.Errorf("reader %d: Get: %v", i, err)
				return
			}
			defer e.Close()
			b, err := io.ReadAll(e)
			if err != nil {
				t.Errorf("reader %d: read: %v", i, err)
				return
			}
			got[i] = b
		}()
	}
	wg.Wait()
	if n := p.calls.Load(); n != 1 {
		t.Fatalf("produce ran %d times, want 1", n)
	}
	for i := range readers {
		if !bytes.Equal(got[i], got[0]) {
			t.Fatalf("reader %d got different bytes (%d vs %d)", i, len(got[i]), len(got[0]))
		}
	}
	if !bytes.Equal(unzstd(t, got[0]), data) {
		t.Fatal("decompressed bytes differ from the produced NAR")
	}
	st := c.Stats()
	if st.Misses != 1 || st.Hits != readers-1 || st.Entries != 1 || st.Bytes != int64(len(got[0])) {
		t.Fatalf("stats %+v", st)
	}
}

// TestLateJoiner holds the production mid-way: a reader that joins then
// must get the bytes already written, wait, and receive the rest.
func TestLateJoiner(t *testing.T) {
	first := incompressible(2<<20, 2)
	second := testData(2<<20, 3)
	release := make(chan struct{})
	halfway := make(chan struct{})
	var calls int
	produce := func(ctx context.Context, w io.Writer) error {
		calls++
		if _, err := w.Write(first); err != nil {
			return err
		}
		close(halfway)
		<-release
		_, err := w.Write(second)
		return err
	}
	c := openCache(t, t.TempDir(), 1<<30)
	a, err := c.Get(context.Background(), "late", produce)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	<-halfway
	// The first reader can read while production is held.
	head := make([]byte, 64<<10)
	if _, err := io.ReadFull(a, head); err != nil {
		t.Fatalf("read while producing: %v", err)
	}

	b, err := c.Get(context.Background(), "late", produce)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.Complete() {
		t.Fatal("joined entry claims to be complete while production is held")
	}
	if _, ok := b.Size(); ok {
		t.Fatal("size known while production is held")
	}
	if _, err := b.Seek(0, io.SeekEnd); !errors.Is(err, zstdcache.ErrIncomplete) {
		t.Fatalf("Seek on running production: %v, want ErrIncomplete", err)
	}

	type result struct {
		b   []byte
		err error
	}
	done := make(chan result)
	go func() {
		all, err := io.ReadAll(b)
		done <- result{all, err}
	}()
	select {
	case r := <-done:
		t.Fatalf("late reader finished before production did: %d bytes, %v", len(r.b), r.err)
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	rest, err := io.ReadAll(a)
	if err != nil {
		t.Fatal(err)
	}
	whole := append(head, rest...)
	if !bytes.Equal(whole, r.b) {
		t.Fatal("readers disagree")
	}
	if !bytes.Equal(unzstd(t, whole), append(append([]byte{}, first...), second...)) {
		t.Fatal("round trip mismatch")
	}
	if calls != 1 {
		t.Fatalf("produce ran %d times", calls)
	}
	// Now complete: the joined entry can seek, for Range requests.
	if !b.Complete() {
		t.Fatal("entry not complete after EOF")
	}
	if n, err := b.Seek(-10, io.SeekEnd); err != nil || n != int64(len(whole))-10 {
		t.Fatalf("Seek after completion: %d, %v", n, err)
	}
	tail, _ := io.ReadAll(b)
	if !bytes.Equal(tail, whole[len(whole)-10:]) {
		t.Fatal("tail after seek differs")
	}
}

func TestProducerErrorReachesEveryReader(t *testing.T) {
	boom := errors.New("boom")
	release := make(chan struct{})
	var started sync.WaitGroup
	started.Add(1)
	var calls int
	produce := func(ctx context.Context, w io.Writer) error {
		calls++
		w.Write(incompressible(1<<20, 4))
		started.Done()
		<-release
		return boom
	}
	dir := t.TempDir()
	c := openCache(t, dir, 1<<30)
	var entries []*zstdcache.Entry
	for range 4 {
		e, err := c.Get(context.Background(), "bad", produce)
		if err != nil {
			t.Fatal(err)
		}
		defer e.Close()
		entries = append(entries, e)
	}
	started.Wait()
	errs := make(chan error, len(entries))
	for _, e := range entries {
		go func() {
			_, err := io.ReadAll(e)
			errs <- err
		}()
	}
	close(release)
	for range entries {
		if err := <-errs; !errors.Is(err, boom) {
			t.Fatalf("reader got %v, want boom", err)
		}
	}
	if calls != 1 {
		t.Fatalf("produce ran %d times", calls)
	}
	st := c.Stats()
	if st.Entries != 0 || st.Bytes != 0 {
		t.Fatalf("failed production left something cached: %+v", st)
	}
	if blobs, temps := listDir(t, dir); len(blobs)+len(temps) != 0 {
		t.Fatalf("files left: %v %v", blobs, temps)
	}
	// The next Get tries again.
	p := &producer{data: testData(1<<16, 5)}
	if got := readEntry(t, c, "bad", p); !bytes.Equal(unzstd(t, got), p.data) {
		t.Fatal("retry after failure: wrong bytes")
	}
}

func TestPanickingProducerIsAnError(t *testing.T) {
	c := openCache(t, t.TempDir(), 1<<30)
	e, err := c.Get(context.Background(), "panic", func(context.Context, io.Writer) error { panic("oops") })
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if _, err := io.ReadAll(e); err == nil || !strings.Contains(err.Error(), "oops") {
		t.Fatalf("read: %v, want the panic as an error", err)
	}
}

// TestReaderLeaving: one reader giving up (its context ends, it closes)
// must not disturb the production or the other readers.
func TestReaderLeaving(t *testing.T) {
	data := testData(2<<20, 6)
	p := &producer{data: data, chunk: 16 << 10, pause: time.Millisecond}
	c := openCache(t, t.TempDir(), 1<<30)
	ctx, cancel := context.WithCancel(context.Background())
	quitter, err := c.Get(ctx, "k", p.produce)
	if err != nil {
		t.Fatal(err)
	}
	stayer, err := c.Get(context.Background(), "k", p.produce)
	if err != nil {
		t.Fatal(err)
	}
	defer stayer.Close()
	cancel()
	if _, err := io.ReadAll(quitter); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled reader: %v", err)
	}
	quitter.Close()
	got, err := io.ReadAll(stayer)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(unzstd(t, got), data) {
		t.Fatal("remaining reader got wrong bytes")
	}
}

func TestCloseCancelsProduction(t *testing.T) {
	c, err := zstdcache.Open(t.TempDir(), 1<<30, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	e, err := c.Get(context.Background(), "k", func(ctx context.Context, w io.Writer) error {
		<-ctx.Done()
		return ctx.Err()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(e); !errors.Is(err, context.Canceled) {
		t.Fatalf("read after Close: %v", err)
	}
	if _, err := c.Get(context.Background(), "k", nil); !errors.Is(err, compress.ErrClosed) {
		t.Fatalf("Get after Close: %v", err)
	}
}

// TestCloseStopsProducerIgnoringContext: Close must not wait for a whole
// NAR when produce never looks at its context; its next write fails.
func TestCloseStopsProducerIgnoringContext(t *testing.T) {
	c, err := zstdcache.Open(t.TempDir(), 1<<30, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	chunk := incompressible(1<<20, 7)
	stopped := make(chan error, 1)
	e, err := c.Get(context.Background(), "k", func(_ context.Context, w io.Writer) error {
		for {
			if _, err := w.Write(chunk); err != nil {
				stopped <- err
				return err
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if _, err := io.ReadFull(e, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-stopped; !errors.Is(err, context.Canceled) {
		t.Fatalf("producer's write failed with %v, want context.Canceled", err)
	}
}

func TestEvictionKeepsBoundAndDropsLRU(t *testing.T) {
	const blob = 256 << 10
	dir := t.TempDir()
	// Room for three incompressible blobs (plus framing), not four.
	c := openCache(t, dir, 3*blob+3*1024)
	ps := map[string]*producer{}
	for i, k := range []string{"a", "b", "c", "d"} {
		ps[k] = &producer{data: incompressible(blob, int64(10+i))}
	}
	readEntry(t, c, "a", ps["a"])
	readEntry(t, c, "b", ps["b"])
	readEntry(t, c, "c", ps["c"])
	readEntry(t, c, "a", ps["a"]) // a is now more recent than b
	readEntry(t, c, "d", ps["d"]) // must evict b
	st := c.Stats()
	if st.Evictions != 1 || st.Entries != 3 || st.Bytes > 3*blob+3*1024 {
		t.Fatalf("stats after eviction: %+v", st)
	}
	blobs, _ := listDir(t, dir)
	if strings.Join(blobs, " ") != "a.zst c.zst d.zst" {
		t.Fatalf("blobs on disk: %v, want a c d", blobs)
	}
	var total int64
	for _, b := range blobs {
		fi, _ := os.Stat(filepath.Join(dir, b))
		total += fi.Size()
	}
	if total > 3*blob+3*1024 {
		t.Fatalf("disk holds %d bytes, bound %d", total, 3*blob+3*1024)
	}
	for k, want := range map[string]int32{"a": 1, "c": 1, "d": 1} {
		readEntry(t, c, k, ps[k])
		if n := ps[k].calls.Load(); n != want {
			t.Fatalf("%s produced %d times, want %d", k, n, want)
		}
	}
	readEntry(t, c, "b", ps["b"])
	if n := ps["b"].calls.Load(); n != 2 {
		t.Fatalf("evicted b produced %d times, want 2", n)
	}
}

// TestEvictOpenEntry: a blob evicted while a reader has it open stays
// readable through that reader (documented choice: eviction ignores
// readers, Linux keeps the unlinked file).
func TestEvictOpenEntry(t *testing.T) {
	const blob = 128 << 10
	c := openCache(t, t.TempDir(), blob+1024)
	pa := &producer{data: incompressible(blob, 20)}
	want := readEntry(t, c, "a", pa)
	e, err := c.Get(context.Background(), "a", pa.produce)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	readEntry(t, c, "b", &producer{data: incompressible(blob, 21)}) // evicts a
	if c.Stats().Evictions != 1 {
		t.Fatal("a not evicted")
	}
	got, err := io.ReadAll(e)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("evicted open entry: %d bytes, %v", len(got), err)
	}
}

func TestBlobLargerThanCacheIsServedNotKept(t *testing.T) {
	c := openCache(t, t.TempDir(), 1024)
	p := &producer{data: incompressible(64<<10, 22)}
	if got := readEntry(t, c, "big", p); !bytes.Equal(unzstd(t, got), p.data) {
		t.Fatal("wrong bytes")
	}
	if st := c.Stats(); st.Entries != 0 || st.Bytes != 0 {
		t.Fatalf("oversized blob kept: %+v", st)
	}
}

func TestReopenFindsCompleteEntriesAndLRUOrder(t *testing.T) {
	dir := t.TempDir()
	const blob = 64 << 10
	ps := map[string]*producer{}
	for i, k := range []string{"a", "b", "c"} {
		ps[k] = &producer{data: incompressible(blob, int64(30+i))}
	}
	c, err := zstdcache.Open(dir, 1<<30, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]byte{}
	for _, k := range []string{"a", "b", "c"} {
		want[k] = readEntry(t, c, k, ps[k])
	}
	readEntry(t, c, "a", ps["a"]) // LRU order now b, c, a
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}

	c, err = zstdcache.Open(dir, 1<<30, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st := c.Stats(); st.Entries != 3 {
		t.Fatalf("after reopen: %+v", st)
	}
	for _, k := range []string{"b", "c", "a"} { // keeps the LRU order
		if got := readEntry(t, c, k, ps[k]); !bytes.Equal(got, want[k]) {
			t.Fatalf("%s differs after reopen", k)
		}
		if n := ps[k].calls.Load(); n != 1 {
			t.Fatalf("%s produced again after reopen", k)
		}
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}

	// Reopening with room for one keeps the most recently used: the
	// access times reached the index.
	c = openCache(t, dir, blob+1024)
	if st := c.Stats(); st.Entries != 1 || st.Evictions != 2 {
		t.Fatalf("after shrinking reopen: %+v", st)
	}
	if blobs, _ := listDir(t, dir); len(blobs) != 1 || blobs[0] != "a.zst" {
		t.Fatalf("kept %v, want a.zst", blobs)
	}
}

func TestOpenCleansCrashLeftovers(t *testing.T) {
	dir := t.TempDir()
	pa := &producer{data: testData(1<<18, 40)}
	pb := &producer{data: testData(1<<18, 41)}
	c, err := zstdcache.Open(dir, 1<<30, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	wantA := readEntry(t, c, "a", pa)
	readEntry(t, c, "b", pb)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	// A crash mid-write leaves a temp file; one between rename and index
	// write leaves a blob without a record; a blob lost from disk leaves a
	// record without a blob.
	write := func(name string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(".tmp-a-123", wantA[:len(wantA)/2])
	write("orphan.zst", wantA)
	if err := os.Remove(filepath.Join(dir, "b.zst")); err != nil {
		t.Fatal(err)
	}

	c = openCache(t, dir, 1<<30)
	blobs, temps := listDir(t, dir)
	if len(temps) != 0 || strings.Join(blobs, " ") != "a.zst" {
		t.Fatalf("after reopen: blobs %v temps %v", blobs, temps)
	}
	if st := c.Stats(); st.Entries != 1 {
		t.Fatalf("stats %+v", st)
	}
	if got := readEntry(t, c, "a", pa); !bytes.Equal(got, wantA) || pa.calls.Load() != 1 {
		t.Fatal("intact entry a not served from cache")
	}
	if got := readEntry(t, c, "b", pb); !bytes.Equal(unzstd(t, got), pb.data) || pb.calls.Load() != 2 {
		t.Fatal("b (record without blob) not produced again")
	}
	if got := readEntry(t, c, "orphan", pa); pa.calls.Load() != 2 || !bytes.Equal(unzstd(t, got), pa.data) {
		t.Fatal("orphan blob was served instead of being removed")
	}
}

func TestSecondOpenOfSameDirFails(t *testing.T) {
	dir := t.TempDir()
	openCache(t, dir, 1<<20)
	if c, err := zstdcache.Open(dir, 1<<20, 0, nil); err == nil {
		c.Close()
		t.Fatal("second Open of a dir in use succeeded")
	}
}

func TestSeekAndRange(t *testing.T) {
	c := openCache(t, t.TempDir(), 1<<30)
	p := &producer{data: testData(1<<20, 50)}
	whole := readEntry(t, c, "r", p)
	e, err := c.Get(context.Background(), "r", p.produce)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if size, ok := e.Size(); !ok || size != int64(len(whole)) || !e.Complete() {
		t.Fatalf("Size = %d, %v", size, ok)
	}
	for _, tc := range []struct {
		name   string
		off    int64
		whence int
		want   int64
	}{
		{"start", 100, io.SeekStart, 100},
		{"current", 50, io.SeekCurrent, 150},
		{"end", -7, io.SeekEnd, int64(len(whole)) - 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := e.Seek(tc.off, tc.whence)
			if err != nil || n != tc.want {
				t.Fatalf("Seek = %d, %v; want %d", n, err, tc.want)
			}
		})
	}

	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e, err := c.Get(r.Context(), "r", p.produce)
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		defer e.Close()
		http.ServeContent(w, r, "r.nar.zst", time.Time{}, e)
	}))
	defer srv.Close()
	req, _ := http.NewRequest("GET", srv.URL, nil)
	req.Header.Set("Range", "bytes=1000-1999")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, whole[1000:2000]) {
		t.Fatalf("range: status %d, %d bytes", resp.StatusCode, len(body))
	}
	srv.Close() // waits for the handler, so its Close has counted
	// The range went out by sendfile(2) (Entry is a syscall.Conn); the
	// served counter must still see it. The first read was the miss, and
	// the seeks above read nothing.
	if st := c.Stats(); st.Served != 1000 {
		t.Fatalf("served %d, want 1000", st.Served)
	}
	if p.calls.Load() != 1 {
		t.Fatal("produced more than once")
	}
}

func TestInvalidKeysAndDisabled(t *testing.T) {
	c := openCache(t, t.TempDir(), 1<<20)
	for _, k := range []string{"", "../x", "a/b", ".tmp-x", "a.zst", strings.Repeat("x", 200), "a\x00b"} {
		if _, err := c.Get(context.Background(), k, nil); !errors.Is(err, zstdcache.ErrInvalidKey) {
			t.Errorf("key %q: %v, want ErrInvalidKey", k, err)
		}
	}
	for _, tc := range []struct {
		dir string
		max int64
	}{{"", 1 << 20}, {t.TempDir(), 0}} {
		if _, err := zstdcache.Open(tc.dir, tc.max, 0, nil); !errors.Is(err, zstdcache.ErrDisabled) {
			t.Errorf("Open(%q, %d): %v, want ErrDisabled", tc.dir, tc.max, err)
		}
	}
}

func TestCollectors(t *testing.T) {
	c := openCache(t, t.TempDir(), 1<<30)
	reg := prometheus.NewPedanticRegistry()
	if err := c.Register(reg); err != nil {
		t.Fatal(err)
	}
	p := &producer{data: testData(1<<16, 60)}
	b := readEntry(t, c, "m", p)
	readEntry(t, c, "m", p)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		m := mf.GetMetric()[0]
		got[mf.GetName()] = m.GetCounter().GetValue() + m.GetGauge().GetValue()
	}
	if len(got) != 8 {
		t.Fatalf("gathered %d metrics: %v", len(got), got)
	}
	for name, v := range map[string]float64{
		"concordia_zstd_cache_hits_total":      1,
		"concordia_zstd_cache_misses_total":    1,
		"concordia_zstd_cache_entries":         1,
		"concordia_zstd_cache_size_bytes":      float64(len(b)),
		"concordia_zstd_cache_evictions_total": 0,
	} {
		if got[name] != v {
			t.Errorf("%s = %v, want %v", name, got[name], v)
		}
	}
	if st := c.Stats(); st.Served != int64(len(b)) || st.Written != int64(len(b)) {
		t.Fatalf("stats %+v, blob %d", st, len(b))
	}
}

// TestStressManyKeys mixes hits, joins, misses and evictions under the
// race detector: every read must decode to its key's NAR, and the bound
// must hold at the end, in memory and on disk.
func TestStressManyKeys(t *testing.T) {
	const blob = 64 << 10
	const max = 3*blob + 3*1024
	dir := t.TempDir()
	c := openCache(t, dir, max)
	keys := []string{"k0", "k1", "k2", "k3", "k4", "k5"}
	ps := map[string]*producer{}
	for i, k := range keys {
		ps[k] = &producer{data: incompressible(blob, int64(200+i)), chunk: 8 << 10}
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(g)))
			for range 30 {
				k := keys[rng.Intn(len(keys))]
				e, err := c.Get(context.Background(), k, ps[k].produce)
				if err != nil {
					t.Error(err)
					return
				}
				b, err := io.ReadAll(e)
				e.Close()
				if err != nil {
					t.Error(err)
					return
				}
				if !bytes.Equal(unzstd(t, b), ps[k].data) {
					t.Errorf("%s: wrong bytes", k)
					return
				}
			}
		}()
	}
	wg.Wait()
	st := c.Stats()
	if st.Bytes > max || st.InProgress != 0 || st.Hits+st.Misses != 8*30 {
		t.Fatalf("stats %+v", st)
	}
	blobs, temps := listDir(t, dir)
	var total int64
	for _, b := range blobs {
		fi, err := os.Stat(filepath.Join(dir, b))
		if err != nil {
			t.Fatal(err)
		}
		total += fi.Size()
	}
	if total > max || len(temps) != 0 || len(blobs) != st.Entries {
		t.Fatalf("disk: %d bytes in %v, temps %v; stats %+v", total, blobs, temps, st)
	}
}
