package nar_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/bos55/concordia/pkg/nar"
)

// TestDumpPathMatchesNix compares DumpPath with nix-store --dump on every
// node of a varied tree taken as the root, and on the whole tree.
func TestDumpPathMatchesNix(t *testing.T) {
	needNix(t)
	t.Parallel() // mostly waiting for nix; the allocation tests stay serial
	root := t.TempDir()
	tr := variedTree()
	tr.build(t, root)

	paths := []string{""}
	for _, e := range tr {
		paths = append(paths, e.path)
	}
	for _, p := range paths {
		full := filepath.Join(root, filepath.FromSlash(p))
		t.Run(nameOf(p), func(t *testing.T) {
			want := nixDump(t, full)
			var got bytes.Buffer
			n, err := nar.DumpPath(&got, full)
			if err != nil {
				t.Fatal(err)
			}
			if n != int64(got.Len()) {
				t.Errorf("DumpPath returned %d, wrote %d", n, got.Len())
			}
			if !bytes.Equal(got.Bytes(), want) {
				t.Fatalf("NAR differs from nix-store --dump: got %d bytes, want %d; first difference at %d",
					got.Len(), len(want), firstDiff(got.Bytes(), want))
			}
		})
	}
}

// TestDumpPathBigDirectoryMatchesNix needs several getdents64 calls for one
// directory, and has names of every length up to NAME_MAX.
func TestDumpPathBigDirectoryMatchesNix(t *testing.T) {
	needNix(t)
	t.Parallel() // mostly waiting for nix; the allocation tests stay serial
	root := t.TempDir()
	var tr tree
	for i := 0; i < 2000; i++ {
		name := strings.Repeat(string(rune('a'+i%26)), 1+i%255) + strconv.Itoa(i)
		if len(name) > 255 {
			name = name[len(name)-255:]
		}
		tr = append(tr, fsNode{path: name, kind: 'f', data: name[:min(i%10, len(name))]})
	}
	tr.build(t, root)
	var got bytes.Buffer
	if _, err := nar.DumpPath(&got, root); err != nil {
		t.Fatal(err)
	}
	if want := nixDump(t, root); !bytes.Equal(got.Bytes(), want) {
		t.Fatalf("NAR differs from nix-store --dump at byte %d", firstDiff(got.Bytes(), want))
	}
}

// TestDumpPathTakesPathAsGiven: nix-store --dump 2.8 does not clean the
// path, so "link/" follows a symlink to a directory (seen here).
func TestDumpPathTakesPathAsGiven(t *testing.T) {
	needNix(t)
	root := t.TempDir()
	tree{{path: "d", kind: 'd'}, {path: "d/f", kind: 'f', data: "f"}, {path: "l", kind: 'l', data: "d"}}.build(t, root)
	for _, p := range []string{"l/", "d/", "d/../l", "./d/f", "d//f"} {
		full := root + "/" + p
		var got bytes.Buffer
		if _, err := nar.DumpPath(&got, full); err != nil {
			t.Fatal(err)
		}
		if want := nixDump(t, full); !bytes.Equal(got.Bytes(), want) {
			t.Errorf("%s: NAR differs from nix-store --dump", p)
		}
	}
}

// TestDumpPathLargeMatchesNix streams a sparse file over 100 MiB and the Go
// toolchain through SHA-256 on both sides.
func TestDumpPathLargeMatchesNix(t *testing.T) {
	needNix(t)
	t.Parallel() // mostly waiting for nix; the allocation tests stay serial
	if testing.Short() {
		t.Skip("streams ~350 MB twice; skipped in -short")
	}
	dir := t.TempDir()
	sparse := filepath.Join(dir, "sparse")
	tree{{path: "sparse", kind: 'f', data: "head", sparse: 100<<20 + 5}}.build(t, dir)
	f, err := os.OpenFile(sparse, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("middle"), 60<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()

	for name, p := range map[string]string{"sparse": sparse, "goroot": goroot(t)} {
		t.Run(name, func(t *testing.T) {
			want, wantN := nixDumpSum(t, p)
			h := sha256.New()
			n, err := nar.DumpPath(h, p)
			if err != nil {
				t.Fatal(err)
			}
			var got [32]byte
			h.Sum(got[:0])
			if n != wantN || got != want {
				t.Fatalf("got %d bytes sha256 %x, nix-store --dump gave %d bytes %x", n, got, wantN, want)
			}
		})
	}
}

func TestDumpPathRefusesSpecialFiles(t *testing.T) {
	dir := t.TempDir()
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o644); err != nil {
		t.Skip("mkfifo:", err)
	}
	for _, p := range []string{dir, filepath.Join(dir, "fifo")} {
		if _, err := nar.DumpPath(io.Discard, p); err == nil {
			t.Errorf("DumpPath(%s) accepted a fifo", p)
		}
	}
	if _, err := nar.DumpPath(io.Discard, filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("DumpPath(missing) = %v, want ErrNotExist", err)
	}
}

type failWriter struct{ after int }

var errSink = errors.New("sink broke")

func (w *failWriter) Write(p []byte) (int, error) {
	if len(p) > w.after {
		n := w.after
		w.after = 0
		return n, errSink
	}
	w.after -= len(p)
	return len(p), nil
}

func TestDumpPathWriterError(t *testing.T) {
	root := t.TempDir()
	variedTree().build(t, root)
	for _, after := range []int{0, 100, 300 << 10} {
		if _, err := nar.DumpPath(&failWriter{after: after}, root); !errors.Is(err, errSink) {
			t.Errorf("after %d bytes: err = %v, want the writer's error", after, err)
		}
	}
}

// TestDumpPathAllocs checks that allocations do not grow with file count:
// a tree of 2000 files costs about what a tree of 20 does. The margin is
// 0.1 allocation per extra file: a per-file allocation (1980 or more) fails
// clearly, while sync.Pool's deliberate random drops under -race (a fresh
// dumper and its buffers, a few dozen allocations) do not.
func TestDumpPathAllocs(t *testing.T) {
	small, large := t.TempDir(), t.TempDir()
	for i := 0; i < 2000; i++ {
		dir := large
		if i < 20 {
			dir = small
		}
		name := filepath.Join(dir, string(rune('a'+i%26))+string(rune('a'+i/26%26))+string(rune('a'+i/676)))
		if err := os.WriteFile(name, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	allocs := func(p string) float64 {
		return testing.AllocsPerRun(5, func() {
			if _, err := nar.DumpPath(io.Discard, p); err != nil {
				t.Fatal(err)
			}
		})
	}
	a, b := allocs(small), allocs(large)
	t.Logf("allocs: 20 files %.0f, 2000 files %.0f", a, b)
	if b > a+0.1*(2000-20) {
		t.Errorf("allocations grow with file count: %v for 20 files, %v for 2000", a, b)
	}
}

func nameOf(p string) string {
	if p == "" {
		return "root"
	}
	return p
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if i >= len(b) || a[i] != b[i] {
			return i
		}
	}
	return len(a)
}
