package upload_test

import (
	"cmp"
	"context"
	"slices"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/store/upload"
)

// TestGCKeepsPathsToldToWriters: a path whose narinfo a writer was told
// exists (its own upload, or a writer's lookup) is kept by GC within
// WriterTTL, with its closure, even past max_size, and the report counts
// it; once the TTL has passed, or the store is past HardMaxSize, it goes.
func TestGCKeepsPathsToldToWriters(t *testing.T) {
	ctx := context.Background()
	const ttl = 30 * 24 * time.Hour
	for _, tc := range []struct {
		name    string
		hard    int64
		advance time.Duration // after the upload, before the GC
		lookup  time.Duration // a writer's lookup this long before the GC (0: none)
		maxSize int64         // of the GC (0: just under the store's size)
		kept    bool
	}{
		{name: "within the TTL", advance: 29 * 24 * time.Hour, kept: true},
		{name: "past the TTL", advance: 31 * 24 * time.Hour},
		{name: "looked up by a writer within the TTL", advance: 40 * 24 * time.Hour, lookup: 24 * time.Hour, kept: true},
		{name: "past the hard bound", hard: 1, advance: time.Hour},
		{name: "past the default hard bound", hard: 0, advance: time.Hour, maxSize: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := newClock()
			s := openStore(t, t.TempDir(), upload.Options{Now: clock.Now, WriterTTL: ttl, HardMaxSize: tc.hard})
			paths := closure(t, "told")
			for _, p := range paths {
				if err := p.upload(ctx, s); err != nil {
					t.Fatal(err)
				}
			}
			top := paths[2]
			if tc.lookup > 0 {
				clock.Advance(tc.advance - tc.lookup)
				s.ToldWriter(top.hash)
				clock.Advance(tc.lookup)
			} else {
				clock.Advance(tc.advance)
			}
			// A max_size just under the store's size: within the hard
			// bound's default (one and a half times it).
			st, _ := s.Stats(ctx)
			maxSize := cmp.Or(tc.maxSize, st.Bytes-1)
			rep, err := s.GCWith(ctx, upload.Policy{MaxSize: maxSize}, false)
			if err != nil {
				t.Fatal(err)
			}
			left, _ := s.Paths(ctx)
			if tc.kept {
				if len(rep.Deleted) != 0 || len(left) != 3 || rep.KeptForWriters != 1 {
					t.Fatalf("GC of paths a writer was told exist: deleted %v, left %v, kept for writers %d (want 1: the top; its closure follows)",
						rep.Deleted, left, rep.KeptForWriters)
				}
				return
			}
			if !slices.Contains(rep.Deleted, top.info.StorePath) || slices.Contains(left, top.info.StorePath) || rep.KeptForWriters != 0 {
				t.Fatalf("GC: deleted %v, left %v, kept for writers %d", rep.Deleted, left, rep.KeptForWriters)
			}
		})
	}
}

// TestGCWriterTTLOffByDefault: without WriterTTL (the zero Options) GC
// keeps nothing for writers, as before.
func TestGCWriterTTLOffByDefault(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir(), upload.Options{})
	p := newPath(t, "untold", []byte("untold"))
	if err := p.upload(ctx, s); err != nil {
		t.Fatal(err)
	}
	rep, err := s.GCWith(ctx, upload.Policy{MaxSize: 1}, false)
	if err != nil || len(rep.Deleted) != 1 || rep.KeptForWriters != 0 {
		t.Fatalf("GC: %+v %v", rep, err)
	}
}

// TestPlanHardBound: past the hard bound, paths kept for writers go oldest
// access first, only until the total is within it.
func TestPlanHardBound(t *testing.T) {
	nodes := map[string]*upload.Node{}
	sizes, refs := map[string]int64{}, map[string]int{}
	for i, hp := range []string{"a", "b", "c", "d"} {
		nodes[hp] = &upload.Node{Blob: hp, Access: int64(i), Told: 100}
		sizes[hp], refs[hp] = 10, 1
	}
	deleted, freed, _, kept := upload.PlanWith(nodes, sizes, refs, upload.Bounds{Total: 40, MaxSize: 5, ToldCutoff: 50, HardMaxSize: 25})
	if !slices.Equal(deleted, []string{"a", "b"}) || freed != 20 || !slices.Equal(kept, []string{"c", "d"}) {
		t.Fatalf("deleted %v freed %d kept %v", deleted, freed, kept)
	}
	deleted, _, _, kept = upload.PlanWith(nodes, sizes, refs, upload.Bounds{Total: 40, MaxSize: 5, ToldCutoff: 50})
	if len(deleted) != 0 || len(kept) != 4 {
		t.Fatalf("no hard bound: deleted %v kept %v", deleted, kept)
	}
	deleted, _, _, kept = upload.PlanWith(nodes, sizes, refs, upload.Bounds{Total: 40, MaxSize: 5, ToldCutoff: 200})
	if len(deleted) != 4 || len(kept) != 0 {
		t.Fatalf("told before the cutoff: deleted %v kept %v", deleted, kept)
	}
}
