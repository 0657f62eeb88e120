package upload_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/upload"
)

// TestCollectedPathKeepsItsNAR: after GC deletes a path, an upload of the
// same store path with another NAR, other references or another name for
// its hash part is ErrConflict naming both NAR hashes and the date it was
// collected, and stores nothing; the same NAR comes back (and the
// tombstone goes); after Forget, another NAR is accepted. The tombstone
// expires after Options.Remember and GC prunes it. Stats count them.
func TestCollectedPathKeepsItsNAR(t *testing.T) {
	ctx := context.Background()
	clock := &fakeClock{now: time.Date(2026, 3, 14, 9, 26, 53, 0, time.UTC)}
	s := openStore(t, t.TempDir(), upload.Options{Now: clock.Now, Remember: 90 * 24 * time.Hour})
	orig := newPath(t, "tomb-leaf", []byte("the real leaf"))
	evil := newPath(t, "tomb-leaf", []byte("a swapped leaf"))
	dep := newPath(t, "tomb-dep", []byte("dep"))
	moreRefs := newPath(t, "tomb-leaf", []byte("the real leaf"), dep.base)
	renamed := newPath(t, "tomb-leaf", []byte("the real leaf"))
	renamed.info.StorePath = "/nix/store/" + orig.hash + "-tomb-other-name"
	for _, p := range []*fakePath{orig, dep} {
		if err := p.upload(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	gc := func() *upload.Report {
		t.Helper()
		clock.Advance(time.Hour)
		rep, err := s.GCWith(ctx, upload.Policy{MaxAge: time.Minute}, false)
		if err != nil {
			t.Fatal(err)
		}
		return rep
	}
	if rep := gc(); len(rep.Deleted) != 2 || rep.Tombstones != 2 {
		t.Fatalf("GC: %+v", rep)
	}
	if st, _ := s.Stats(ctx); st.Tombstones != 2 || st.Paths != 0 {
		t.Fatalf("stats %+v", st)
	}
	if err := dep.upload(ctx, s); err != nil { // for moreRefs' reference
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		attack *fakePath
		say    []string
	}{
		{"other NAR", evil, []string{orig.info.NarHash.String(), evil.info.NarHash.String(), "2026-03-14 10:26", "cache forget " + orig.info.StorePath}},
		{"other references", moreRefs, []string{orig.info.NarHash.String(), dep.base}},
		{"other name", renamed, []string{orig.info.StorePath, renamed.info.StorePath}},
	} {
		err := tc.attack.upload(ctx, s)
		if !errors.Is(err, store.ErrConflict) {
			t.Fatalf("%s: %v, want ErrConflict", tc.name, err)
		}
		for _, want := range tc.say {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%s: %q does not say %q", tc.name, err, want)
			}
		}
		if _, err := s.PathInfo(ctx, orig.hash); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("%s: the refused upload is served: %v", tc.name, err)
		}
	}
	// The same NAR again is welcome, and no longer needs a tombstone.
	if err := orig.upload(ctx, s); err != nil {
		t.Fatalf("the collected path itself again: %v", err)
	}
	if st, _ := s.Stats(ctx); st.Tombstones != 0 {
		t.Fatalf("tombstones after both came back: %+v", st)
	}
	if _, err := s.Forget(ctx, orig.info.StorePath); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("forget a path the cache has: %v", err)
	}
	gc()
	if err := evil.upload(ctx, s); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("after a second GC: %v", err)
	}
	if got, err := s.Forget(ctx, orig.hash); err != nil || got != orig.info.StorePath {
		t.Fatalf("forget: %q %v", got, err)
	}
	if _, err := s.Forget(ctx, orig.hash); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("second forget: %v", err)
	}
	if err := evil.upload(ctx, s); err != nil {
		t.Fatalf("another NAR after forget: %v", err)
	}
	if b, err := narOf(t, s, orig.hash); err != nil || string(b) != string(evil.nar) {
		t.Fatalf("served after forget: %v", err)
	}
	// Expiry: remembered for 90 days, then pruned by GC and not enforced.
	gc()
	clock.Advance(91 * 24 * time.Hour)
	if err := orig.upload(ctx, s); err != nil {
		t.Fatalf("another NAR after gc.remember: %v", err)
	}
	gc()
	clock.Advance(91 * 24 * time.Hour)
	if rep := gc(); rep.TombstonesPruned == 0 {
		t.Fatalf("expired tombstones not pruned: %+v", rep)
	}
	if st, _ := s.Stats(ctx); st.Tombstones != 0 {
		t.Fatalf("stats after pruning %+v", st)
	}
}
