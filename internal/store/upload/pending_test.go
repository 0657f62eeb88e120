package upload_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/upload"
)

// uploadNARsFirst PUTs every NAR of paths largest first, as Nix 2.35's
// addMultipleToStore does (binary-cache-store.cc 2.35.0:326-455); the
// narinfos come later (putNarInfos).
func uploadNARsFirst(t *testing.T, s *upload.Store, paths []*fakePath) {
	t.Helper()
	bySize := slices.Clone(paths)
	slices.SortStableFunc(bySize, func(a, b *fakePath) int { return len(b.nar) - len(a.nar) })
	for _, p := range bySize {
		if _, err := s.PutNAR(context.Background(), p.fileName, bytes.NewReader(p.file)); err != nil {
			t.Fatalf("NAR of %s: %v", p.base, err)
		}
	}
}

// putNarInfos PUTs the narinfos of paths in dependency order (closure's
// order is leaf first).
func putNarInfos(s *upload.Store, paths []*fakePath) error {
	for _, p := range paths {
		if err := s.PutNarInfo(context.Background(), p.hash, strings.NewReader(p.narinfo())); err != nil {
			return fmt.Errorf("narinfo of %s: %w", p.base, err)
		}
	}
	return nil
}

// TestNARsFirstAcrossRestart: a closure uploaded in Nix 2.35's order,
// every NAR first, with the server restarted between the NARs and the
// narinfos: every narinfo is accepted and every path served with its NAR.
func TestNARsFirstAcrossRestart(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := openAt(t, dir, upload.Options{})
	if err != nil {
		t.Fatal(err)
	}
	paths := append(closure(t, "nf"), closure(t, "nf2")...)
	uploadNARsFirst(t, s, paths)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, dir, upload.Options{})
	for _, p := range paths {
		if ok, err := s.HasNAR(ctx, p.fileName); !ok || err != nil {
			t.Fatalf("HasNAR of %s after the restart: %v %v", p.base, ok, err)
		}
	}
	if err := putNarInfos(s, paths); err != nil {
		t.Fatal(err)
	}
	for _, p := range paths {
		if got, err := narOf(t, s, p.hash); err != nil || !bytes.Equal(got, p.nar) {
			t.Fatalf("%s after the restart: %v", p.base, err)
		}
	}
	if st, _ := s.Stats(ctx); st.Pending != 0 || st.Paths != len(paths) {
		t.Fatalf("stats %+v", st)
	}
}

// TestPendingBoundBySize: pending NARs past MaxPending are dropped oldest
// first (the one just uploaded stays), also those kept across a restart;
// a narinfo claiming a dropped one is refused naming the bound, and the
// NAR uploaded again is accepted.
func TestPendingBoundBySize(t *testing.T) {
	diskOnly(t) // recovery at Open from what a crash leaves on a disk
	ctx := context.Background()
	clock := newClock()
	dir := t.TempDir()
	mk := func(name string) *fakePath { return newPath(t, name, bytes.Repeat([]byte(name), 2000)) }
	a, b, c := mk("bound-a"), mk("bound-b"), mk("bound-c")
	// Room for two of them.
	bound := int64(len(a.file) + len(b.file) + len(c.file)/2)
	opts := upload.Options{Now: clock.Now, MaxPending: bound, InlineMax: -1}
	s := openStore(t, dir, opts)
	for _, p := range []*fakePath{a, b, c} {
		if _, err := s.PutNAR(ctx, p.fileName, bytes.NewReader(p.file)); err != nil {
			t.Fatal(err)
		}
		clock.Advance(time.Minute)
	}
	if ok, _ := s.HasNAR(ctx, a.fileName); ok {
		t.Fatal("the oldest pending NAR was kept past the bound")
	}
	if files := blobFiles(t, dir); slices.Contains(files, a.fileName) || len(files) != 2 {
		t.Fatalf("files %v, want b's and c's", files)
	}
	err := s.PutNarInfo(ctx, a.hash, strings.NewReader(a.narinfo()))
	if !errors.Is(err, store.ErrInvalid) || !strings.Contains(err.Error(), "not uploaded") ||
		!strings.Contains(err.Error(), "upload.pending_max_size") || !strings.Contains(err.Error(), "upload it again") {
		t.Fatalf("narinfo of the dropped NAR: %v", err)
	}
	if err := putNarInfos(s, []*fakePath{b, c}); err != nil {
		t.Fatal(err)
	}
	if err := a.upload(ctx, s); err != nil {
		t.Fatalf("the dropped NAR uploaded again: %v", err)
	}

	// Across a restart: the bound applies to what Open keeps.
	d, e := mk("bound-d"), mk("bound-e")
	for _, p := range []*fakePath{d, e} {
		if _, err := s.PutNAR(ctx, p.fileName, bytes.NewReader(p.file)); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	old := time.Now().Add(-time.Hour)
	os.Chtimes(filepath.Join(dir, "blobs", d.fileName), old, old)
	s = openStore(t, dir, upload.Options{Now: clock.Now, MaxPending: int64(len(e.file)), InlineMax: -1})
	if ok, _ := s.HasNAR(ctx, d.fileName); ok {
		t.Fatal("the older NAR kept across the restart survived the bound")
	}
	if err := putNarInfos(s, []*fakePath{e}); err != nil {
		t.Fatal(err)
	}
}

// TestPendingDamagedWhileDown: a pending NAR file damaged while the server
// was down (a flipped byte, or cut short by a crash before its fsync) is
// refused when a narinfo claims it, never served; the file goes, so the
// client's next HEAD says it is missing, and sending it again works.
func TestPendingDamagedWhileDown(t *testing.T) {
	diskOnly(t) // recovery at Open from what a crash leaves on a disk
	for _, tc := range []struct {
		name   string
		damage func(b []byte) []byte
	}{
		{"flipped byte", func(b []byte) []byte { b = slices.Clone(b); b[len(b)/2] ^= 0x40; return b }},
		{"truncated", func(b []byte) []byte { return b[:len(b)/2] }},
		{"empty", func(b []byte) []byte { return nil }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			s, err := openAt(t, dir, upload.Options{})
			if err != nil {
				t.Fatal(err)
			}
			p := newPath(t, "damaged", bytes.Repeat([]byte("damaged while down "), 500))
			if _, err := s.PutNAR(ctx, p.fileName, bytes.NewReader(p.file)); err != nil {
				t.Fatal(err)
			}
			s.Close()
			f := filepath.Join(dir, "blobs", p.fileName)
			if err := os.WriteFile(f, tc.damage(p.file), 0o644); err != nil {
				t.Fatal(err)
			}
			s = openStore(t, dir, upload.Options{})
			err = s.PutNarInfo(ctx, p.hash, strings.NewReader(p.narinfo()))
			if !errors.Is(err, store.ErrInvalid) || !strings.Contains(err.Error(), "damaged") || !strings.Contains(err.Error(), "upload it again") {
				t.Fatalf("narinfo claiming a damaged NAR: %v", err)
			}
			if _, err := s.PathInfo(ctx, p.hash); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("path of a damaged NAR served: %v", err)
			}
			if ok, _ := s.HasNAR(ctx, p.fileName); ok {
				t.Fatal("HasNAR true for a damaged NAR: the client would not send it again")
			}
			if slices.Contains(blobFiles(t, dir), p.fileName) {
				t.Fatal("the damaged file was left")
			}
			if err := p.upload(ctx, s); err != nil {
				t.Fatalf("sent again: %v", err)
			}
			if got, err := narOf(t, s, p.hash); err != nil || !bytes.Equal(got, p.nar) {
				t.Fatalf("served after sending again: %v", err)
			}
		})
	}
}

// TestPendingReuploadReplacesUnverified: a NAR sent again after a restart,
// before any narinfo claimed the file kept across it, replaces that file
// (the upload was verified, the file not yet); a damaged kept file is
// thus repaired by the client's retry.
func TestPendingReuploadReplacesUnverified(t *testing.T) {
	diskOnly(t) // recovery at Open from what a crash leaves on a disk
	ctx := context.Background()
	dir := t.TempDir()
	s, err := openAt(t, dir, upload.Options{})
	if err != nil {
		t.Fatal(err)
	}
	p := newPath(t, "reupload", bytes.Repeat([]byte("reupload "), 500))
	if _, err := s.PutNAR(ctx, p.fileName, bytes.NewReader(p.file)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	f := filepath.Join(dir, "blobs", p.fileName)
	os.WriteFile(f, p.file[:10], 0o644)
	s = openStore(t, dir, upload.Options{})
	info, err := s.PutNAR(ctx, p.fileName, bytes.NewReader(p.file))
	if err != nil || info.Existed {
		t.Fatalf("upload over an unverified file: %+v %v", info, err)
	}
	if err := s.PutNarInfo(ctx, p.hash, strings.NewReader(p.narinfo())); err != nil {
		t.Fatal(err)
	}
	if got, err := narOf(t, s, p.hash); err != nil || !bytes.Equal(got, p.nar) {
		t.Fatalf("served: %v", err)
	}
}

// TestPendingExpiresAcrossRestart: a file kept across a restart that is
// older than the grace period is removed by Open, and a narinfo naming it
// is told the NAR was not uploaded or expired, with the grace period.
func TestPendingExpiresAcrossRestart(t *testing.T) {
	diskOnly(t) // recovery at Open from what a crash leaves on a disk
	ctx := context.Background()
	dir := t.TempDir()
	s, err := openAt(t, dir, upload.Options{InlineMax: -1})
	if err != nil {
		t.Fatal(err)
	}
	p := newPath(t, "expired", []byte("expired"))
	if _, err := s.PutNAR(ctx, p.fileName, bytes.NewReader(p.file)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	old := time.Now().Add(-25 * time.Hour)
	os.Chtimes(filepath.Join(dir, "blobs", p.fileName), old, old)
	s = openStore(t, dir, upload.Options{InlineMax: -1})
	if files := blobFiles(t, dir); len(files) != 0 {
		t.Fatalf("expired file kept: %v", files)
	}
	err = s.PutNarInfo(ctx, p.hash, strings.NewReader(p.narinfo()))
	if !errors.Is(err, store.ErrInvalid) || !strings.Contains(err.Error(), "not uploaded or expired after 24h") || !strings.Contains(err.Error(), "upload it again") {
		t.Fatalf("narinfo naming the expired NAR: %v", err)
	}
}

// TestPendingDefaultGrace: without a restart a pending NAR waits a day
// (upload.pending_max_age), not an hour.
func TestPendingDefaultGrace(t *testing.T) {
	ctx := context.Background()
	clock := newClock()
	s := openStore(t, t.TempDir(), upload.Options{Now: clock.Now})
	p := newPath(t, "grace", []byte("grace"))
	if _, err := s.PutNAR(ctx, p.fileName, bytes.NewReader(p.file)); err != nil {
		t.Fatal(err)
	}
	clock.Advance(23 * time.Hour)
	if n, err := s.SweepPending(ctx); n != 0 || err != nil {
		t.Fatalf("swept %d within a day (%v)", n, err)
	}
	if err := s.PutNarInfo(ctx, p.hash, strings.NewReader(p.narinfo())); err != nil {
		t.Fatal(err)
	}
}
