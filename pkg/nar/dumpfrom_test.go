package nar_test

import (
	"bytes"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/bos55/concordia/pkg/nar"
)

// TestDumpPathFrom: from every interesting offset (each token boundary
// of a small tree, random ones in a large one, the end and past it) the
// bytes are exactly the tail of DumpPath's.
func TestDumpPathFrom(t *testing.T) {
	dir := t.TempDir()
	tree{
		{path: "x", kind: 'd'}, {path: "x/a", kind: 'f', data: "12345678", mode: 0o755}, {path: "x/b", kind: 'l', data: "a"},
		{path: "x/c", kind: 'd'}, {path: "x/c/big", kind: 'f', data: strings.Repeat("0123456789", 50000)},
		{path: "x/c/e", kind: 'f'}, {path: "x/d", kind: 'f', data: "tail"},
	}.build(t, dir)
	check := func(t *testing.T, root string, offsets []int64) {
		var full bytes.Buffer
		if _, err := nar.DumpPath(&full, root); err != nil {
			t.Fatal(err)
		}
		for _, off := range offsets {
			var got bytes.Buffer
			n, err := nar.DumpPathFrom(&got, root, off)
			want := full.Bytes()[min(off, int64(full.Len())):]
			if err != nil || n != int64(len(want)) || !bytes.Equal(got.Bytes(), want) {
				t.Fatalf("from %d of %d: %d bytes, %v; want %d bytes", off, full.Len(), n, err, len(want))
			}
		}
	}
	t.Run("tree", func(t *testing.T) {
		var offsets []int64
		for off := int64(0); off < 2000; off++ {
			offsets = append(offsets, off)
		}
		for off := int64(500000); off < 501200; off++ {
			offsets = append(offsets, off)
		}
		check(t, filepath.Join(dir, "x"), append(offsets, 1<<40))
	})
	t.Run("file", func(t *testing.T) {
		check(t, filepath.Join(dir, "x/c/big"), []int64{0, 1, 95, 96, 97, 300000, 500095, 500096, 500111, 500112, 500200})
	})
	t.Run("goroot", func(t *testing.T) {
		if testing.Short() {
			t.Skip("-short")
		}
		size, _ := nar.DumpPath(nopWriter{}, goroot(t))
		rng := rand.New(rand.NewSource(1))
		offsets := []int64{size - 1, size, size / 2}
		for range 4 {
			offsets = append(offsets, rng.Int63n(size))
		}
		check(t, goroot(t), offsets)
	})
}

type nopWriter struct{}

func (nopWriter) Write(p []byte) (int, error) { return len(p), nil }

// TestDumpPathFromSkipsContents counts the bytes the process reads: a
// dump of the last byte of a tree of large files must not read them.
func TestDumpPathFromSkipsContents(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the contents are skipped on Linux only")
	}
	dir := t.TempDir()
	for i := range 4 {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%d", i)), bytes.Repeat([]byte{byte(i)}, 16<<20), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	size, err := nar.DumpPath(nopWriter{}, dir)
	if err != nil {
		t.Fatal(err)
	}
	before := readChars(t)
	var tail bytes.Buffer
	if _, err := nar.DumpPathFrom(&tail, dir, size-1); err != nil {
		t.Fatal(err)
	}
	read := readChars(t) - before
	t.Logf("the last byte of a %d-byte NAR: %d bytes read", size, read)
	if read > 1<<20 {
		t.Errorf("dumping the last byte read %d bytes of files", read)
	}
	before = readChars(t)
	if _, err := nar.DumpPathFrom(nopWriter{}, dir, size/2); err != nil {
		t.Fatal(err)
	}
	if read := readChars(t) - before; read > size/2+1<<20 {
		t.Errorf("dumping the second half read %d bytes", read)
	}
}

// readChars is rchar of /proc/self/io: bytes read by this process.
func readChars(t *testing.T) int64 {
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		t.Skip(err)
	}
	var n int64
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "rchar: "); ok {
			fmt.Sscan(v, &n)
		}
	}
	return n
}
