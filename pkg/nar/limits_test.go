package nar_test

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"

	"github.com/bos55/concordia/pkg/nar"
)

// streamTokens writes NAR string tokens to w.
func streamTokens(w *bufio.Writer, ss ...string) {
	var n [8]byte
	for _, s := range ss {
		binary.LittleEndian.PutUint64(n[:], uint64(len(s)))
		w.Write(n[:])
		w.WriteString(s)
		w.Write(make([]byte, (8-len(s)%8)%8))
	}
}

// deepNAR streams a NAR of depth directories nested in each other, each
// named with nameLen bytes, with an empty file at the bottom: the shape
// whose cost used to grow with depth squared times the name length.
func deepNAR(depth, nameLen int) io.Reader {
	pr, pw := io.Pipe()
	go func() {
		w := bufio.NewWriter(pw)
		name := strings.Repeat("n", nameLen)
		streamTokens(w, "nix-archive-1", "(", "type", "directory")
		for i := 0; i < depth; i++ {
			streamTokens(w, "entry", "(", "name", name, "node", "(", "type", "directory")
		}
		streamTokens(w, "entry", "(", "name", "f", "node", "(", "type", "regular", "contents", "", ")", ")")
		for i := 0; i < depth; i++ {
			streamTokens(w, ")", ")")
		}
		streamTokens(w, ")")
		pw.CloseWithError(w.Flush())
	}()
	return pr
}

// wideNAR streams a NAR of one directory holding n empty files.
func wideNAR(n int) io.Reader {
	pr, pw := io.Pipe()
	go func() {
		w := bufio.NewWriter(pw)
		streamTokens(w, "nix-archive-1", "(", "type", "directory")
		for i := 0; i < n; i++ {
			streamTokens(w, "entry", "(", "name", fmt.Sprintf("%08d", i), "node", "(", "type", "regular", "contents", "", ")", ")")
		}
		streamTokens(w, ")")
		pw.CloseWithError(w.Flush())
	}()
	return pr
}

func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// TestReaderDeepNARIsCheap: 4000 directories of 255-byte names (a 1 MB
// path at the bottom) used to cost gigabytes, a path string per open
// directory and per node (2 GB allocated to validate it). Validating and
// listing it must now allocate a few times what the names take once, the
// test's own generator and output included.
func TestReaderDeepNARIsCheap(t *testing.T) {
	const depth, nameLen = 4000, 255
	var size int64
	a := allocated(func() {
		var err error
		size, err = nar.Validate(deepNAR(depth, nameLen))
		if err != nil {
			t.Fatal(err)
		}
	})
	t.Logf("validate: NAR of %d bytes, %d bytes allocated", size, a)
	if a > 64<<20 {
		t.Errorf("validating a %d-deep NAR allocated %d bytes", depth, a)
	}
	var ls bytes.Buffer
	a = allocated(func() {
		if _, err := nar.WriteListing(&ls, deepNAR(depth, nameLen), nar.ReaderOptions{}); err != nil {
			t.Fatal(err)
		}
	})
	t.Logf("streamed listing: %d bytes of JSON, %d bytes allocated", ls.Len(), a)
	if a > 64<<20 {
		t.Errorf("listing a %d-deep NAR allocated %d bytes", depth, a)
	}
	l, err := nar.ListingFromReader(deepNAR(depth, nameLen))
	if err != nil {
		t.Fatal(err)
	}
	js, _ := l.MarshalJSON()
	if !bytes.Equal(js, ls.Bytes()) {
		t.Error("streamed listing differs from MarshalJSON")
	}
}

// An error deep down still names the whole path, built when it happens.
func TestReaderDeepErrorNamesPath(t *testing.T) {
	var b bytes.Buffer
	w := bufio.NewWriter(&b)
	streamTokens(w, "nix-archive-1", "(", "type", "directory")
	for _, name := range []string{"a", "b", "c"} {
		streamTokens(w, "entry", "(", "name", name, "node", "(", "type", "directory")
	}
	streamTokens(w, "entry", "(", "name", "x", "node", "(", "type", "fifo")
	w.Flush()
	_, err := nar.Validate(&b)
	var e *nar.Error
	if !errors.As(err, &e) || e.Path != "/a/b/c/x" {
		t.Fatalf("err = %v, want one in /a/b/c/x", err)
	}
}

func TestReaderLimits(t *testing.T) {
	file := func(size int) []byte {
		return (&narBuilder{}).s("nix-archive-1", "(", "type", "regular", "contents", strings.Repeat("x", size), ")").b
	}
	link := func(target string) []byte {
		return (&narBuilder{}).s("nix-archive-1", "(", "type", "symlink", "target", target, ")").b
	}
	deep := func(d int) []byte { b, _ := io.ReadAll(deepNAR(d, 3)); return b }
	wide := func(n int) []byte { b, _ := io.ReadAll(wideNAR(n)); return b }
	huge := (&narBuilder{}).s("nix-archive-1", "(", "type", "regular", "contents").u(1 << 40).b
	for _, tc := range []struct {
		name  string
		nar   []byte
		opts  nar.ReaderOptions
		limit string // "" = accepted
	}{
		{"size within", file(100), nar.ReaderOptions{MaxSize: int64(len(file(100)))}, ""},
		{"size over by a byte", file(100), nar.ReaderOptions{MaxSize: int64(len(file(100))) - 1}, nar.LimitSize},
		{"size over at the header", huge, nar.ReaderOptions{MaxSize: 1 << 30}, nar.LimitSize},
		{"depth within", deep(10), nar.ReaderOptions{MaxDepth: 11}, ""},
		{"depth over", deep(11), nar.ReaderOptions{MaxDepth: 11}, nar.LimitDepth},
		{"entries within", wide(10), nar.ReaderOptions{MaxEntries: 11}, ""},
		{"entries over", wide(11), nar.ReaderOptions{MaxEntries: 11}, nar.LimitEntries},
		{"name within", deep(1), nar.ReaderOptions{MaxNameLen: 3}, ""},
		{"name over", deep(1), nar.ReaderOptions{MaxNameLen: 2}, nar.LimitNameLen},
		{"name over the format", (&narBuilder{}).s("nix-archive-1", "(", "type", "directory", "entry", "(", "name", strings.Repeat("n", 256)).b, nar.ReaderOptions{MaxNameLen: 1000}, nar.LimitNameLen},
		{"target within", link("abcd"), nar.ReaderOptions{MaxTargetLen: 4}, ""},
		{"target over", link("abcde"), nar.ReaderOptions{MaxTargetLen: 4}, nar.LimitTargetLen},
	} {
		t.Run(tc.name, func(t *testing.T) {
			check := func(what string, err error) {
				t.Helper()
				if tc.limit == "" {
					if err != nil {
						t.Fatalf("%s: %v", what, err)
					}
					return
				}
				var le *nar.LimitError
				if !errors.Is(err, nar.ErrInvalid) || !errors.As(err, &le) || le.Limit != tc.limit {
					t.Fatalf("%s: err = %v, want a %s LimitError", what, err, tc.limit)
				}
			}
			_, err := nar.ValidateOptions(bytes.NewReader(tc.nar), tc.opts)
			check("validate", err)
			_, err = nar.ListingFromReaderOptions(bytes.NewReader(tc.nar), tc.opts)
			check("listing", err)
			_, err = nar.WriteListing(io.Discard, bytes.NewReader(tc.nar), tc.opts)
			check("streamed listing", err)
		})
	}
}

// TestWriteListingMatchesMarshal: the streamed listing is byte for byte
// Listing.MarshalJSON, on a real tree (names needing escapes included).
func TestWriteListingMatchesMarshal(t *testing.T) {
	for name, data := range map[string][]byte{"goroot": gorootNAR(t), "fixture": fixtureNAR(t)} {
		t.Run(name, func(t *testing.T) {
			l, err := nar.ListingFromReader(bytes.NewReader(data))
			if err != nil {
				t.Fatal(err)
			}
			want, _ := l.MarshalJSON()
			var got bytes.Buffer
			n, err := nar.WriteListing(&got, bytes.NewReader(data), nar.ReaderOptions{})
			if err != nil || n != int64(got.Len()) {
				t.Fatalf("WriteListing = %d, %v (wrote %d)", n, err, got.Len())
			}
			if !bytes.Equal(got.Bytes(), want) {
				t.Fatalf("streamed listing differs:\n%.300s\nwant\n%.300s", got.Bytes(), want)
			}
		})
	}
}

func gorootNAR(t testing.TB) []byte {
	var buf bytes.Buffer
	if _, err := nar.DumpPath(&buf, goroot(t)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func fixtureNAR(t *testing.T) []byte {
	dir := t.TempDir()
	tree{
		{path: "x", kind: 'd'}, {path: "x/a", kind: 'f', data: "12345678"}, {path: "x/b", kind: 'l', data: "a"},
		{path: "x/c", kind: 'd'}, {path: "x/c/\xff \"ä\"\n\\", kind: 'f', data: "odd", mode: 0o700}, {path: "x/d", kind: 'd'},
		{path: "x/d/e", kind: 'd'}, {path: "x/d/e/f", kind: 'f', data: "deep"}, {path: "x/z", kind: 'f'},
	}.build(t, dir)
	var buf bytes.Buffer
	if _, err := nar.DumpPath(&buf, dir+"/x"); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
