package nar_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/bos55/concordia/pkg/nar"
)

// roundTrip reads the NAR in src with Reader, checks every node against the
// tree at root (type, size, executable bit, contents, target, and that every
// file of the tree appears), writes the headers and contents back through
// Writer and checks the result hashes to want. narBytes, when not nil, is
// the NAR itself, to check Header.Offset.
func roundTrip(t *testing.T, root string, src io.Reader, want [32]byte, wantSize int64, narBytes []byte) {
	t.Helper()
	nr := nar.NewReader(src)
	out := nar.NewHasher()
	w := nar.NewWriter(out)
	nodes := 0
	for {
		h, err := nr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		nodes++
		p := filepath.Join(root, filepath.FromSlash(h.Path))
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatalf("%s: %v", h.Path, err)
		}
		if err := w.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		switch h.Type {
		case nar.TypeRegular:
			exec := fi.Mode()&0o100 != 0
			if !fi.Mode().IsRegular() || fi.Size() != h.Size || exec != h.Executable {
				t.Fatalf("%s: header %+v, file mode %v size %d", h.Path, h, fi.Mode(), fi.Size())
			}
			got := sha256.New()
			if _, err := io.Copy(io.MultiWriter(w, got), nr); err != nil {
				t.Fatalf("%s: %v", h.Path, err)
			}
			if !bytes.Equal(got.Sum(nil), fileSum(t, p)) {
				t.Fatalf("%s: contents differ", h.Path)
			}
			if narBytes != nil {
				if !bytes.Equal(narBytes[h.Offset:h.Offset+h.Size], readFile(t, p)) {
					t.Fatalf("%s: Offset %d does not point at the contents", h.Path, h.Offset)
				}
			}
		case nar.TypeSymlink:
			target, err := os.Readlink(p)
			if err != nil || target != h.LinkTarget {
				t.Fatalf("%s: target %q, on disk %q (%v)", h.Path, h.LinkTarget, target, err)
			}
		case nar.TypeDirectory:
			if !fi.IsDir() {
				t.Fatalf("%s: not a directory on disk", h.Path)
			}
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if nr.Offset() != wantSize {
		t.Errorf("Offset() at EOF = %d, want %d", nr.Offset(), wantSize)
	}
	got, size := out.Sum()
	if !bytes.Equal(got, want[:]) || int64(size) != wantSize {
		t.Errorf("re-serialised NAR: %d bytes %x, want %d bytes %x", size, got, wantSize, want)
	}
	onDisk := 0
	filepath.WalkDir(root, func(string, fs.DirEntry, error) error { onDisk++; return nil })
	if nodes != onDisk {
		t.Errorf("reader returned %d nodes, the tree has %d", nodes, onDisk)
	}
}

func fileSum(t *testing.T, p string) []byte {
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return h.Sum(nil)
}

func readFile(t *testing.T, p string) []byte {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestReaderRoundTrip reads real nix-store --dump output of every node of
// the varied tree, then (unless -short) of a sparse 100 MiB file and GOROOT
// streamed from nix-store.
func TestReaderRoundTrip(t *testing.T) {
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
			b := nixDump(t, full)
			roundTrip(t, full, bytes.NewReader(b), sha256.Sum256(b), int64(len(b)), b)
		})
	}
	if testing.Short() {
		return
	}
	sparse := filepath.Join(t.TempDir(), "sparse")
	tree{{path: filepath.Base(sparse), kind: 'f', data: "x", sparse: 100<<20 + 1}}.build(t, filepath.Dir(sparse))
	for name, p := range map[string]string{"sparse": sparse, "goroot": goroot(t)} {
		t.Run(name, func(t *testing.T) {
			want, n := nixDumpSum(t, p)
			cmd := nixCmd(t, "nix-store", "--dump", p)
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
			roundTrip(t, p, out, want, n, nil)
		})
	}
}

// narBuilder writes NAR tokens by hand, to make malformed archives.
type narBuilder struct{ b []byte }

func (n *narBuilder) s(ss ...string) *narBuilder {
	for _, s := range ss {
		n.u(uint64(len(s)))
		n.b = append(n.b, s...)
		n.b = append(n.b, make([]byte, (8-len(s)%8)%8)...)
	}
	return n
}

func (n *narBuilder) u(v uint64) *narBuilder {
	n.b = binary.LittleEndian.AppendUint64(n.b, v)
	return n
}

func (n *narBuilder) raw(b ...byte) *narBuilder { n.b = append(n.b, b...); return n }

// at is the offset the next token will start at.
func (n *narBuilder) at() int64 { return int64(len(n.b)) }

func dirNAR() *narBuilder {
	return (&narBuilder{}).s("nix-archive-1", "(", "type", "directory")
}

func fileEntry(n *narBuilder, name, contents string) *narBuilder {
	return n.s("entry", "(", "name", name, "node", "(", "type", "regular", "contents", contents, ")", ")")
}

func TestReaderRejects(t *testing.T) {
	type result struct {
		nar    []byte
		offset int64
		path   string
		reason string
	}
	cases := []struct {
		name  string
		build func() result
	}{
		{"empty input", func() result { return result{nil, 0, "", "truncated"} }},
		{"bad magic", func() result {
			return result{(&narBuilder{}).s("nix-archive-2").b, 0, "", `expected "nix-archive-1"`}
		}},
		{"absurd keyword length", func() result {
			n := (&narBuilder{}).s("nix-archive-1")
			at := n.at()
			return result{n.u(1 << 60).b, at, "/", "token of length 1152921504606846976"}
		}},
		{"unknown node type", func() result {
			n := (&narBuilder{}).s("nix-archive-1", "(", "type")
			at := n.at()
			return result{n.s("fifo", ")").b, at, "/", `unknown node type "fifo"`}
		}},
		{"unknown regular field", func() result {
			n := (&narBuilder{}).s("nix-archive-1", "(", "type", "regular")
			at := n.at()
			return result{n.s("size", "1").b, at, "/", `expected "contents", got "size"`}
		}},
		{"non-empty executable marker", func() result {
			n := (&narBuilder{}).s("nix-archive-1", "(", "type", "regular", "executable")
			at := n.at()
			return result{n.s("1", "contents").u(0).s(")").b, at, "/", "executable marker must be empty"}
		}},
		{"contents size beyond int64", func() result {
			n := (&narBuilder{}).s("nix-archive-1", "(", "type", "regular", "contents")
			at := n.at()
			return result{n.u(1 << 63).b, at, "/", "out of range"}
		}},
		{"truncated contents", func() result {
			n := (&narBuilder{}).s("nix-archive-1", "(", "type", "regular", "contents").u(100).raw(make([]byte, 10)...)
			return result{n.b, n.at(), "/", "truncated file contents"}
		}},
		{"non-zero contents padding", func() result {
			n := (&narBuilder{}).s("nix-archive-1", "(", "type", "regular", "contents").u(3).raw('a', 'b', 'c')
			at := n.at()
			return result{n.raw(0, 1, 0, 0, 0).s(")").b, at, "/", "non-zero padding"}
		}},
		{"unknown directory field", func() result {
			n := dirNAR()
			at := n.at()
			return result{n.s("entries").b, at, "/", `expected "entry" or ")", got "entries"`}
		}},
		{"name over NAME_MAX", func() result {
			n := dirNAR().s("entry", "(", "name")
			at := n.at()
			return result{n.s(strings.Repeat("n", 256)).b, at, "/", "entry name length 256 exceeds limit 255"}
		}},
		{"name too long", func() result {
			n := dirNAR().s("entry", "(", "name")
			at := n.at()
			return result{n.u(1 << 60).b, at, "/", "entry name length 1152921504606846976 exceeds limit 255"}
		}},
		{"non-zero name padding", func() result {
			n := dirNAR().s("entry", "(", "name").u(3).raw('a', 'b', 'c')
			at := n.at()
			return result{n.raw(0, 0, 0, 0, 7).b, at, "/", "non-zero padding"}
		}},
		{"empty symlink target", func() result {
			n := (&narBuilder{}).s("nix-archive-1", "(", "type", "symlink", "target")
			at := n.at()
			return result{n.s("", ")").b, at, "/", "invalid symlink target"}
		}},
		{"symlink target too long", func() result {
			n := (&narBuilder{}).s("nix-archive-1", "(", "type", "symlink", "target")
			at := n.at()
			return result{n.s(strings.Repeat("x", 4096), ")").b, at, "/", "symlink target length 4096 exceeds limit 4095"}
		}},
		{"unsorted entries", func() result {
			n := fileEntry(dirNAR(), "b", "").s("entry", "(", "name")
			at := n.at()
			return result{fileEntry(n.s("a", "node", "(", "type", "regular", "contents", "", ")", ")"), "c", "").b, at, "/", `entry "a" follows "b"`}
		}},
		{"duplicate entries", func() result {
			n := fileEntry(dirNAR(), "a", "").s("entry", "(", "name")
			at := n.at()
			return result{n.s("a").b, at, "/", `entry "a" follows "a"`}
		}},
		{"missing entry close", func() result {
			n := dirNAR().s("entry", "(", "name", "a", "node", "(", "type", "symlink", "target", "t", ")")
			at := n.at()
			return result{n.s("entry").b, at, "/", `expected ")", got "entry"`}
		}},
		{"error path is nested", func() result {
			n := dirNAR().s("entry", "(", "name", "sub", "node", "(", "type", "directory", "entry", "(", "name")
			at := n.at()
			return result{n.s("..").b, at, "/sub", `invalid entry name ".."`}
		}},
		{"trailing data", func() result {
			n := (&narBuilder{}).s("nix-archive-1", "(", "type", "regular", "contents", "hi", ")")
			at := n.at()
			return result{n.s("x").b, at, "", "trailing data after the root node"}
		}},
		{"truncated after root open", func() result {
			n := dirNAR()
			return result{n.b, n.at(), "/", "truncated"}
		}},
	}
	for _, bad := range []string{"", ".", "..", "a/b", "/", "a\x00b"} {
		cases = append(cases, struct {
			name  string
			build func() result
		}{fmt.Sprintf("invalid name %q", bad), func() result {
			n := dirNAR().s("entry", "(", "name")
			at := n.at()
			return result{n.s(bad, "node", "(", "type", "regular", "contents", "", ")", ")", ")").b, at, "/", "invalid entry name"}
		}})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.build()
			_, err := nar.Validate(bytes.NewReader(r.nar))
			checkInvalid(t, err, r.offset, r.path, r.reason)
			// The listing goes through the same checks.
			_, err = nar.ListingFromReader(bytes.NewReader(r.nar))
			checkInvalid(t, err, r.offset, r.path, r.reason)
		})
	}
}

func checkInvalid(t *testing.T, err error, offset int64, path, reason string) {
	t.Helper()
	if !errors.Is(err, nar.ErrInvalid) {
		t.Fatalf("err = %v, want ErrInvalid", err)
	}
	var e *nar.Error
	if !errors.As(err, &e) {
		t.Fatalf("err = %v, not a *nar.Error", err)
	}
	if e.Offset != offset || e.Path != path {
		t.Errorf("error at offset %d path %q, want offset %d path %q: %v", e.Offset, e.Path, offset, path, err)
	}
	if !strings.Contains(err.Error(), fmt.Sprintf("offset %d", offset)) || !strings.Contains(err.Error(), reason) {
		t.Errorf("error %q does not say offset %d and %q", err, offset, reason)
	}
}

// TestReaderRejectsEveryTruncation cuts a real NAR at every byte: each
// prefix must be refused as truncated, never accepted or panicking.
func TestReaderRejectsEveryTruncation(t *testing.T) {
	dir := t.TempDir()
	tree{
		{path: "d", kind: 'd'}, {path: "d/a", kind: 'f', data: "abc", mode: 0o755}, {path: "d/b", kind: 'l', data: "a"},
		{path: "d/c", kind: 'd'}, {path: "d/c/e", kind: 'f'},
	}.build(t, dir)
	var buf bytes.Buffer
	if _, err := nar.DumpPath(&buf, filepath.Join(dir, "d")); err != nil {
		t.Fatal(err)
	}
	full := buf.Bytes()
	if n, err := nar.Validate(bytes.NewReader(full)); err != nil || n != int64(len(full)) {
		t.Fatalf("Validate(full) = %d, %v", n, err)
	}
	for i := 0; i < len(full); i++ {
		_, err := nar.Validate(bytes.NewReader(full[:i]))
		if !errors.Is(err, nar.ErrInvalid) || !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("prefix of %d bytes: err = %v, want truncation", i, err)
		}
	}
}

// TestReaderBoundedAllocation: a tiny input claiming an enormous token must
// be refused before anything of that size is allocated.
func TestReaderBoundedAllocation(t *testing.T) {
	inputs := map[string][]byte{
		"magic":   (&narBuilder{}).u(1 << 60).u(0).b, // 16 bytes
		"type":    (&narBuilder{}).s("nix-archive-1", "(", "type").u(1 << 60).b,
		"name":    dirNAR().s("entry", "(", "name").u(1 << 60).b,
		"target":  (&narBuilder{}).s("nix-archive-1", "(", "type", "symlink", "target").u(1 << 60).b,
		"content": (&narBuilder{}).s("nix-archive-1", "(", "type", "regular", "contents").u(1 << 62).b,
	}
	for name, in := range inputs {
		t.Run(name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, err := nar.Validate(bytes.NewReader(in))
			runtime.ReadMemStats(&after)
			if !errors.Is(err, nar.ErrInvalid) {
				t.Fatalf("err = %v", err)
			}
			if d := after.TotalAlloc - before.TotalAlloc; d > 1<<20 {
				t.Fatalf("allocated %d bytes for a %d-byte input", d, len(in))
			}
		})
	}
}

// TestReaderAPI checks the archive/tar-like contract: Next skips unread
// contents, Read outside a file is io.EOF, errors are sticky.
func TestReaderAPI(t *testing.T) {
	n := fileEntry(fileEntry(dirNAR(), "a", "first file"), "b", "second").s("entry", "(", "name", "c", "node", "(", "type", "symlink", "target", "a", ")", ")", ")")
	nr := nar.NewReader(bytes.NewReader(n.b))
	h, err := nr.Next()
	if err != nil || h.Path != "/" || h.Type != nar.TypeDirectory {
		t.Fatalf("root: %+v, %v", h, err)
	}
	if k, err := nr.Read(make([]byte, 4)); k != 0 || err != io.EOF {
		t.Fatalf("Read on a directory = %d, %v", k, err)
	}
	if h, err = nr.Next(); err != nil || h.Path != "/a" || h.Size != 10 {
		t.Fatalf("/a: %+v, %v", h, err)
	}
	p := make([]byte, 5)
	if k, err := io.ReadFull(nr, p); k != 5 || err != nil || string(p) != "first" {
		t.Fatalf("partial read: %q, %v", p[:k], err)
	}
	if h, err = nr.Next(); err != nil || h.Path != "/b" { // skips " file"
		t.Fatalf("/b: %+v, %v", h, err)
	}
	if b, err := io.ReadAll(nr); err != nil || string(b) != "second" {
		t.Fatalf("/b contents %q, %v", b, err)
	}
	if h, err = nr.Next(); err != nil || h.Path != "/c" || h.LinkTarget != "a" {
		t.Fatalf("/c: %+v, %v", h, err)
	}
	if _, err = nr.Next(); err != io.EOF {
		t.Fatalf("end: %v", err)
	}
	if _, err = nr.Next(); err != io.EOF {
		t.Fatalf("after end: %v", err)
	}
	if nr.Offset() != int64(len(n.b)) {
		t.Fatalf("Offset() = %d, want %d", nr.Offset(), len(n.b))
	}

	bad := nar.NewReader(bytes.NewReader(dirNAR().s("junk").b))
	bad.Next()
	_, err1 := bad.Next()
	_, err2 := bad.Next()
	if err1 == nil || err1 != err2 {
		t.Fatalf("errors not sticky: %v then %v", err1, err2)
	}
}

type brokenReader struct{}

var errDisk = errors.New("disk on fire")

func (brokenReader) Read([]byte) (int, error) { return 0, errDisk }

// An I/O error is the reader's, not the NAR's: no ErrInvalid.
func TestReaderIOError(t *testing.T) {
	_, err := nar.Validate(brokenReader{})
	if !errors.Is(err, errDisk) || errors.Is(err, nar.ErrInvalid) {
		t.Fatalf("err = %v", err)
	}
}
