package upload_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
// when the store closes, or when the process dies without closing (a
// SIGKILL: the disk as it is then), is held again by the next Open and
// claimed then (Nix 2.35 sends every NAR of a closure first); no file of
// its own is written either way.
func TestSmallNARKeptAcrossRestart(t *testing.T) {
	diskOnly(t)
	for _, crash := range []bool{false, true} {
		ctx := context.Background()
		dir := t.TempDir()
		s, err := openAt(t, dir, upload.Options{})
		if err != nil {
			t.Fatal(err)
		}
		ps := closure(t, fmt.Sprintf("restart-%v", crash))
		if err := ps[0].upload(ctx, s); err != nil {
			t.Fatal(err)
		}
		for _, p := range ps[1:] {
			if _, err := s.PutNAR(ctx, p.fileName, bytes.NewReader(p.file)); err != nil {
				t.Fatal(err)
			}
		}
		at := dir
		if crash {
			at = t.TempDir()
			copyTree(t, dir, at)
		}
		s.Close()
		if files := blobFiles(t, at); len(files) != 0 {
			t.Errorf("crash %v: files %v, want none", crash, files)
		}
		s = openStore(t, at, upload.Options{})
		for _, p := range ps[1:] {
			if has, err := s.HasNAR(ctx, p.fileName); err != nil || !has {
				t.Errorf("crash %v: HEAD of %s after the restart: %v %v (the client would send it again)", crash, p.base, has, err)
			}
			if err := s.PutNarInfo(ctx, p.hash, strings.NewReader(p.narinfo())); err != nil {
				t.Fatalf("crash %v: narinfo of %s after the restart: %v", crash, p.base, err)
			}
		}
		for _, p := range ps {
			if got, err := narOf(t, s, p.hash); err != nil || !bytes.Equal(got, p.nar) {
				t.Errorf("crash %v: NAR of %s after the restart: %v", crash, p.base, err)
			}
		}
	}
}

// TestSmallNARLogTorn: a log cut in a record (a power cut while the
// server ran) keeps the whole records before the cut; the NAR it lost is
// refused at its narinfo as not uploaded, then taken when sent again. A
// record whose bytes no longer match its name is dropped.
func TestSmallNARLogTorn(t *testing.T) {
	diskOnly(t)
	ctx := context.Background()
	dir := t.TempDir()
	s, err := openAt(t, dir, upload.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ps := closure(t, "torn")
	for _, p := range ps[:2] {
		if _, err := s.PutNAR(ctx, p.fileName, bytes.NewReader(p.file)); err != nil {
			t.Fatal(err)
		}
	}
	crashed := t.TempDir()
	copyTree(t, dir, crashed)
	s.Close()
	log := filepath.Join(crashed, "pending-small.log")
	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(log, b[:len(b)-7], 0o600); err != nil { // into the second record
		t.Fatal(err)
	}
	c := openStore(t, crashed, upload.Options{})
	if err := c.PutNarInfo(ctx, ps[0].hash, strings.NewReader(ps[0].narinfo())); err != nil {
		t.Errorf("the whole record's narinfo: %v", err)
	}
	err = c.PutNarInfo(ctx, ps[1].hash, strings.NewReader(ps[1].narinfo()))
	if !errors.Is(err, store.ErrInvalid) || !strings.Contains(err.Error(), "not") {
		t.Errorf("narinfo of the torn record's NAR: %v, want ErrInvalid saying it was not uploaded", err)
	}
	if err := ps[1].upload(ctx, c); err != nil {
		t.Errorf("upload again: %v", err)
	}
	// Damage: a flipped byte in the data of the first record.
	b, _ = os.ReadFile(filepath.Join(dir, "pending-small.log"))
	b[40] ^= 1
	os.WriteFile(filepath.Join(dir, "pending-small.log"), b, 0o600)
	d := openStore(t, dir, upload.Options{})
	if has, _ := d.HasNAR(ctx, ps[0].fileName); has {
		t.Errorf("a damaged log record is held")
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

// TestSmallNARExpiresAcrossRestart: a held small NAR older than the grace
// period when the store opens again is not held; its narinfo is refused
// saying so.
func TestSmallNARExpiresAcrossRestart(t *testing.T) {
	diskOnly(t)
	ctx := context.Background()
	dir := t.TempDir()
	clock := newClock()
	s, err := openAt(t, dir, upload.Options{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	p := newPath(t, "small-expired", []byte("expired"))
	if _, err := s.PutNAR(ctx, p.fileName, bytes.NewReader(p.file)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	clock.Advance(25 * time.Hour)
	s = openStore(t, dir, upload.Options{Now: clock.Now})
	err = s.PutNarInfo(ctx, p.hash, strings.NewReader(p.narinfo()))
	if !errors.Is(err, store.ErrInvalid) || !strings.Contains(err.Error(), "not uploaded or expired after 24h") {
		t.Fatalf("narinfo naming the expired NAR: %v", err)
	}
}
