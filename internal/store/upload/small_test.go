package upload_test

import (
	"bytes"
	"context"
	"errors"
		"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/upload"
)

// TestSmallNARsInIndex: the NAR files of small paths are committed into
// the index with their narinfos, no file written; they are served,
// verified, and collected like files, and a NAR over InlineMax is a file.
func TestSmallNARsInIndex(t *testing.T) {
	diskOnly(t)
	ctx := context.Background()
	dir := t.TempDir()
	s := openStore(t, dir, upload.Options{InlineMax: 4 << 10})
	paths := closure(t, "inl")
	big := newPath(t, "inl-big", randomBytes(t, 8<<10)) // incompressible: over InlineMax as zstd too
	for _, p := range append(paths, big) {
		if err := p.upload(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	if files := blobFiles(t, dir); len(files) != 1 || files[0] != big.fileName {
		t.Errorf("blob files %v, want only the large path's %s", files, big.fileName)
	}
	for _, p := range append(paths, big) {
		if _, ok := s.InlineBlob(p.fileName); ok != (p != big) {
			t.Errorf("%s inline: %v", p.base, ok)
		}
		got, err := narOf(t, s, p.hash)
		if err != nil || !bytes.Equal(got, p.nar) {
			t.Errorf("NAR of %s: %v (%d bytes, want %d)", p.base, err, len(got), len(p.nar))
		}
	}
	if rep, err := s.Verify(ctx, false, nil); err != nil || len(rep.Bad) != 0 || rep.Checked != 4 {
		t.Fatalf("verify: %+v, %v", rep, err)
	}
	// A re-upload of a stored small NAR keeps nothing new.
	if info, err := s.PutNAR(ctx, paths[0].fileName, bytes.NewReader(paths[0].file)); err != nil || !info.Existed {
		t.Errorf("re-upload: %+v, %v", info, err)
	}
	if _, err := s.GCWith(ctx, upload.Policy{MaxSize: 1}, false); err != nil {
		t.Fatal(err)
	}
	for _, p := range paths {
		if _, ok := s.InlineBlob(p.fileName); ok {
			t.Errorf("%s's NAR still in the index after GC collected it", p.base)
		}
	}
}


// TestSmallNARKeptAcrossRestart: a small NAR whose narinfo has not come
// when the store closes is written out as a file, adopted by the next
// Open and claimed then (Nix 2.35 sends every NAR of a closure first).
func TestSmallNARKeptAcrossRestart(t *testing.T) {
	diskOnly(t)
	ctx := context.Background()
	dir := t.TempDir()
	s, err := openAt(t, dir, upload.Options{})
	if err != nil {
		t.Fatal(err)
	}
	p := closure(t, "restart")[0]
	if _, err := s.PutNAR(ctx, p.fileName, bytes.NewReader(p.file)); err != nil {
		t.Fatal(err)
	}
	if files := blobFiles(t, dir); len(files) != 0 {
		t.Errorf("files before Close: %v", files)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if files := blobFiles(t, dir); len(files) != 1 || files[0] != p.fileName {
		t.Fatalf("files after Close: %v, want %s", files, p.fileName)
	}
	s = openStore(t, dir, upload.Options{})
	if err := s.PutNarInfo(ctx, p.hash, strings.NewReader(p.narinfo())); err != nil {
		t.Fatalf("narinfo after the restart: %v", err)
	}
	if got, err := narOf(t, s, p.hash); err != nil || !bytes.Equal(got, p.nar) {
		t.Errorf("NAR after the restart: %v", err)
	}
}

// TestSmallNARLostInCrash: a store that stops without Close (a crash)
// loses the small NARs held in memory; their narinfos are then refused
// as naming a NAR not uploaded, and nothing else changes.
func TestSmallNARLostInCrash(t *testing.T) {
	diskOnly(t)
	ctx := context.Background()
	dir := t.TempDir()
	s := openStore(t, dir, upload.Options{})
	ps := closure(t, "crash")
	if err := ps[0].upload(ctx, s); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutNAR(ctx, ps[1].fileName, bytes.NewReader(ps[1].file)); err != nil {
		t.Fatal(err)
	}
	// The disk as a crash leaves it: what is written, as it is now.
	crashed := t.TempDir()
	copyTree(t, dir, crashed)
	c := openStore(t, crashed, upload.Options{})
	err := c.PutNarInfo(ctx, ps[1].hash, strings.NewReader(ps[1].narinfo()))
	if !errors.Is(err, store.ErrInvalid) || !strings.Contains(err.Error(), "not") {
		t.Errorf("narinfo of a NAR lost in the crash: %v, want ErrInvalid saying it was not uploaded", err)
	}
	if got, err := narOf(t, c, ps[0].hash); err != nil || !bytes.Equal(got, ps[0].nar) {
		t.Errorf("the committed path after the crash: %v", err)
	}
	// Sent again, it is taken.
	if err := ps[1].upload(ctx, c); err != nil {
		t.Errorf("upload again: %v", err)
	}
}

func copyTree(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.Walk(from, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		if fi.IsDir() {
			return os.MkdirAll(filepath.Join(to, rel), 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(to, rel), b, fi.Mode())
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestSmallNARMemoryBound: past the bound of small NARs held in memory, a
// small NAR is written as a file; every narinfo is still accepted.
func TestSmallNARMemoryBound(t *testing.T) {
	diskOnly(t)
	ctx := context.Background()
	dir := t.TempDir()
	s := openStore(t, dir, upload.Options{})
	ps := closure(t, "bound")
	defer upload.SetMaxInlineMemory(int64(len(ps[0].file) + len(ps[1].file)))()
	for _, p := range ps {
		if _, err := s.PutNAR(ctx, p.fileName, bytes.NewReader(p.file)); err != nil {
			t.Fatal(err)
		}
	}
	if files := blobFiles(t, dir); len(files) != 1 || files[0] != ps[2].fileName {
		t.Errorf("files %v, want only the third NAR's %s", files, ps[2].fileName)
	}
	for _, p := range ps {
		if err := s.PutNarInfo(ctx, p.hash, strings.NewReader(p.narinfo())); err != nil {
			t.Errorf("%s: %v", p.base, err)
		}
	}
	for _, p := range ps {
		if got, err := narOf(t, s, p.hash); err != nil || !bytes.Equal(got, p.nar) {
			t.Errorf("NAR of %s: %v", p.base, err)
		}
	}
}
