// Package blobtest checks a blob.Dir against the contract in package
// blob, so the disk and S3 implementations are held to the same one.
package blobtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/blob"
)

// UnpublishedSize is how much the Sweep test writes without publishing:
// a Dir must leave something to sweep for that (s3blob: more than one
// part, so a part size under 12 MiB).
const UnpublishedSize = 12 << 20

// Run runs the suite; open returns a fresh, empty Dir for each subtest.
func Run(t *testing.T, open func(t *testing.T) blob.Dir) {
	tests := []struct {
		name string
		fn   func(*testing.T, blob.Dir)
	}{
		{"RoundTrip", testRoundTrip},
		{"Invisible", testInvisible},
		{"Replace", testReplace},
		{"Remove", testRemove},
		{"ReadAtSeek", testReadAtSeek},
		{"Sweep", testSweep},
		{"ListMany", testListMany},
		{"LargeStreams", testLarge},
		{"Copy", testCopy},
		{"InvalidNames", testInvalidNames},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open(t)) })
	}
}

func data(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, 1))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func put(t *testing.T, d blob.Dir, name string, b []byte, named bool) {
	t.Helper()
	ctx := context.Background()
	var tmp blob.Temp
	var err error
	if named {
		tmp, err = blob.CreateFor(ctx, d, name)
	} else {
		tmp, err = d.Create(ctx)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer tmp.Close()
	for off := 0; off < len(b); off += 64 << 10 {
		if _, err := tmp.Write(b[off:min(off+64<<10, len(b))]); err != nil {
			t.Fatal(err)
		}
	}
	if err := tmp.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := tmp.Publish(name); err != nil {
		t.Fatal(err)
	}
	if err := tmp.Close(); err != nil {
		t.Fatal(err)
	}
}

func get(t *testing.T, d blob.Dir, name string) []byte {
	t.Helper()
	r, err := d.Open(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("reading %s: %v", name, err)
	}
	if int64(len(b)) != r.Size() {
		t.Fatalf("%s: read %d bytes, Size %d", name, len(b), r.Size())
	}
	return b
}

func list(t *testing.T, d blob.Dir) map[string]blob.Info {
	t.Helper()
	m := map[string]blob.Info{}
	if err := d.List(context.Background(), func(i blob.Info) error {
		if _, dup := m[i.Name]; dup {
			return fmt.Errorf("%s listed twice", i.Name)
		}
		m[i.Name] = i
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return m
}

func absent(t *testing.T, d blob.Dir, name string) {
	t.Helper()
	ctx := context.Background()
	if r, err := d.Open(ctx, name); !errors.Is(err, fs.ErrNotExist) {
		if r != nil {
			r.Close()
		}
		t.Errorf("Open(%s): %v, want fs.ErrNotExist", name, err)
	}
	if _, err := d.Stat(ctx, name); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Stat(%s): %v, want fs.ErrNotExist", name, err)
	}
	if _, ok := list(t, d)[name]; ok {
		t.Errorf("%s listed", name)
	}
}

func testRoundTrip(t *testing.T, d blob.Dir) {
	for i, n := range []int{0, 1, 1000, 6<<20 + 7} {
		for _, named := range []bool{false, true} {
			name := fmt.Sprintf("b%d-%v", i, named)
			want := data(uint64(i), n)
			before := time.Now().Add(-time.Minute)
			put(t, d, name, want, named)
			if got := get(t, d, name); !bytes.Equal(got, want) {
				t.Fatalf("%s: wrong bytes (%d, want %d)", name, len(got), n)
			}
			fi, err := d.Stat(context.Background(), name)
			if err != nil || fi.Name != name || fi.Size != int64(n) || fi.ModTime.Before(before) {
				t.Fatalf("Stat(%s) = %+v, %v", name, fi, err)
			}
			if li := list(t, d)[name]; li.Size != int64(n) {
				t.Fatalf("List: %s is %+v", name, li)
			}
		}
	}
}

func testInvisible(t *testing.T, d blob.Dir) {
	ctx := context.Background()
	for _, n := range []int{10, 6<<20 + 1} {
		tmp, err := blob.CreateFor(ctx, d, "x")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tmp.Write(data(1, n)); err != nil {
			t.Fatal(err)
		}
		absent(t, d, "x")
		if err := tmp.Close(); err != nil {
			t.Fatal(err)
		}
		if err := tmp.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		absent(t, d, "x")
		if len(list(t, d)) != 0 {
			t.Fatalf("listed: %v", list(t, d))
		}
	}
}

// testReplace: a reader of the replaced blob gets the old bytes or an
// error, never new ones; a new Open gets the new blob.
func testReplace(t *testing.T, d blob.Dir) {
	ctx := context.Background()
	old, nw := data(1, 3<<20), data(2, 2<<20)
	put(t, d, "r", old, true)
	r, err := d.Open(ctx, "r")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	head := make([]byte, 1<<20)
	if _, err := io.ReadFull(r, head); err != nil {
		t.Fatal(err)
	}
	put(t, d, "r", nw, true)
	if got := get(t, d, "r"); !bytes.Equal(got, nw) {
		t.Fatal("a new Open does not see the new blob")
	}
	rest, err := io.ReadAll(r)
	got := append(head, rest...)
	if !bytes.Equal(got, old[:len(got)]) {
		t.Fatal("the old reader returned bytes not of the old blob")
	}
	if err == nil && len(got) != len(old) {
		t.Fatalf("the old reader ended at %d of %d without error", len(got), len(old))
	}
	t.Logf("old reader after replace: %d bytes, err %v", len(got), err)
	p := make([]byte, 100)
	n, err := r.ReadAt(p, 5)
	if err == nil && !bytes.Equal(p[:n], old[5:5+n]) {
		t.Fatal("ReadAt of the old reader returned new bytes")
	}
	t.Logf("old reader's ReadAt after replace: %d bytes, err %v", n, err)
}

func testRemove(t *testing.T, d blob.Dir) {
	ctx := context.Background()
	put(t, d, "gone", []byte("x"), false)
	if err := d.Remove(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	absent(t, d, "gone")
	if err := d.Remove(ctx, "gone"); err != nil {
		t.Fatalf("Remove of a missing blob: %v", err)
	}
}

func testReadAtSeek(t *testing.T, d blob.Dir) {
	want := data(3, 1<<20+13)
	put(t, d, "s", want, true)
	r, err := d.Open(context.Background(), "s")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.Size() != int64(len(want)) {
		t.Fatalf("Size %d", r.Size())
	}
	p := make([]byte, 1000)
	for _, off := range []int64{0, 1, 4095, 1<<20 - 1000} {
		if n, err := r.ReadAt(p, off); err != nil || !bytes.Equal(p[:n], want[off:off+1000]) {
			t.Fatalf("ReadAt(%d) = %d, %v", off, n, err)
		}
	}
	n, err := r.ReadAt(p, int64(len(want))-10)
	if n != 10 || err != io.EOF || !bytes.Equal(p[:10], want[len(want)-10:]) {
		t.Fatalf("ReadAt at the tail = %d, %v", n, err)
	}
	if pos, err := r.Seek(-100, io.SeekEnd); err != nil || pos != int64(len(want))-100 {
		t.Fatalf("Seek = %d, %v", pos, err)
	}
	tail, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(tail, want[len(want)-100:]) {
		t.Fatalf("read after Seek: %d, %v", len(tail), err)
	}
	if _, err := r.Seek(7, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(r, p); err != nil || !bytes.Equal(p, want[7:1007]) {
		t.Fatalf("read after Seek(7): %v", err)
	}
}

func testSweep(t *testing.T, d blob.Dir) {
	ctx := context.Background()
	tmp, err := blob.CreateFor(ctx, d, "left")
	if err != nil {
		t.Fatal(err)
	}
	tmp2, err := d.Create(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []blob.Temp{tmp, tmp2} {
		if _, err := w.Write(data(4, UnpublishedSize)); err != nil {
			t.Fatal(err)
		}
	}
	put(t, d, "kept", []byte("k"), false)
	if n, err := d.Sweep(ctx, time.Now().Add(-time.Hour)); err != nil || n != 0 {
		t.Fatalf("Sweep of older than an hour: %d, %v", n, err)
	}
	if n, err := d.Sweep(ctx, time.Now().Add(time.Hour)); err != nil || n < 2 {
		t.Fatalf("Sweep of everything: %d, %v; want the 2 unpublished writes", n, err)
	}
	if err := tmp.Publish("left"); err == nil {
		t.Error("a swept write published")
	}
	tmp.Close()
	tmp2.Close()
	absent(t, d, "left")
	if got := get(t, d, "kept"); string(got) != "k" {
		t.Fatal("Sweep removed a published blob")
	}
}

func testListMany(t *testing.T, d blob.Dir) {
	const n = 1100
	var wg sync.WaitGroup
	names := make(chan string)
	for range 8 {
		wg.Go(func() {
			for name := range names {
				put(t, d, name, []byte(name), false)
			}
		})
	}
	for i := range n {
		names <- fmt.Sprintf("m%04d", i)
	}
	close(names)
	wg.Wait()
	m := list(t, d)
	for i := range n {
		name := fmt.Sprintf("m%04d", i)
		if m[name].Size != int64(len(name)) {
			t.Fatalf("List: %s is %+v (%d listed)", name, m[name], len(m))
		}
	}
	if len(m) != n {
		t.Fatalf("listed %d, want %d", len(m), n)
	}
}

// testLarge writes 40 MiB in 32 KiB writes and checks, before Publish,
// that the heap did not grow by half of it: a Temp that kept the blob
// in memory would.
func testLarge(t *testing.T, d blob.Dir) {
	const size = 40 << 20
	ctx := context.Background()
	tmp, err := blob.CreateFor(ctx, d, "big")
	if err != nil {
		t.Fatal(err)
	}
	defer tmp.Close()
	chunk := data(5, 32<<10)
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	before := ms.HeapInuse
	for off := 0; off < size; off += len(chunk) {
		chunk[0] = byte(off >> 15)
		if _, err := tmp.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&ms)
	if grew := int64(ms.HeapInuse) - int64(before); grew > size/2 {
		t.Fatalf("heap grew by %d MiB writing a %d MiB blob: it is buffered", grew>>20, size>>20)
	}
	if err := tmp.Publish("big"); err != nil {
		t.Fatal(err)
	}
	r, err := d.Open(ctx, "big")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.Size() != size {
		t.Fatalf("Size %d", r.Size())
	}
	p := make([]byte, len(chunk))
	for off := 0; off < size; off += len(chunk) {
		if _, err := io.ReadFull(r, p); err != nil {
			t.Fatalf("at %d: %v", off, err)
		}
		if p[0] != byte(off>>15) || !bytes.Equal(p[1:], chunk[1:]) {
			t.Fatalf("wrong bytes at %d", off)
		}
	}
}

func testCopy(t *testing.T, d blob.Dir) {
	want := data(6, 100<<10)
	put(t, d, "src", want, false)
	if err := blob.Copy(context.Background(), d, "src", d, "dst"); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(get(t, d, "dst"), want) {
		t.Fatal("copy differs")
	}
	if err := blob.Copy(context.Background(), d, "missing", d, "dst2"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Copy of a missing blob: %v", err)
	}
	absent(t, d, "dst2")
}

func testInvalidNames(t *testing.T, d blob.Dir) {
	ctx := context.Background()
	for _, name := range []string{"", "a/b", "..", ".", "/x"} {
		if _, err := d.Open(ctx, name); err == nil || errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Open(%q): %v, want a refusal", name, err)
		}
		if _, err := d.Stat(ctx, name); err == nil {
			t.Errorf("Stat(%q) accepted", name)
		}
		if err := d.Remove(ctx, name); err == nil {
			t.Errorf("Remove(%q) accepted", name)
		}
		tmp, err := d.Create(ctx)
		if err != nil {
			t.Fatal(err)
		}
		tmp.Write([]byte("x"))
		if err := tmp.Publish(name); err == nil {
			t.Errorf("Publish(%q) accepted", name)
		}
		tmp.Close()
	}
	if n := len(list(t, d)); n != 0 {
		t.Errorf("%d blobs after refused names", n)
	}
}
