package upload_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/upload"
)

// randomDAG makes n paths where each may refer to earlier ones (and
// itself), with random sizes and access times; some share a blob.
func randomDAG(r *rand.Rand, n int) (map[string]*upload.Node, map[string]int64, map[string]int, int64) {
	nodes := map[string]*upload.Node{}
	sizes := map[string]int64{}
	refs := map[string]int{}
	var total int64
	var hps []string
	for i := range n {
		hp := fmt.Sprintf("p%03d", i)
		nd := &upload.Node{Access: int64(r.IntN(100)), Pinned: r.IntN(10) == 0}
		for _, prev := range hps {
			if r.IntN(4) == 0 {
				nd.Refs = append(nd.Refs, prev)
			}
		}
		if r.IntN(5) == 0 {
			nd.Refs = append(nd.Refs, hp) // self-reference
		}
		if len(hps) > 0 && r.IntN(8) == 0 {
			nd.Blob = nodes[hps[r.IntN(len(hps))]].Blob // shared blob
		} else {
			nd.Blob = "b" + hp
			sizes[nd.Blob] = int64(1 + r.IntN(1000))
			total += sizes[nd.Blob]
		}
		refs[nd.Blob]++
		nodes[hp] = nd
		hps = append(hps, hp)
	}
	return nodes, sizes, refs, total
}

// addDocs gives some paths documents (a build log shared by the outputs
// of one derivation, a realisation of one path), as GC attaches them, and
// adds their sizes to the total.
func addDocs(r *rand.Rand, nodes map[string]*upload.Node, sizes map[string]int64, refs map[string]int, total *int64) {
	var hps []string
	for hp := range nodes {
		hps = append(hps, hp)
	}
	slices.Sort(hps)
	for i, hp := range hps {
		if r.IntN(3) > 0 {
			continue
		}
		doc := fmt.Sprintf("log/d%03d", i)
		if r.IntN(2) == 0 {
			doc = fmt.Sprintf("realisation/r%03d", i)
		}
		sizes[doc] = int64(1 + r.IntN(500))
		*total += sizes[doc]
		owners := []string{hp}
		if r.IntN(3) == 0 { // another output of the same derivation
			owners = append(owners, hps[r.IntN(len(hps))])
		}
		for _, o := range owners {
			if !slices.Contains(nodes[o].Docs, doc) {
				nodes[o].Docs = append(nodes[o].Docs, doc)
				refs[doc]++
			}
		}
	}
}

// TestPlanNeverBreaksAClosure: on random DAGs with random pins and
// limits, every kept path's references are kept, pinned closures are
// kept, freed bytes are exactly the blobs, logs and realisations no kept
// path uses, and the size bound is met unless only undeletable paths
// remain.
func TestPlanNeverBreaksAClosure(t *testing.T) {
	for seed := range uint64(300) {
		r := rand.New(rand.NewPCG(seed, 7))
		nodes, sizes, refs, total := randomDAG(r, 1+r.IntN(60))
		// Logs and realisations, from their own source of randomness so
		// the graphs and policies are those of the test without them.
		addDocs(rand.New(rand.NewPCG(seed, 11)), nodes, sizes, refs, &total)
		maxSize := int64(0)
		if r.IntN(3) > 0 {
			maxSize = int64(r.IntN(int(total) + 1))
		}
		cutoff := int64(0)
		if r.IntN(3) > 0 {
			cutoff = int64(r.IntN(101))
		}
		deleted, freed, freedBlobs := upload.Plan(nodes, sizes, refs, total, maxSize, cutoff)
		gone := map[string]bool{}
		for _, hp := range deleted {
			if gone[hp] {
				t.Fatalf("seed %d: %s deleted twice", seed, hp)
			}
			gone[hp] = true
		}
		// Closure property, and deletion order: when a path goes, no
		// path still kept at that moment refers to it.
		keptAt := map[string]bool{}
		for hp := range nodes {
			keptAt[hp] = true
		}
		for _, hp := range deleted {
			for other, n := range nodes {
				if other != hp && keptAt[other] && slices.Contains(n.Refs, hp) {
					t.Fatalf("seed %d: %s deleted while %s (kept) refers to it", seed, hp, other)
				}
			}
			delete(keptAt, hp)
		}
		// Pinned closures survive.
		var visit func(hp string)
		visit = func(hp string) {
			if gone[hp] {
				t.Fatalf("seed %d: %s is in a pinned closure but deleted", seed, hp)
			}
			for _, ref := range nodes[hp].Refs {
				if ref != hp {
					visit(ref)
				}
			}
		}
		for hp, n := range nodes {
			if n.Pinned {
				visit(hp)
			}
		}
		// Freed bytes are the blobs nobody kept uses.
		used := map[string]bool{}
		for hp, n := range nodes {
			if !gone[hp] {
				used[n.Blob] = true
				for _, d := range n.Docs {
					used[d] = true
				}
			}
		}
		var want int64
		var wantBlobs []string
		for b, sz := range sizes {
			if !used[b] {
				want += sz
				wantBlobs = append(wantBlobs, b)
			}
		}
		slices.Sort(wantBlobs)
		fb := slices.Clone(freedBlobs)
		slices.Sort(fb)
		if freed != want || !slices.Equal(fb, wantBlobs) {
			t.Fatalf("seed %d: freed %d %v, want %d %v", seed, freed, fb, want, wantBlobs)
		}
		// Nothing is deleted needlessly: each deletion was old or
		// needed for size at its time (checked by the planner's own
		// stopping rule), so with no bounds nothing goes.
		if maxSize == 0 && cutoff == 0 && len(deleted) > 0 {
			t.Fatalf("seed %d: deleted %v with no policy", seed, deleted)
		}
		// Size bound met, or every remaining deletable path is gone.
		if maxSize > 0 && total-freed > maxSize {
			for hp, n := range nodes {
				if gone[hp] || n.Pinned {
					continue
				}
				referred := false
				for other, m := range nodes {
					if other != hp && !gone[other] && slices.Contains(m.Refs, hp) {
						referred = true
					}
				}
				if !referred && !inPinnedClosure(nodes, hp) {
					t.Fatalf("seed %d: over the size bound but %s could still go", seed, hp)
				}
			}
		}
		// The age bound: anything older than cutoff that could go went.
		for hp, n := range nodes {
			if cutoff > 0 && !gone[hp] && n.Access < cutoff && !n.Pinned && !inPinnedClosure(nodes, hp) {
				referred := false
				for other, m := range nodes {
					if other != hp && !gone[other] && slices.Contains(m.Refs, hp) {
						referred = true
					}
				}
				if !referred {
					t.Fatalf("seed %d: %s older than the cutoff, unreferenced, but kept", seed, hp)
				}
			}
		}
	}
}

func inPinnedClosure(nodes map[string]*upload.Node, target string) bool {
	seen := map[string]bool{}
	var walk func(hp string) bool
	walk = func(hp string) bool {
		if hp == target {
			return true
		}
		if seen[hp] {
			return false
		}
		seen[hp] = true
		for _, r := range nodes[hp].Refs {
			if r != hp && walk(r) {
				return true
			}
		}
		return false
	}
	for hp, n := range nodes {
		if n.Pinned && walk(hp) {
			return true
		}
	}
	return false
}

// TestGCStore: GC on a real store: dry run changes nothing, the size
// policy deletes the oldest unpinned closure only, blobs go with it, and
// the kept closure is complete and served.
func TestGCStore(t *testing.T) {
	ctx := context.Background()
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	advance := clock.Advance
	dir := t.TempDir()
	s := openStore(t, dir, upload.Options{Now: clock.Now, InlineMax: -1})
	old := closure(t, "gc-old")
	pinned := closure(t, "gc-pinned")
	fresh := closure(t, "gc-fresh")
	for _, set := range [][]*fakePath{old, pinned, fresh} {
		for _, p := range set {
			if err := p.upload(ctx, s); err != nil {
				t.Fatal(err)
			}
		}
		advance(time.Hour)
	}
	if err := s.Pin(ctx, pinned[2].info.StorePath, "host"); err != nil {
		t.Fatal(err)
	}
	st, _ := s.Stats(ctx)
	rep, err := s.GCWith(ctx, upload.Policy{MaxSize: 1}, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Deleted) != 6 || !rep.DryRun {
		t.Fatalf("dry run would delete %v", rep.Deleted)
	}
	if st2, _ := s.Stats(ctx); st2 != st {
		t.Fatalf("dry run changed the store: %+v -> %+v", st, st2)
	}
	// Free exactly the old closure's bytes: least recently used first.
	var oldSize int64
	for _, p := range old {
		oldSize += int64(len(p.file))
	}
	rep, err = s.GCWith(ctx, upload.Policy{MaxSize: st.Bytes - oldSize}, false)
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(rep.Deleted, " ")
	if len(rep.Deleted) != 3 {
		t.Errorf("deleted %v, want the old closure", rep.Deleted)
	}
	for _, p := range old {
		if !strings.Contains(got, p.base) {
			t.Errorf("%s not deleted (deleted %v)", p.base, rep.Deleted)
		}
	}
	if rep.Freed != oldSize || rep.SizeAfter != st.Bytes-oldSize {
		t.Fatalf("report %+v", rep)
	}
	for _, p := range append(pinned, fresh...) {
		if b, err := narOf(t, s, p.hash); err != nil || !bytes.Equal(b, p.nar) {
			t.Fatalf("%s not served after GC: %v", p.base, err)
		}
	}
	// Age policy: everything not pinned and older than 30 minutes goes.
	advance(2 * time.Hour)
	if _, err := s.PathInfo(ctx, fresh[2].hash); err != nil { // access keeps fresh top...
		t.Fatal(err)
	}
	rep, err = s.GCWith(ctx, upload.Policy{MaxAge: 30 * time.Minute}, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range fresh {
		if _, err := s.PathInfo(ctx, p.hash); err != nil {
			t.Fatalf("%s (in the closure of a recently used path) deleted: %v", p.base, err)
		}
	}
	for _, p := range old {
		if _, err := s.PathInfo(ctx, p.hash); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("%s survived the age policy", p.base)
		}
	}
	for _, p := range pinned {
		if _, err := s.PathInfo(ctx, p.hash); err != nil {
			t.Fatalf("pinned %s deleted", p.base)
		}
	}
	if files := blobFiles(t, dir); len(files) != 6 {
		t.Fatalf("blob files after GC: %v", files)
	}
	if rep, _ := s.Verify(ctx, false, nil); len(rep.Bad) != 0 || rep.Checked != 6 {
		t.Fatalf("verify after GC: %+v", rep)
	}
}

// TestPeriodicGC: with GCInterval set, the store collects on its own.
func TestPeriodicGC(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir(), upload.Options{MaxSize: 1, GCInterval: 20 * time.Millisecond})
	p := newPath(t, "periodic", []byte("periodic"))
	if err := p.upload(ctx, s); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := s.PathInfo(ctx, p.hash); errors.Is(err, store.ErrNotFound) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("periodic GC never collected an over-size store")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// withDeriver makes p's narinfo name drv as its Deriver.
func withDeriver(p *fakePath, drv string) *fakePath {
	p.info.Deriver = drv
	return p
}

// TestGCCollectsLogsAndRealisations: a build log goes with the last
// path whose Deriver it belongs to, a realisation with the path it names;
// those of kept and pinned paths stay; one that belongs to no path stays
// for the grace period and then goes; logs count in max_size, so a store
// whose logs are over it is collected down. Stats count them.
func TestGCCollectsLogsAndRealisations(t *testing.T) {
	ctx := context.Background()
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	dir := t.TempDir()
	s := openStore(t, dir, upload.Options{Now: clock.Now})
	drvOf := func(tag string) string { return hashPart("drv-"+tag) + "-" + tag + ".drv" }
	// Two outputs of one derivation, a pinned path, a lone old path.
	out := withDeriver(newPath(t, "docs-out", []byte("out")), drvOf("multi"))
	dev := withDeriver(newPath(t, "docs-dev", []byte("dev")), drvOf("multi"))
	pinned := withDeriver(newPath(t, "docs-pinned", []byte("pinned")), drvOf("pinned"))
	old := withDeriver(newPath(t, "docs-old", []byte("old")), drvOf("old"))
	for _, p := range []*fakePath{old, out, dev, pinned} {
		if err := p.upload(ctx, s); err != nil {
			t.Fatal(err)
		}
		clock.Advance(time.Minute)
	}
	if err := s.Pin(ctx, pinned.info.StorePath, "host"); err != nil {
		t.Fatal(err)
	}
	real := func(p *fakePath) string {
		return `{"dependentRealisations":{},"id":"x","outPath":"` + p.base + `","signatures":[]}`
	}
	logs := map[string]string{}
	for _, tag := range []string{"multi", "pinned", "old", "orphan"} {
		logs[drvOf(tag)] = strings.Repeat("log of "+tag+"\n", 1000)
		if err := s.PutLog(ctx, drvOf(tag), strings.NewReader(logs[drvOf(tag)])); err != nil {
			t.Fatal(err)
		}
	}
	idOf := func(p *fakePath) string { return "sha256:" + strings.Repeat("0", 32) + p.hash + "!out" }
	for _, p := range []*fakePath{old, out, pinned} {
		if err := s.PutRealisation(ctx, idOf(p), strings.NewReader(real(p))); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.PutBuildTrace(ctx, drvOf("old"), "out", strings.NewReader(real(old))); err != nil {
		t.Fatal(err)
	}
	st, _ := s.Stats(ctx)
	if st.Logs != 4 || st.Realisations != 4 || st.LogBytes == 0 || st.Bytes < st.LogBytes {
		t.Fatalf("stats %+v", st)
	}
	hasLog := func(drv string) bool {
		r, _, err := s.BuildLog(ctx, drv)
		if err == nil {
			r.Close()
		}
		return err == nil
	}
	hasReal := func(id string) bool { _, err := s.Realisation(ctx, id); return err == nil }

	// Within the grace period the orphan log stays; old goes by age,
	// with its log, realisation and build-trace entry.
	clock.Advance(30 * time.Minute)
	rep, err := s.GCWith(ctx, upload.Policy{MaxAge: 33 * time.Minute}, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Deleted) != 1 || rep.Deleted[0] != old.info.StorePath || rep.LogsDeleted != 1 || rep.RealisationsDeleted != 2 {
		t.Fatalf("GC by age: %+v", rep)
	}
	if hasLog(drvOf("old")) || hasReal(idOf(old)) || hasReal(drvOf("old")+"!out") {
		t.Fatal("the collected path's log or realisations survived")
	}
	for _, drv := range []string{drvOf("multi"), drvOf("pinned"), drvOf("orphan")} {
		if !hasLog(drv) {
			t.Fatalf("log %s collected too early", drv)
		}
	}
	// One output of the derivation goes: its log stays with the other.
	if err := s.Pin(ctx, dev.info.StorePath, "keep dev"); err != nil {
		t.Fatal(err)
	}
	clock.Advance(2 * time.Hour) // past the grace period
	rep, err = s.GCWith(ctx, upload.Policy{MaxAge: time.Minute}, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Deleted) != 1 || rep.Deleted[0] != out.info.StorePath || rep.LogsDeleted != 1 || rep.RealisationsDeleted != 1 {
		t.Fatalf("GC of one output: %+v", rep)
	}
	if !hasLog(drvOf("multi")) || hasLog(drvOf("orphan")) || hasReal(idOf(out)) {
		t.Fatal("the shared log went with one output, or the orphan log stayed past the grace period")
	}
	if !hasLog(drvOf("pinned")) || !hasReal(idOf(pinned)) {
		t.Fatal("the pinned path's log or realisation was collected")
	}
	if files := logFiles(t, dir); len(files) != 2 {
		t.Fatalf("log files after GC: %v", files)
	}
	if err := s.Unpin(ctx, dev.info.StorePath); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GCWith(ctx, upload.Policy{MaxAge: time.Minute}, false); err != nil {
		t.Fatal(err)
	}
	if hasLog(drvOf("multi")) {
		t.Fatal("the log outlived both outputs")
	}
	st, _ = s.Stats(ctx)
	if st.Logs != 1 || st.Realisations != 1 || st.Paths != 1 {
		t.Fatalf("stats after GC %+v", st)
	}
}

// TestGCCountsLogsInMaxSize: small paths with big logs: max_size counts
// the logs, so GC collects paths (least recently used first) with their
// logs until the store is within it.
func TestGCCountsLogsInMaxSize(t *testing.T) {
	ctx := context.Background()
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	dir := t.TempDir()
	s := openStore(t, dir, upload.Options{Now: clock.Now})
	r := rand.New(rand.NewPCG(3, 4))
	var ps []*fakePath
	for i := range 4 {
		drv := hashPart(fmt.Sprint("big-log-drv", i)) + "-big.drv"
		p := withDeriver(newPath(t, fmt.Sprint("big-log-", i), []byte{byte(i)}), drv)
		if err := p.upload(ctx, s); err != nil {
			t.Fatal(err)
		}
		noise := make([]byte, 1<<20) // incompressible: the file is the log's size
		for j := range noise {
			noise[j] = byte(r.Uint32())
		}
		if err := s.PutLog(ctx, drv, bytes.NewReader(noise)); err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
		clock.Advance(time.Minute)
	}
	st, _ := s.Stats(ctx)
	if st.Bytes < 4<<20 {
		t.Fatalf("stats %+v: the logs are not counted", st)
	}
	rep, err := s.GCWith(ctx, upload.Policy{MaxSize: 5 << 19}, false) // 2.5 MiB
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Deleted) != 2 || rep.LogsDeleted != 2 || rep.SizeAfter > 5<<19 || rep.Freed < 2<<20 {
		t.Fatalf("GC by size: %+v", rep)
	}
	for i, p := range ps {
		_, err := s.PathInfo(ctx, p.hash)
		if kept := err == nil; kept != (i >= 2) {
			t.Fatalf("path %d kept=%v: the oldest must go first", i, kept)
		}
	}
	if st, _ := s.Stats(ctx); st.Bytes != rep.SizeAfter || st.Logs != 2 {
		t.Fatalf("stats %+v after a GC that reported %d bytes", st, rep.SizeAfter)
	}
}
