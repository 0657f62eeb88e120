package nar_test

import (
	"bytes"
	"errors"
	"io"
	"path/filepath"
	"testing"

	"github.com/bos55/concordia/pkg/nar"
)

// TestWriterMatchesDump builds, through Writer, the NAR of a tree that
// DumpPath also serialises, including directories that must be closed when
// a header outside them arrives.
func TestWriterMatchesDump(t *testing.T) {
	dir := t.TempDir()
	tree{
		{path: "r", kind: 'd'}, {path: "r/a", kind: 'd'}, {path: "r/a/x", kind: 'f', data: "x!", mode: 0o755},
		{path: "r/a/y", kind: 'd'}, {path: "r/a/y/z", kind: 'd'}, {path: "r/b", kind: 'f', data: "bee"},
		{path: "r/c", kind: 'l', data: "a/x"},
	}.build(t, dir)
	var want bytes.Buffer
	if _, err := nar.DumpPath(&want, filepath.Join(dir, "r")); err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	w := nar.NewWriter(&got)
	for _, h := range []nar.Header{
		{Path: "/", Type: nar.TypeDirectory},
		{Path: "/a", Type: nar.TypeDirectory},
		{Path: "/a/x", Type: nar.TypeRegular, Size: 2, Executable: true},
		{Path: "/a/y", Type: nar.TypeDirectory},
		{Path: "/a/y/z", Type: nar.TypeDirectory},
		{Path: "/b", Type: nar.TypeRegular, Size: 3},
		{Path: "/c", Type: nar.TypeSymlink, LinkTarget: "a/x"},
	} {
		if err := w.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		switch h.Path {
		case "/a/x":
			io.WriteString(w, "x")
			io.WriteString(w, "!")
		case "/b":
			io.WriteString(w, "bee")
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if w.Size() != int64(want.Len()) || !bytes.Equal(got.Bytes(), want.Bytes()) {
		t.Fatalf("Writer output (%d bytes) differs from DumpPath (%d bytes)", got.Len(), want.Len())
	}
}

func TestWriterRejects(t *testing.T) {
	dir := nar.Header{Path: "/", Type: nar.TypeDirectory}
	file := func(p string, size int64) nar.Header { return nar.Header{Path: p, Type: nar.TypeRegular, Size: size} }
	for _, tc := range []struct {
		name    string
		headers []nar.Header
		write   string // written after the last header
	}{
		{"first not root", []nar.Header{file("/a", 0)}, ""},
		{"after root file", []nar.Header{file("/", 0), file("/a", 0)}, ""},
		{"unsorted", []nar.Header{dir, file("/b", 0), file("/a", 0)}, ""},
		{"duplicate", []nar.Header{dir, file("/a", 0), file("/a", 0)}, ""},
		{"parent is a file", []nar.Header{dir, file("/a", 0), file("/a/b", 0)}, ""},
		{"parent never opened", []nar.Header{dir, file("/x/y", 0)}, ""},
		{"invalid name", []nar.Header{dir, file("/..", 0)}, ""},
		{"relative path", []nar.Header{dir, file("a", 0)}, ""},
		{"short contents", []nar.Header{dir, file("/a", 5), file("/b", 0)}, "abc"},
		{"long contents", []nar.Header{file("/", 2)}, "abc"},
		{"write to directory", []nar.Header{dir}, "x"},
		{"empty symlink", []nar.Header{{Path: "/", Type: nar.TypeSymlink}}, ""},
		{"unknown type", []nar.Header{{Path: "/", Type: "fifo"}}, ""},
		{"negative size", []nar.Header{file("/", -1)}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := nar.NewWriter(io.Discard)
			var err error
			for i := range tc.headers {
				if err = w.WriteHeader(&tc.headers[i]); err != nil {
					break
				}
				if i == len(tc.headers)-2 && tc.write != "" {
					_, err = io.WriteString(w, tc.write)
				}
			}
			if err == nil && tc.write != "" && len(tc.headers) == 1 {
				_, err = io.WriteString(w, tc.write)
			}
			if err == nil {
				err = w.Close()
			}
			if !errors.Is(err, nar.ErrWriteOrder) {
				t.Fatalf("err = %v, want ErrWriteOrder", err)
			}
		})
	}
	if err := nar.NewWriter(io.Discard).Close(); !errors.Is(err, nar.ErrWriteOrder) {
		t.Fatalf("Close of an empty NAR: %v", err)
	}
}
