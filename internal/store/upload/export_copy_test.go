package upload_test

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/upload"
)

// TestPathRecordsStampNoAccess: reading a store to copy it leaves its
// access times as they were (PathInfo would make every path look used),
// and SetPathTimes puts back the times of another store.
func TestPathRecordsStampNoAccess(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := openAt(t, dir, upload.Options{})
	if err != nil {
		t.Fatal(err)
	}
	p := newPath(t, "times", []byte("times"))
	if err := p.upload(ctx, s); err != nil {
		t.Fatal(err)
	}
	reg, acc := time.Unix(1_600_000_000, 0), time.Unix(1_650_000_000, 0)
	if err := s.SetPathTimes(ctx, p.hash, reg, acc, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if recs, err := s.PathRecords(ctx); err != nil || len(recs) != 1 || recs[0].NarInfo.StorePath != p.info.StorePath {
		t.Fatalf("PathRecords = %+v, %v", recs, err)
	}
	s.Close() // flushes the access times read paths stamp
	s = openStore(t, dir, upload.Options{})
	r, err := s.PathRecordOf(ctx, p.hash)
	if err != nil || !r.Registered.Equal(reg) || !r.Access.Equal(acc) || !r.Told.IsZero() || r.Blob != p.fileName {
		t.Fatalf("PathRecordOf = %+v, %v; want registered %v, accessed %v, never told", r, err, reg, acc)
	}
	if err := s.SetPathTimes(ctx, hashPart("absent"), reg, acc, acc); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("SetPathTimes of an absent path: %v", err)
	}
}

// TestPutTombstone: a copied tombstone refuses an upload of its path
// with another NAR, as the original did; one of a path present is not
// written. PutPin keeps a pin as made and never replaces one.
func TestPutTombstone(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir(), upload.Options{})
	gone := newPath(t, "gone", []byte("collected"))
	tomb := upload.Tombstone{StorePath: gone.info.StorePath, NarHash: bytes.Repeat([]byte{1}, 32),
		RefsHash: bytes.Repeat([]byte{2}, 32), Collected: time.Unix(1_700_000_000, 0)}
	if added, err := s.PutTombstone(ctx, tomb); !added || err != nil {
		t.Fatalf("PutTombstone = %v, %v", added, err)
	}
	if err := gone.upload(ctx, s); !errors.Is(err, store.ErrConflict) {
		t.Errorf("upload over a copied tombstone with another NAR: %v, want ErrConflict", err)
	}
	if got, _ := s.Tombstones(ctx); len(got) != 1 || !got[0].Collected.Equal(tomb.Collected) {
		t.Errorf("Tombstones = %+v", got)
	}
	here := newPath(t, "here", []byte("here"))
	if err := here.upload(ctx, s); err != nil {
		t.Fatal(err)
	}
	if added, err := s.PutTombstone(ctx, upload.Tombstone{StorePath: here.info.StorePath, NarHash: tomb.NarHash}); added || err != nil {
		t.Errorf("PutTombstone of a path present = %v, %v; want not added", added, err)
	}
	pin := upload.Pin{StorePath: here.info.StorePath, Note: "host", Owner: "ci", Created: time.Unix(1_700_000_000, 0).UTC()}
	if added, err := s.PutPin(ctx, pin); !added || err != nil {
		t.Fatalf("PutPin = %v, %v", added, err)
	}
	if added, _ := s.PutPin(ctx, upload.Pin{StorePath: here.info.StorePath, Owner: "other"}); added {
		t.Error("PutPin replaced a pin")
	}
	if pins, _ := s.Pins(ctx); len(pins) != 1 || pins[0] != pin {
		t.Errorf("Pins = %+v, want %+v", pins, pin)
	}
	if err := s.UnpinAs(ctx, here.hash, "ci", false); err != nil {
		t.Errorf("the pin's owner cannot remove the copied pin: %v", err)
	}
}
