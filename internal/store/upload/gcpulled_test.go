package upload_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/upload"
	"github.com/bos55/concordia/pkg/narinfo"
)

// TestPlanEvictsPulledFirst: pulled paths go first, least recently used
// first, whatever refers to them, but for those a pin needs; uploads
// follow; an upload a kept pulled path refers to waits for it.
func TestPlanEvictsPulledFirst(t *testing.T) {
	graph := func() (map[string]*upload.Node, map[string]int64, map[string]int) {
		nodes := map[string]*upload.Node{
			"u1": {Access: 1, Refs: []string{"p1"}},               // an upload of a pulled path's
			"u2": {Access: 0, Refs: []string{"p3"}, Pinned: true}, // a pinned one's
			"u3": {Access: 2},                                     // an upload p4 refers to
			"p1": {Access: 5, Pulled: true, Told: 100},            // writers' protection is not for pulled paths
			"p2": {Access: 3, Pulled: true},
			"p3": {Access: 0, Pulled: true},
			"p4": {Access: 7, Pulled: true, Refs: []string{"u3"}},
		}
		sizes, refs := map[string]int64{}, map[string]int{}
		for hp, n := range nodes {
			n.Blob = "b" + hp
			sizes[n.Blob], refs[n.Blob] = 10, 1
		}
		return nodes, sizes, refs
	}
	for _, tc := range []struct {
		name string
		b    upload.Bounds
		want []string
	}{
		{"one over", upload.Bounds{MaxSize: 65}, []string{"p2"}},
		{"pulled ones are enough", upload.Bounds{MaxSize: 45, ToldCutoff: 50}, []string{"p2", "p1", "p4"}},
		{"then uploads", upload.Bounds{MaxSize: 25}, []string{"p2", "p1", "p4", "u1", "u3"}},
		{"all but the pinned closure", upload.Bounds{MaxSize: 1}, []string{"p2", "p1", "p4", "u1", "u3"}},
		{"by age, the referrer of a kept pulled path kept", upload.Bounds{Cutoff: 4}, []string{"p2", "u1"}},
		{"within bounds", upload.Bounds{MaxSize: 70}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nodes, sizes, refs := graph()
			tc.b.Total = 70
			deleted, freed, _, _ := upload.PlanWith(nodes, sizes, refs, tc.b)
			if !slices.Equal(deleted, tc.want) || freed != int64(10*len(tc.want)) {
				t.Errorf("deleted %v (freed %d); want %v", deleted, freed, tc.want)
			}
		})
	}
}

// pulledStore is a store holding, at increasing access times: a pinned
// upload app with its pulled dependency lib; the pulled paths a, b, c,
// last used in the order b, c, a; an upload user referring to b; and an
// upload loose.
type pulledStore struct {
	s                       *upload.Store
	dir                     string
	clock                   *fakeClock
	lib, app, a, b, c, user *fakePath
	loose                   *fakePath
	pulledLRU               []*fakePath
}

func newPulledStore(t *testing.T) *pulledStore {
	ctx := context.Background()
	key, _, _ := narinfo.GenerateKey("upstream-1")
	x := &pulledStore{dir: t.TempDir(), clock: &fakeClock{now: time.Unix(1_700_000_000, 0)}}
	x.s = openStore(t, x.dir, upload.Options{Now: x.clock.Now})
	x.lib = newPath(t, "pulled-lib", []byte("a library from upstream"))
	x.app = newPath(t, "pinned-app", []byte("the app a host runs"), x.lib.base)
	x.a, x.b, x.c = newPath(t, "pulled-a", []byte("aaaa")), newPath(t, "pulled-b", []byte("bbbb")), newPath(t, "pulled-c", []byte("cccc"))
	x.user = newPath(t, "uses-b", []byte("refers to b"), x.b.base)
	x.loose = newPath(t, "loose", []byte("nobody needs it"))
	for _, p := range []*fakePath{x.lib, x.a, x.b, x.c} {
		if err := adopt(ctx, x.s, p, pulled(t, p, key)); err != nil {
			t.Fatal(err)
		}
		x.clock.Advance(time.Minute)
	}
	for _, p := range []*fakePath{x.app, x.user, x.loose} {
		if err := p.upload(ctx, x.s); err != nil {
			t.Fatal(err)
		}
		x.clock.Advance(time.Minute)
	}
	if err := x.s.Pin(ctx, x.app.info.StorePath, "host"); err != nil {
		t.Fatal(err)
	}
	if _, err := x.s.PathInfo(ctx, x.a.hash); err != nil { // a is now the most recently used
		t.Fatal(err)
	}
	x.pulledLRU = []*fakePath{x.b, x.c, x.a}
	return x
}

func storePaths(ps ...*fakePath) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.info.StorePath)
	}
	return out
}

// TestGCEvictsPulledFirst: over the size bound, the pulled paths go
// first in LRU order, before any upload, but for the pinned closure's;
// a dry run says what the run does.
func TestGCEvictsPulledFirst(t *testing.T) {
	ctx := context.Background()
	x := newPulledStore(t)
	dry, err := x.s.GCWith(ctx, upload.Policy{MaxSize: 1}, true)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := x.s.GCWith(ctx, upload.Policy{MaxSize: 1}, false)
	if err != nil {
		t.Fatal(err)
	}
	want := append(storePaths(x.pulledLRU...), storePaths(x.user, x.loose)...)
	if !slices.Equal(rep.Deleted, want) || rep.PulledDeleted != 3 || rep.Tombstones != 5 {
		t.Errorf("GC deleted %v (%d pulled); want %v", rep.Deleted, rep.PulledDeleted, want)
	}
	// The dry run is the run's report, but for what only the run does
	// (sweep pending uploads).
	dry.DryRun, dry.Pending = false, rep.Pending
	if !reflect.DeepEqual(dry, rep) {
		t.Errorf("dry run %+v, run %+v", dry, rep)
	}
	for _, p := range []*fakePath{x.lib, x.app} {
		if _, err := x.s.PathInfo(ctx, p.hash); err != nil {
			t.Errorf("pinned closure lost %s: %v", p.base, err)
		}
	}
}

// TestGCEvictionKeepsReferrers: evicting a pulled path an upload refers
// to leaves the upload served, through a reopen (recovery checks
// closures), since the upstream has what was evicted.
func TestGCEvictionKeepsReferrers(t *testing.T) {
	ctx := context.Background()
	x := newPulledStore(t)
	st, err := x.s.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := x.s.GCWith(ctx, upload.Policy{MaxSize: st.Bytes - int64(len(x.b.file))}, false)
	if err != nil || !slices.Equal(rep.Deleted, storePaths(x.b)) || rep.PulledDeleted != 1 {
		t.Fatalf("GC = %+v, %v; want only %s", rep, err, x.b.base)
	}
	x.s.Close()
	x.s = openStore(t, x.dir, upload.Options{Now: x.clock.Now})
	for _, p := range []*fakePath{x.user, x.a, x.c, x.loose} {
		if _, err := x.s.PathInfo(ctx, p.hash); err != nil {
			t.Errorf("%s lost with the pulled %s: %v", p.base, x.b.base, err)
		}
	}
}

// TestGCMaxAgeOfPulledPaths: the age bound takes pulled paths by their
// last access like uploads, and never writer_ttl's protection.
func TestGCMaxAgeOfPulledPaths(t *testing.T) {
	ctx := context.Background()
	x := newPulledStore(t)
	x.s.ToldWriter(x.b.hash) // as if a writer's narinfo GET had found it
	x.clock.Advance(time.Hour)
	for _, p := range []*fakePath{x.c, x.user, x.loose} {
		if _, err := x.s.PathInfo(ctx, p.hash); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := x.s.GCWith(ctx, upload.Policy{MaxAge: 30 * time.Minute}, false)
	if err != nil || !slices.Equal(rep.Deleted, storePaths(x.b, x.a)) || rep.KeptForWriters != 0 {
		t.Fatalf("GC = %+v, %v; want %s and %s, the pulled paths unused for an hour", rep, err, x.b.base, x.a.base)
	}
}

// TestRepairOfPulledPath: a damaged pulled NAR drops the pulled path, not
// the upload referring to it: the upstream still has it.
func TestRepairOfPulledPath(t *testing.T) {
	ctx := context.Background()
	x := newPulledStore(t)
	data := readBlob(t, x.dir, x.b.fileName)
	data[len(data)-3] ^= 0x20
	writeBlob(t, x.dir, x.b.fileName, data)
	rep, err := x.s.Verify(ctx, true, nil)
	if err != nil || len(rep.Bad) != 1 || len(rep.Broken) != 0 || !rep.Repaired {
		t.Fatalf("Verify --repair = %+v, %v; want %s bad and nothing broken", rep, err, x.b.fileName)
	}
	if _, err := x.s.PathInfo(ctx, x.b.hash); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("damaged %s still served: %v", x.b.base, err)
	}
	if _, err := x.s.PathInfo(ctx, x.user.hash); err != nil {
		t.Errorf("repair dropped %s, which refers to the pulled %s: %v", x.user.base, x.b.base, err)
	}
	if !strings.Contains(strings.Join(rep.Bad[0].Paths, " "), x.b.base) {
		t.Errorf("bad blob names %v", rep.Bad[0].Paths)
	}
}

// TestPlanPulledProperties: on random DAGs where some paths are pulled,
// pinned closures are kept whole, an upload goes only when no kept path
// refers to it, pulled paths go first and in LRU order, a size bound
// takes every pulled path it can before any upload, and it is met unless
// only undeletable paths remain.
func TestPlanPulledProperties(t *testing.T) {
	for seed := range uint64(300) {
		r := rand.New(rand.NewPCG(seed, 13))
		nodes, sizes, refs, total := randomDAG(r, 1+r.IntN(60))
		for _, n := range nodes {
			n.Pulled = r.IntN(2) == 0
		}
		var maxSize, cutoff int64
		if r.IntN(3) > 0 {
			maxSize = int64(r.IntN(int(total) + 1))
		}
		if r.IntN(3) == 0 {
			cutoff = int64(r.IntN(101))
		}
		deleted, freed, _ := upload.Plan(nodes, sizes, refs, total, maxSize, cutoff)
		kept := map[string]bool{}
		for hp := range nodes {
			kept[hp] = true
		}
		var lastPulled int64 = -1
		uploadGone := false
		for _, hp := range deleted {
			n := nodes[hp]
			if !kept[hp] {
				t.Fatalf("seed %d: %s deleted twice", seed, hp)
			}
			if inPinnedClosure(nodes, hp) {
				t.Fatalf("seed %d: %s is in a pinned closure but deleted", seed, hp)
			}
			if n.Pulled {
				if uploadGone || n.Access < lastPulled {
					t.Fatalf("seed %d: pulled %s (access %d) deleted after an upload or a more recently used pulled path", seed, hp, n.Access)
				}
				lastPulled = n.Access
			} else {
				for other, m := range nodes {
					if other != hp && kept[other] && slices.Contains(m.Refs, hp) {
						t.Fatalf("seed %d: upload %s deleted while %s (kept) refers to it", seed, hp, other)
					}
				}
				uploadGone = true
			}
			delete(kept, hp)
		}
		evictable := func() []string {
			var out []string
			for hp := range kept {
				if nodes[hp].Pulled && !inPinnedClosure(nodes, hp) {
					out = append(out, hp)
				}
			}
			return out
		}
		if maxSize > 0 && cutoff == 0 && uploadGone && len(evictable()) > 0 {
			t.Fatalf("seed %d: an upload deleted for size while pulled %v could go", seed, evictable())
		}
		if maxSize > 0 && total-freed > maxSize && len(evictable()) > 0 {
			t.Fatalf("seed %d: over the size bound but pulled %v kept", seed, evictable())
		}
	}
}
