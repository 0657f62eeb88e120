package upload

import (
	"bytes"
	"container/heap"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/bos55/concordia/internal/kv"
	"github.com/bos55/concordia/pkg/narinfo"
)

// Node is one path as the GC planner sees it.
type Node struct {
	Refs   []string // hash parts of references, self excluded
	Blob   string
	Access int64 // unix seconds
	// Told is when a writer was last told the path exists (unix
	// seconds, 0: never); see Bounds.ToldCutoff.
	Told   int64
	Pinned bool
	// Pulled is a path pulled from an upstream (Adopt): a cache of the
	// upstream's, evicted before any upload whatever refers to it.
	Pulled bool
	// Docs are what else the path keeps (its derivation's build log, its
	// realisations), each freed, like a blob, with the last path that
	// lists it; their sizes are in Plan's blobSize and their counts in
	// blobRefs. They change no deletion decision but the size bound's.
	Docs []string
}

// Plan decides which paths to delete. It deletes, oldest access first,
// only paths that are neither pinned nor referenced (transitively) by a
// pinned path and whose every referrer is deleted before them, so no kept
// path ever loses a reference. It stops when nothing left is older than
// cutoff (0 = no age bound) and the total is within maxSize (0 = no bound).
// blobSize gives each blob's bytes and blobRefs how many paths claim it;
// total is the current size. Exported so the property test can drive it.
//
// Pulled paths (Node.Pulled) are the exception: they go first, oldest
// access first, for as long as the bounds want paths gone, before any
// other path is considered, and a path referring to one does not keep it. A kept upload may so lose a pulled reference, and its
// closure is still complete: the upstream the reference was pulled from
// has it, with its own closure, and pull-through serves it from there
// again (and an upload naming it is checked against that upstream). Only
// a pin keeps a pulled path: a pinned closure is what a host runs, and
// must be served while the upstream is unreachable. Deleting a pulled
// path never deletes a path that refers to it. The other way round, an
// upload a kept pulled path refers to is kept like any referred-to path:
// the upstream should have it too, but nothing here says so.
func Plan(nodes map[string]*Node, blobSize map[string]int64, blobRefs map[string]int, total, maxSize, cutoff int64) (deleted []string, freed int64, freedBlobs []string) {
	deleted, freed, freedBlobs, _ = PlanWith(nodes, blobSize, blobRefs, Bounds{Total: total, MaxSize: maxSize, Cutoff: cutoff})
	return deleted, freed, freedBlobs
}

// Bounds are what PlanWith collects down to.
type Bounds struct {
	Total   int64 // the current size
	MaxSize int64 // 0: no size bound
	Cutoff  int64 // unix seconds; a path last accessed before it is old (0: no age bound)
	// ToldCutoff keeps the paths a writer was told exist at or after it
	// (Node.Told, unix seconds; 0: none kept so), unless the total is
	// over HardMaxSize (0: never): then those go too, oldest access
	// first, until it is within HardMaxSize. It keeps no pulled path: a
	// writer that believes one present names it in an upload, which
	// finds it at the upstream.
	ToldCutoff  int64
	HardMaxSize int64
}

// PlanWith is Plan with the writers' paths kept (Bounds.ToldCutoff); kept
// are those it would have deleted but for that, still kept.
func PlanWith(nodes map[string]*Node, blobSize map[string]int64, blobRefs map[string]int, b Bounds) (deleted []string, freed int64, freedBlobs, kept []string) {
	p := newPlanner(nodes, blobSize, blobRefs, b)
	p.evictPulled()
	kept = p.collect()
	return p.deleted, p.freed, p.freedBlobs, kept
}

// planner is PlanWith's state: what is still referred to and claimed, and
// what is deleted so far.
type planner struct {
	nodes      map[string]*Node
	blobSize   map[string]int64
	b          Bounds
	referrers  map[string]int  // kept paths referring to each path
	protected  map[string]bool // pinned closures
	claims     map[string]int  // kept paths claiming each blob or document
	queue      *byAccess       // uploads no kept path refers to
	deleted    []string
	freed      int64
	freedBlobs []string // blobs and documents whose last claim went
}

func newPlanner(nodes map[string]*Node, blobSize map[string]int64, blobRefs map[string]int, b Bounds) *planner {
	p := &planner{nodes: nodes, blobSize: blobSize, b: b, referrers: map[string]int{}, protected: map[string]bool{},
		claims: map[string]int{}, queue: &byAccess{nodes: nodes}}
	for hp, n := range nodes {
		for _, r := range n.Refs {
			if r != hp && nodes[r] != nil {
				p.referrers[r]++
			}
		}
	}
	var stack []string
	for hp, n := range nodes {
		if n.Pinned {
			stack = append(stack, hp)
		}
	}
	for len(stack) > 0 {
		hp := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if p.protected[hp] || nodes[hp] == nil {
			continue
		}
		p.protected[hp] = true
		stack = append(stack, nodes[hp].Refs...)
	}
	for hp, n := range nodes {
		if !n.Pulled && !p.protected[hp] && p.referrers[hp] == 0 {
			p.queue.hps = append(p.queue.hps, hp)
		}
	}
	heap.Init(p.queue)
	for bl, n := range blobRefs {
		p.claims[bl] = n
	}
	return p
}

// due reports whether the bounds still want a path last accessed at
// access gone: it is old or the total is over the size bound, or, hard,
// the total is over the hard bound.
func (p *planner) due(access int64, hard bool) bool {
	if hard {
		return p.b.Total-p.freed > p.b.HardMaxSize
	}
	old := p.b.Cutoff > 0 && access < p.b.Cutoff
	over := p.b.MaxSize > 0 && p.b.Total-p.freed > p.b.MaxSize
	return old || over
}

// evictPulled deletes the pulled paths outside pinned closures, oldest
// access first, while the bounds want them gone (see Plan).
func (p *planner) evictPulled() {
	h := &byAccess{nodes: p.nodes}
	for hp, n := range p.nodes {
		if n.Pulled && !p.protected[hp] {
			h.hps = append(h.hps, hp)
		}
	}
	heap.Init(h)
	for h.Len() > 0 {
		hp := heap.Pop(h).(string)
		if !p.due(p.nodes[hp].Access, false) {
			return // every pulled path left is newer, the size within bounds
		}
		p.remove(hp)
	}
}

// collect deletes the uploads nothing kept refers to, oldest access
// first, while the bounds want them gone. A path a writer was told exists
// is set aside, not deleted; its references stay referred to. Only past
// the hard bound are those taken up again.
func (p *planner) collect() (kept []string) {
	told := map[string]bool{}
	hard := false
	for {
		for p.queue.Len() > 0 {
			hp := heap.Pop(p.queue).(string)
			n := p.nodes[hp]
			if !p.due(n.Access, hard) {
				break // everything left is newer and the size is within bounds
			}
			if !hard && p.b.ToldCutoff > 0 && n.Told >= p.b.ToldCutoff {
				told[hp] = true
				kept = append(kept, hp)
				continue
			}
			delete(told, hp)
			p.remove(hp)
		}
		if hard || len(kept) == 0 || p.b.HardMaxSize <= 0 || p.b.Total-p.freed <= p.b.HardMaxSize {
			break
		}
		hard = true
		p.queue.hps = append(p.queue.hps[:0], kept...)
		heap.Init(p.queue)
	}
	return slices.DeleteFunc(kept, func(hp string) bool { return !told[hp] })
}

// remove deletes the path hp: the uploads it alone referred to become
// deletable, and its blob and documents are freed with their last claim.
func (p *planner) remove(hp string) {
	n := p.nodes[hp]
	p.deleted = append(p.deleted, hp)
	for _, r := range n.Refs {
		if r == hp || p.nodes[r] == nil {
			continue
		}
		p.referrers[r]--
		if p.referrers[r] == 0 && !p.protected[r] && !p.nodes[r].Pulled {
			heap.Push(p.queue, r)
		}
	}
	for _, bl := range append([]string{n.Blob}, n.Docs...) {
		p.claims[bl]--
		if p.claims[bl] == 0 {
			p.freed += p.blobSize[bl]
			p.freedBlobs = append(p.freedBlobs, bl)
		}
	}
}

type byAccess struct {
	nodes map[string]*Node
	hps   []string
}

func (b *byAccess) Len() int { return len(b.hps) }
func (b *byAccess) Less(i, j int) bool {
	ai, aj := b.nodes[b.hps[i]].Access, b.nodes[b.hps[j]].Access
	if ai != aj {
		return ai < aj
	}
	return b.hps[i] < b.hps[j]
}
func (b *byAccess) Swap(i, j int) { b.hps[i], b.hps[j] = b.hps[j], b.hps[i] }
func (b *byAccess) Push(x any)    { b.hps = append(b.hps, x.(string)) }
func (b *byAccess) Pop() any {
	x := b.hps[len(b.hps)-1]
	b.hps = b.hps[:len(b.hps)-1]
	return x
}

// GC collects with the configured policy (Options.MaxSize, MaxAge).
func (s *Store) GC(ctx context.Context, dryRun bool) (*Report, error) {
	return s.GCWith(ctx, Policy{MaxSize: s.opts.MaxSize, MaxAge: s.opts.MaxAge}, dryRun)
}

// GCWith collects with policy p. Planning and deleting the records happen
// in one write transaction, so an upload cannot add a referrer to a path
// between the decision and the deletion; the files go after the commit.
func (s *Store) GCWith(ctx context.Context, p Policy, dryRun bool) (*Report, error) {
	s.flushAccess()
	rep, err := s.gc(p, dryRun)
	if dryRun {
		return rep, err
	}
	if err == nil {
		rep.Pending, err = s.SweepPending(ctx)
	}
	s.metrics.gcDone(s.now(), err)
	if err != nil {
		return rep, err
	}
	s.metrics.freed.Add(float64(rep.Freed))
	s.log.Info("GC", "deleted", len(rep.Deleted), "freed", rep.Freed, "size", rep.SizeAfter, "pending", rep.Pending,
		"pulled_deleted", rep.PulledDeleted, "kept_for_writers", rep.KeptForWriters)
	return rep, nil
}

// docGrace is how long a build log or realisation that belongs to no
// uploaded path is kept: Nix uploads them after the path's narinfo.
const docGrace = time.Hour

// Keys of the documents in Plan's maps, beside blob names (which never
// hold a slash).
const (
	logDoc  = "log/"
	realDoc = "realisation/"
)

// gcGraph is what gc plans with, read from the index: every path as a
// Node, the blobs' and documents' sizes and claims, and the documents
// that belong to no path and are past their grace period.
type gcGraph struct {
	nodes    map[string]*Node
	paths    map[string]string // hash part -> store path
	blobSize map[string]int64
	blobRefs map[string]int
	derivers map[string][]string // drv base name -> hash parts of its outputs here
	size     int64               // of every blob and document
	orphans  []string
}

func (s *Store) gc(p Policy, dryRun bool) (*Report, error) {
	unlock, err := s.lockFiles()
	if err != nil {
		return nil, mapErr(err)
	}
	defer unlock()
	tx, err := s.db.Begin(!dryRun)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()

	g := &gcGraph{nodes: map[string]*Node{}, paths: map[string]string{}, blobSize: map[string]int64{},
		blobRefs: map[string]int{}, derivers: map[string][]string{}}
	if err := g.readPaths(tx); err != nil {
		return nil, err
	}
	if err := g.readBlobs(tx); err != nil {
		return nil, err
	}
	if err := g.readDocs(tx, s.now().Add(-docGrace).Unix()); err != nil {
		return nil, err
	}
	rep, c := s.plan(g, p, dryRun)
	if rep.TombstonesPruned, err = s.pruneTombs(tx, dryRun); err != nil {
		return nil, err
	}
	if dryRun {
		return rep, nil
	}
	if err := s.deleteCollected(tx, c); err != nil {
		return nil, err
	}
	if err := tx.Commit(); err != nil {
		return nil, mapErr(err)
	}
	s.removeCollected(c)
	return rep, nil
}

// readPaths adds every path of the index to g.
func (g *gcGraph) readPaths(tx kv.Tx) error {
	acc, pins, told := tx.Bucket(bAccess), tx.Bucket(bPins), tx.Bucket(bTold)
	return tx.Bucket(bPaths).ForEach(func(k, v []byte) error {
		var r pathRec
		if err := json.Unmarshal(v, &r); err != nil {
			return fmt.Errorf("index record %s: %w", k, err)
		}
		n := &Node{Blob: r.Blob, Pinned: pins.Get(k) != nil, Pulled: r.Upstream != ""}
		for _, ref := range r.References {
			if h := narinfo.HashPartOf(ref); h != string(k) {
				n.Refs = append(n.Refs, h)
			}
		}
		// A record's registration is its first access and, for an
		// upload, when its writer was told it exists (insert writes no
		// stamps); a stamp older than it is of an earlier record.
		n.Access = r.Registered.Unix()
		if a := acc.Get(k); a != nil {
			n.Access = max(n.Access, parseUnix(a))
		}
		if r.Upstream == "" {
			n.Told = r.Registered.Unix()
		}
		if t := told.Get(k); t != nil {
			n.Told = max(n.Told, parseUnix(t))
		}
		g.nodes[string(k)] = n
		g.paths[string(k)] = r.StorePath
		if r.Deriver != "" {
			g.derivers[r.Deriver] = append(g.derivers[r.Deriver], string(k))
		}
		return nil
	})
}

// readBlobs adds every blob of the index to g.
func (g *gcGraph) readBlobs(tx kv.Tx) error {
	return tx.Bucket(bBlobs).ForEach(func(k, v []byte) error {
		var b blobRec
		if err := json.Unmarshal(v, &b); err != nil {
			return fmt.Errorf("index record %s: %w", k, err)
		}
		g.blobSize[string(k)] = b.FileSize
		g.blobRefs[string(k)] = b.Refs
		g.size += b.FileSize
		return nil
	})
}

// readDocs adds the logs and realisations to g: each kept by the paths it
// belongs to, or, if none, until graceCutoff after its upload.
func (g *gcGraph) readDocs(tx kv.Tx, graceCutoff int64) error {
	attach := func(key string, size, created int64, owners []string) {
		g.size += size
		g.blobSize[key] = size
		for _, hp := range owners {
			if n := g.nodes[hp]; n != nil {
				n.Docs = append(n.Docs, key)
				g.blobRefs[key]++
			}
		}
		if g.blobRefs[key] == 0 && created < graceCutoff {
			g.orphans = append(g.orphans, key)
		}
	}
	err := tx.Bucket(bLogFiles).ForEach(func(k, v []byte) error {
		var l logRec
		if err := json.Unmarshal(v, &l); err != nil {
			return fmt.Errorf("index record of log %s: %w", k, err)
		}
		attach(logDoc+string(k), l.FileSize, l.Created, g.derivers[string(k)])
		return nil
	})
	if err != nil {
		return err
	}
	reals := tx.Bucket(bReal)
	return tx.Bucket(bRealMeta).ForEach(func(k, v []byte) error {
		var m realRec
		if err := json.Unmarshal(v, &m); err != nil {
			return fmt.Errorf("index record of realisation %s: %w", k, err)
		}
		var owners []string
		if m.Owner != "" {
			owners = []string{m.Owner}
		}
		attach(realDoc+string(k), int64(len(reals.Get(k))), m.Created, owners)
		return nil
	})
}

// collected is what a GC deletes, by kind.
type collected struct {
	paths, blobs, logs, realisations []string
}

// plan decides with Plan what g loses under policy p, and reports it.
func (s *Store) plan(g *gcGraph, p Policy, dryRun bool) (*Report, *collected) {
	rep := &Report{DryRun: dryRun, SizeBefore: g.size, PathsBefore: len(g.nodes)}
	var orphanBytes int64
	for _, k := range g.orphans {
		orphanBytes += g.blobSize[k]
	}
	var cutoff int64
	if p.MaxAge > 0 {
		cutoff = s.now().Add(-p.MaxAge).Unix()
	}
	b := Bounds{Total: rep.SizeBefore - orphanBytes, MaxSize: p.MaxSize, Cutoff: cutoff, HardMaxSize: s.opts.HardMaxSize}
	if s.opts.WriterTTL > 0 {
		b.ToldCutoff = s.now().Add(-s.opts.WriterTTL).Unix()
	}
	if b.HardMaxSize == 0 {
		b.HardMaxSize = p.MaxSize + p.MaxSize/2 // none without a size bound
	}
	deleted, freed, freedBlobs, kept := PlanWith(g.nodes, g.blobSize, g.blobRefs, b)
	rep.KeptForWriters = len(kept)
	c := &collected{paths: deleted}
	for _, hp := range deleted {
		rep.Deleted = append(rep.Deleted, g.paths[hp])
		if g.nodes[hp].Pulled {
			rep.PulledDeleted++
		}
	}
	for _, b := range append(freedBlobs, g.orphans...) {
		if k, ok := strings.CutPrefix(b, logDoc); ok {
			c.logs = append(c.logs, k)
		} else if k, ok := strings.CutPrefix(b, realDoc); ok {
			c.realisations = append(c.realisations, k)
		} else {
			c.blobs = append(c.blobs, b)
		}
	}
	rep.Freed, rep.BlobsDeleted = freed+orphanBytes, len(c.blobs)
	rep.LogsDeleted, rep.RealisationsDeleted = len(c.logs), len(c.realisations)
	rep.PathsAfter = len(g.nodes) - len(deleted)
	rep.SizeAfter = rep.SizeBefore - rep.Freed
	rep.Tombstones = len(deleted)
	return rep, c
}

// deleteCollected deletes the records of what c names.
func (s *Store) deleteCollected(tx kv.Tx, c *collected) error {
	for _, hp := range c.paths {
		if err := s.deletePath(tx, hp); err != nil {
			return err
		}
	}
	for _, b := range c.blobs {
		if err := tx.Bucket(bBlobs).Delete([]byte(b)); err != nil {
			return err
		}
	}
	for _, drv := range c.logs {
		if err := tx.Bucket(bLogFiles).Delete([]byte(drv)); err != nil {
			return err
		}
	}
	for _, id := range c.realisations {
		for _, b := range [][]byte{bReal, bRealMeta} {
			if err := tx.Bucket(b).Delete([]byte(id)); err != nil {
				return err
			}
		}
	}
	return nil
}

// removeCollected removes the files of what c names, once their records
// are gone: a file left behind by a failure is only disk space.
func (s *Store) removeCollected(c *collected) {
	if s.delayDeletes(c) {
		return
	}
	for _, b := range c.blobs {
		if err := s.blobs.Remove(bg, b); err != nil {
			s.log.Warn("GC could not remove a NAR file", "blob", b, "err", err)
		}
	}
	for _, drv := range c.logs {
		if err := s.logs.Remove(bg, logName(drv)); err != nil {
			s.log.Warn("GC could not remove a build log file", "drv", drv, "err", err)
		}
	}
}

// SweepPending removes uploaded NAR files no narinfo claimed within the
// grace period, and listings of paths that never arrived.
func (s *Store) SweepPending(ctx context.Context) (int, error) {
	unlock, err := s.lockFiles()
	if err != nil {
		return 0, mapErr(err)
	}
	defer unlock()
	cutoff := s.now().Add(-s.opts.PendingGrace)
	var gone []string
	err = s.db.Update(func(tx kv.Tx) error {
		fresh, expired := s.sweepMemory(tx, cutoff)
		unclaimed, err := sweepUnclaimed(tx, cutoff, fresh)
		if err != nil {
			return err
		}
		gone = append(unclaimed, expired...)
		slices.Sort(gone)
		gone = slices.Compact(gone)
		return sweepListings(tx, cutoff)
	})
	if err != nil {
		return 0, mapErr(err)
	}
	for _, k := range gone {
		s.blobs.Remove(bg, k)
	}
	orphans, err := s.sweepOrphans(ctx, cutoff)
	return len(gone) + orphans, mapErr(err)
}

// sweepMemory drops the in-memory pending blobs a narinfo has claimed
// since (the index has them now) and those past the grace period
// (expired, whose files go). This happens inside the write transaction,
// so a narinfo cannot claim a blob between the check and its removal.
// Should the commit fail, the dropped files stay until the next Open
// removes them as unrecorded. fresh are the pending blobs kept.
func (s *Store) sweepMemory(tx kv.Tx, cutoff time.Time) (fresh map[string]bool, expired []string) {
	blobs := tx.Bucket(bBlobs)
	fresh = map[string]bool{}
	s.pendMu.Lock()
	defer s.pendMu.Unlock()
	for k, b := range s.pending {
		var rec blobRec
		if found, _ := getJSON(blobs, []byte(k), &rec); found && rec.Refs > 0 {
			s.unpendLocked(k)
			continue
		}
		if b.failed() || b.rec.Created.Before(cutoff) {
			s.unpendLocked(k)
			expired = append(expired, k)
			continue
		}
		fresh[k] = true
	}
	return fresh, expired
}

// sweepUnclaimed deletes the index records of blobs no path claims (their
// paths were deleted) older than cutoff, unless a fresh upload of them is
// pending, and returns their names.
func sweepUnclaimed(tx kv.Tx, cutoff time.Time, fresh map[string]bool) ([]string, error) {
	blobs := tx.Bucket(bBlobs)
	var gone []string
	err := blobs.ForEach(func(k, v []byte) error {
		var b blobRec
		if json.Unmarshal(v, &b) == nil && b.Refs == 0 && b.Created.Before(cutoff) && !fresh[string(k)] {
			gone = append(gone, string(k))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, k := range gone {
		if err := blobs.Delete([]byte(k)); err != nil {
			return nil, err
		}
	}
	return gone, nil
}

// sweepListings deletes the listings whose narinfo never came (Nix PUTs
// .ls first) and that are older than cutoff.
func sweepListings(tx kv.Tx, cutoff time.Time) error {
	paths, ls := tx.Bucket(bPaths), tx.Bucket(bListings)
	var stale [][]byte
	err := ls.ForEach(func(k, v []byte) error {
		if paths.Get(k) == nil && (len(v) < 8 || int64(binary.BigEndian.Uint64(v)) < cutoff.Unix()) {
			stale = append(stale, bytes.Clone(k))
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, k := range stale {
		if err := ls.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// Stats is the store's size for metrics and `cache gc`.
type Stats struct {
	Paths   int
	Blobs   int
	Pending int
	// Bytes is what max_size bounds: NAR files (pending ones included),
	// build log files and realisation documents.
	Bytes        int64
	Logs         int
	LogBytes     int64 // of the compressed files
	Realisations int
	// Tombstones are the collected paths whose NAR hash is remembered.
	Tombstones int
}

// Stats counts paths and the bytes GC bounds.
func (s *Store) Stats(ctx context.Context) (Stats, error) {
	var st Stats
	err := s.db.View(func(tx kv.Tx) error {
		st.Paths = tx.Bucket(bPaths).KeyN()
		err := tx.Bucket(bLogFiles).ForEach(func(k, v []byte) error {
			var l logRec
			if json.Unmarshal(v, &l) == nil {
				st.Logs++
				st.LogBytes += l.FileSize
			}
			return nil
		})
		if err != nil {
			return err
		}
		st.Bytes += st.LogBytes
		st.Tombstones = tx.Bucket(bTombs).KeyN()
		err = tx.Bucket(bReal).ForEach(func(k, v []byte) error {
			st.Realisations++
			st.Bytes += int64(len(v))
			return nil
		})
		if err != nil {
			return err
		}
		blobs := tx.Bucket(bBlobs)
		err = blobs.ForEach(func(k, v []byte) error {
			var b blobRec
			if json.Unmarshal(v, &b) == nil {
				st.Blobs++
				st.Bytes += b.FileSize
				if b.Refs == 0 {
					st.Pending++
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		s.pendMu.Lock()
		defer s.pendMu.Unlock()
		for k, b := range s.pending {
			if blobs.Get([]byte(k)) == nil && !b.failed() {
				st.Blobs++
				st.Pending++
				st.Bytes += b.rec.FileSize
			}
		}
		return nil
	})
	return st, err
}

// Paths lists the store paths held, sorted (for `cache verify` output and
// tests).
func (s *Store) Paths(ctx context.Context) ([]string, error) {
	var out []string
	err := s.db.View(func(tx kv.Tx) error {
		return tx.Bucket(bPaths).ForEach(func(k, v []byte) error {
			var r pathRec
			if err := json.Unmarshal(v, &r); err != nil {
				return err
			}
			out = append(out, r.StorePath)
			return nil
		})
	})
	slices.Sort(out)
	return out, err
}
