package upload

import (
	"bytes"
	"container/heap"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	bolt "go.etcd.io/bbolt"

	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/pkg/narinfo"
)

// Node is one path as the GC planner sees it.
type Node struct {
	Refs   []string // hash parts of references, self excluded
	Blob   string
	Access int64 // unix seconds
	Pinned bool
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
func Plan(nodes map[string]*Node, blobSize map[string]int64, blobRefs map[string]int, total, maxSize, cutoff int64) (deleted []string, freed int64, freedBlobs []string) {
	referrers := map[string]int{}
	for hp, n := range nodes {
		for _, r := range n.Refs {
			if r != hp && nodes[r] != nil {
				referrers[r]++
			}
		}
	}
	protected := map[string]bool{}
	var stack []string
	for hp, n := range nodes {
		if n.Pinned {
			stack = append(stack, hp)
		}
	}
	for len(stack) > 0 {
		hp := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if protected[hp] || nodes[hp] == nil {
			continue
		}
		protected[hp] = true
		stack = append(stack, nodes[hp].Refs...)
	}
	h := &byAccess{nodes: nodes}
	for hp := range nodes {
		if !protected[hp] && referrers[hp] == 0 {
			h.hps = append(h.hps, hp)
		}
	}
	heap.Init(h)
	refs := map[string]int{}
	for b, n := range blobRefs {
		refs[b] = n
	}
	for h.Len() > 0 {
		hp := heap.Pop(h).(string)
		n := nodes[hp]
		old := cutoff > 0 && n.Access < cutoff
		over := maxSize > 0 && total-freed > maxSize
		if !old && !over {
			break // everything left is newer and the size is within bounds
		}
		deleted = append(deleted, hp)
		for _, r := range n.Refs {
			if r == hp || nodes[r] == nil {
				continue
			}
			referrers[r]--
			if referrers[r] == 0 && !protected[r] {
				heap.Push(h, r)
			}
		}
		for _, b := range append([]string{n.Blob}, n.Docs...) {
			refs[b]--
			if refs[b] == 0 {
				freed += blobSize[b]
				freedBlobs = append(freedBlobs, b)
			}
		}
	}
	return deleted, freed, freedBlobs
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
	if err != nil || dryRun {
		return rep, err
	}
	rep.Pending, err = s.SweepPending(ctx)
	if err != nil {
		return rep, err
	}
	s.metrics.gcRuns.Inc()
	s.metrics.freed.Add(float64(rep.Freed))
	s.log.Info("GC", "deleted", len(rep.Deleted), "freed", rep.Freed, "size", rep.SizeAfter, "pending", rep.Pending)
	return rep, nil
}

// Keys of the documents in Plan's maps, beside blob names (which never
// hold a slash).
const (
	logDoc  = "log/"
	realDoc = "realisation/"
)

func (s *Store) gc(p Policy, dryRun bool) (*Report, error) {
	s.fileMu.Lock()
	defer s.fileMu.Unlock()
	tx, err := s.db.Begin(!dryRun)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()

	rep := &Report{DryRun: dryRun}
	nodes := map[string]*Node{}
	paths := map[string]string{}
	blobSize := map[string]int64{}
	blobRefs := map[string]int{}
	derivers := map[string][]string{} // drv base name -> hash parts of its outputs here
	acc, pins := tx.Bucket(bAccess), tx.Bucket(bPins)
	err = tx.Bucket(bPaths).ForEach(func(k, v []byte) error {
		var r pathRec
		if err := json.Unmarshal(v, &r); err != nil {
			return fmt.Errorf("index record %s: %w", k, err)
		}
		n := &Node{Blob: r.Blob, Pinned: pins.Get(k) != nil}
		for _, ref := range r.References {
			if h := hashOf(ref); h != string(k) {
				n.Refs = append(n.Refs, h)
			}
		}
		if a := acc.Get(k); a != nil {
			n.Access = parseUnix(a)
		} else {
			n.Access = r.Registered.Unix()
		}
		nodes[string(k)] = n
		paths[string(k)] = r.StorePath
		if r.Deriver != "" {
			derivers[r.Deriver] = append(derivers[r.Deriver], string(k))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = tx.Bucket(bBlobs).ForEach(func(k, v []byte) error {
		var b blobRec
		if err := json.Unmarshal(v, &b); err != nil {
			return fmt.Errorf("index record %s: %w", k, err)
		}
		blobSize[string(k)] = b.FileSize
		blobRefs[string(k)] = b.Refs
		rep.SizeBefore += b.FileSize
		return nil
	})
	if err != nil {
		return nil, err
	}
	// Logs and realisations: each kept by the paths it belongs to, or, if
	// none, for the grace period after its upload.
	graceCutoff := s.now().Add(-s.opts.PendingGrace).Unix()
	var orphans []string
	attach := func(key string, size, created int64, owners []string) {
		rep.SizeBefore += size
		blobSize[key] = size
		for _, hp := range owners {
			if n := nodes[hp]; n != nil {
				n.Docs = append(n.Docs, key)
				blobRefs[key]++
			}
		}
		if blobRefs[key] == 0 && created < graceCutoff {
			orphans = append(orphans, key)
		}
	}
	err = tx.Bucket(bLogFiles).ForEach(func(k, v []byte) error {
		var l logRec
		if err := json.Unmarshal(v, &l); err != nil {
			return fmt.Errorf("index record of log %s: %w", k, err)
		}
		attach(logDoc+string(k), l.FileSize, l.Created, derivers[string(k)])
		return nil
	})
	if err != nil {
		return nil, err
	}
	reals := tx.Bucket(bReal)
	err = tx.Bucket(bRealMeta).ForEach(func(k, v []byte) error {
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
	if err != nil {
		return nil, err
	}
	var orphanBytes int64
	for _, k := range orphans {
		orphanBytes += blobSize[k]
	}

	rep.PathsBefore = len(nodes)
	var cutoff int64
	if p.MaxAge > 0 {
		cutoff = s.now().Add(-p.MaxAge).Unix()
	}
	deleted, freed, freedBlobs := Plan(nodes, blobSize, blobRefs, rep.SizeBefore-orphanBytes, p.MaxSize, cutoff)
	for _, hp := range deleted {
		rep.Deleted = append(rep.Deleted, paths[hp])
	}
	var blobs, logs, realisations []string
	for _, b := range append(freedBlobs, orphans...) {
		if k, ok := strings.CutPrefix(b, logDoc); ok {
			logs = append(logs, k)
		} else if k, ok := strings.CutPrefix(b, realDoc); ok {
			realisations = append(realisations, k)
		} else {
			blobs = append(blobs, b)
		}
	}
	rep.Freed, rep.BlobsDeleted = freed+orphanBytes, len(blobs)
	rep.LogsDeleted, rep.RealisationsDeleted = len(logs), len(realisations)
	rep.PathsAfter = len(nodes) - len(deleted)
	rep.SizeAfter = rep.SizeBefore - rep.Freed
	rep.Tombstones = len(deleted)
	if rep.TombstonesPruned, err = s.pruneTombs(tx, dryRun); err != nil {
		return nil, err
	}
	if dryRun {
		return rep, nil
	}
	for _, hp := range deleted {
		if err := s.deletePath(tx, hp); err != nil {
			return nil, err
		}
	}
	for _, b := range blobs {
		if err := tx.Bucket(bBlobs).Delete([]byte(b)); err != nil {
			return nil, err
		}
	}
	for _, drv := range logs {
		if err := tx.Bucket(bLogFiles).Delete([]byte(drv)); err != nil {
			return nil, err
		}
	}
	for _, id := range realisations {
		for _, b := range [][]byte{bReal, bRealMeta} {
			if err := tx.Bucket(b).Delete([]byte(id)); err != nil {
				return nil, err
			}
		}
	}
	if err := tx.Commit(); err != nil {
		return nil, mapErr(err)
	}
	for _, b := range blobs {
		if err := os.Remove(filepath.Join(s.blobDir, b)); err != nil && !os.IsNotExist(err) {
			s.log.Warn("GC could not remove a NAR file", "blob", b, "err", err)
		}
	}
	for _, drv := range logs {
		if err := os.Remove(s.logPath(drv)); err != nil && !os.IsNotExist(err) {
			s.log.Warn("GC could not remove a build log file", "drv", drv, "err", err)
		}
	}
	return rep, nil
}

// SweepPending removes uploaded NAR files no narinfo claimed within the
// grace period, and listings of paths that never arrived.
func (s *Store) SweepPending(ctx context.Context) (int, error) {
	s.fileMu.Lock()
	defer s.fileMu.Unlock()
	cutoff := s.now().Add(-s.opts.PendingGrace)
	var gone []string
	err := s.db.Update(func(tx *bolt.Tx) error {
		blobs := tx.Bucket(bBlobs)
		// In-memory pending blobs: drop those a narinfo has claimed
		// since (the index has them now) and those past the grace
		// period. This happens inside the write transaction, so a
		// narinfo cannot claim a blob between the check and its
		// removal. Should the commit fail, the dropped files stay
		// until the next Open removes them as unrecorded.
		fresh := map[string]bool{}
		var expired []string
		s.pendMu.Lock()
		for k, b := range s.pending {
			var rec blobRec
			if found, _ := getJSON(blobs, []byte(k), &rec); found && rec.Refs > 0 {
				delete(s.pending, k)
				continue
			}
			if b.failed() || b.rec.Created.Before(cutoff) {
				delete(s.pending, k)
				expired = append(expired, k)
				continue
			}
			fresh[k] = true
		}
		s.pendMu.Unlock()
		var gone0 []string
		err := blobs.ForEach(func(k, v []byte) error {
			var b blobRec
			if json.Unmarshal(v, &b) == nil && b.Refs == 0 && b.Created.Before(cutoff) && !fresh[string(k)] {
				gone0 = append(gone0, string(k))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range gone0 {
			if err := blobs.Delete([]byte(k)); err != nil {
				return err
			}
		}
		gone = append(gone0, expired...)
		slices.Sort(gone)
		gone = slices.Compact(gone)
		// Listings whose narinfo never came (Nix PUTs .ls first).
		paths, ls := tx.Bucket(bPaths), tx.Bucket(bListings)
		var stale [][]byte
		err = ls.ForEach(func(k, v []byte) error {
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
	})
	if err != nil {
		return 0, mapErr(err)
	}
	for _, k := range gone {
		os.Remove(filepath.Join(s.blobDir, k))
	}
	return len(gone), nil
}

// Pin makes a path (and so its closure) a GC root. pathOrHash is a full
// store path or a bare hash part (the HTTP pin API names paths by hash).
// The path need not be uploaded yet: an operator may pin a system before
// pushing it (over HTTP only an admin may, see the server's pin route).
// The pin has no owner (see PinAs).
func (s *Store) Pin(ctx context.Context, pathOrHash, note string) error {
	_, err := s.PinAs(ctx, pathOrHash, note, "")
	return err
}

// PinAs pins like Pin, recording owner. A path pinned already under
// another owner keeps that pin unchanged (it is pinned, which is what the
// caller wants, and a pin must not change hands: its new owner could
// unpin it); existing reports that. The same owner pinning again
// refreshes the note and time.
func (s *Store) PinAs(ctx context.Context, pathOrHash, note, owner string) (existing *Pin, err error) {
	return s.PinWith(ctx, pathOrHash, note, owner, 0)
}

// PinWith is PinAs for an owner that may hold at most maxPins pins (0: no
// bound): a new pin past that is ErrTooManyPins and changes nothing, in
// the same transaction as the count. Re-pinning one of its own paths, or
// one another owner pinned, makes no new pin and is never refused.
func (s *Store) PinWith(ctx context.Context, pathOrHash, note, owner string, maxPins int) (existing *Pin, err error) {
	hp, storePath := pathOrHash, ""
	if strings.Contains(pathOrHash, "/") {
		dir, h, _, err := narinfo.ParseStorePath(pathOrHash)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", store.ErrInvalid, err)
		}
		if dir != s.storeDir {
			return nil, invalidf("%s is not in %s", pathOrHash, s.storeDir)
		}
		hp, storePath = h, pathOrHash
	}
	if !narinfo.ValidHashPart(hp) {
		return nil, invalidf("%q is neither a store path nor a hash part", pathOrHash)
	}
	if len(note) > 1024 {
		return nil, invalidf("pin note longer than 1024 bytes")
	}
	err = mapErr(s.db.Update(func(tx *bolt.Tx) error {
		if data := tx.Bucket(bPins).Get([]byte(hp)); data != nil {
			// A record that does not parse belongs to nobody (admin only).
			var old Pin
			_ = json.Unmarshal(data, &old)
			if old.Owner != owner || old.StorePath == "" {
				existing = &old
				return nil
			}
		}
		if maxPins > 0 && tx.Bucket(bPins).Get([]byte(hp)) == nil {
			n := 0
			err := tx.Bucket(bPins).ForEach(func(_, v []byte) error {
				var p Pin
				if json.Unmarshal(v, &p) == nil && p.Owner == owner {
					n++
				}
				return nil
			})
			if err != nil {
				return err
			}
			if n >= maxPins {
				return fmt.Errorf("%w: token %q holds %d pins, the most one token may (limits.max_pins_per_token = %d): unpin systems no host runs any more",
					ErrTooManyPins, owner, n, maxPins)
			}
		}
		if storePath == "" {
			storePath = storePathOf(tx, hp) // the hash when not uploaded yet
		}
		return putJSON(tx.Bucket(bPins), []byte(hp), Pin{StorePath: storePath, Note: note, Owner: owner, Created: s.now().UTC()})
	}))
	return existing, err
}

// Unpin removes the pin of a store path (or bare hash part), whoever made
// it. ErrNotFound when there was none.
func (s *Store) Unpin(ctx context.Context, pathOrHash string) error {
	return s.UnpinAs(ctx, pathOrHash, "", true)
}

// UnpinAs removes a pin if owner made it, or any pin when anyOwner (an
// admin). ErrNotFound when there was none, ErrNotOwner when another token
// made it; either way nothing changes. The check and the removal are one
// transaction.
func (s *Store) UnpinAs(ctx context.Context, pathOrHash, owner string, anyOwner bool) error {
	hp := pathOrHash
	if strings.Contains(pathOrHash, "/") {
		_, h, _, err := narinfo.ParseStorePath(pathOrHash)
		if err != nil {
			return fmt.Errorf("%w: %v", store.ErrInvalid, err)
		}
		hp = h
	} else if len(hp) > narinfo.HashPartLen {
		hp = hp[:narinfo.HashPartLen]
	}
	if !narinfo.ValidHashPart(hp) {
		return invalidf("%q is neither a store path nor a hash part", pathOrHash)
	}
	return mapErr(s.db.Update(func(tx *bolt.Tx) error {
		data := tx.Bucket(bPins).Get([]byte(hp))
		if data == nil {
			return store.ErrNotFound
		}
		if !anyOwner {
			var old Pin
			if json.Unmarshal(data, &old) != nil || old.StorePath == "" || old.Owner != owner {
				return ErrNotOwner
			}
		}
		return tx.Bucket(bPins).Delete([]byte(hp))
	}))
}

// Pins lists the GC roots, sorted by store path.
func (s *Store) Pins(ctx context.Context) ([]Pin, error) {
	var out []Pin
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bPins).ForEach(func(k, v []byte) error {
			var p Pin
			if err := json.Unmarshal(v, &p); err != nil {
				return err
			}
			out = append(out, p)
			return nil
		})
	})
	slices.SortFunc(out, func(a, b Pin) int { return strings.Compare(a.StorePath, b.StorePath) })
	return out, err
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
	err := s.db.View(func(tx *bolt.Tx) error {
		st.Paths = tx.Bucket(bPaths).Stats().KeyN
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
		st.Tombstones = tx.Bucket(bTombs).Stats().KeyN
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
	err := s.db.View(func(tx *bolt.Tx) error {
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
