package upload

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/bos55/concordia/internal/kv"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/pkg/narinfo"
)

// Tombstones. A path the cache served may be on any host that fetched it,
// so collecting it must not free its store path for another NAR: a host
// that has the old content and a new host would then run different
// contents under one name, and the cache would have signed both. When a
// path's record is deleted (GC, repair, recovery), its NAR hash and a hash
// of its references are kept under its hash part, for Options.Remember
// (gc.remember; forever when 0). Meanwhile an upload of that store path
// must describe the same NAR (then it simply comes back, and the tombstone
// goes), else it is refused with ErrConflict like an upload over a path
// the cache has. An admin lifts a tombstone early with Forget (`cache
// forget`), e.g. after a build was found to be broken everywhere.

// tombRec is a collected path, reduced to what a new upload is compared
// with. About 200 bytes whatever the number of references.
type tombRec struct {
	StorePath string `json:"storePath"`
	NarHash   []byte `json:"narHash"`
	RefsHash  []byte `json:"refsHash"`  // refsHash of the references
	Collected int64  `json:"collected"` // unix seconds
	// Upstream is the cache a pulled path came from (pathRec.Upstream),
	// which still has it: a path referring to it keeps a complete
	// closure (pulledRef).
	Upstream string `json:"upstream,omitempty"`
}

// refsHash identifies a set of references (base names).
func refsHash(refs []string) []byte {
	sum := sha256.Sum256([]byte(strings.Join(setOf(refs), " ")))
	return sum[:]
}

// bury writes the tombstone of r, deleted now, and for a pulled path the
// lasting mark that an upstream has it (upstreamRef).
func (s *Store) bury(tx kv.Tx, hp string, r *pathRec) error {
	if r.Upstream != "" {
		if err := markUpstream(tx, hp, r.Upstream); err != nil {
			return err
		}
	}
	return putJSON(tx.Bucket(bTombs), []byte(hp), tombRec{
		StorePath: r.StorePath, NarHash: r.NarHash, RefsHash: refsHash(r.References), Collected: s.now().Unix(),
		Upstream: r.Upstream,
	})
}

// pulledRef reports whether the index remembers hp as a path pulled from
// an upstream and deleted since (GC's eviction, repair): the upstream
// has it still, so a path referring to it is complete without asking the
// upstream, which may be unreachable just then.
func pulledRef(tx kv.Tx, hp string) bool {
	if upstreamRef(tx, hp) {
		return true
	}
	var t tombRec
	found, err := getJSON(tx.Bucket(bTombs), []byte(hp), &t)
	return err == nil && found && t.Upstream != ""
}

// Upstream paths. An upload may refer to a path only an upstream has (the
// closure check asked it), and a pulled path may be evicted while uploads
// refer to it. Either way the index remembers, for good, that an upstream
// had that path (about 60 bytes: its hash part and the upstream's name),
// so that the recovery at every Open, which drops paths whose closure is
// incomplete, never drops such an upload: not when the upstream is
// unreachable, not when the store is opened by `cache gc` without the
// upstreams, and without a request per reference at each start. Store
// paths are immutable and upstreams keep what they served (cache.nixos.org
// never deletes), so the mark does not go stale in practice; a path an
// upstream did delete is a miss for readers, as it is without the cache.

// markUpstream remembers that upstream origin has hp.
func markUpstream(tx kv.Tx, hp, origin string) error {
	return tx.Bucket(bUpstream).Put([]byte(hp), []byte(origin))
}

// upstreamRef reports whether an upstream is known to have hp.
func upstreamRef(tx kv.Tx, hp string) bool {
	return tx.Bucket(bUpstream).Get([]byte(hp)) != nil
}

func (s *Store) expired(t *tombRec, now int64) bool {
	return s.opts.Remember > 0 && t.Collected < now-int64(s.opts.Remember/time.Second)
}

// tombFor is the tombstone of hashPart, which the index does not have:
// nil when there is none, or when it has expired (it is then removed).
// Runs in the upload's write transaction.
func (s *Store) tombFor(tx kv.Tx, hashPart string) (*tombRec, error) {
	b := tx.Bucket(bTombs)
	var t tombRec
	found, err := getJSON(b, []byte(hashPart), &t)
	if err != nil || !found {
		return nil, err
	}
	if s.expired(&t, s.now().Unix()) {
		return nil, b.Delete([]byte(hashPart))
	}
	return &t, nil
}

// tombConflict compares an upload with the tombstone of its hash part:
// nil when it describes the collected path (which then simply comes
// back), else an ErrConflict naming both NAR hashes, when the path was
// collected and how to let another NAR in (remember is gc.remember).
func tombConflict(t *tombRec, ni *narinfo.NarInfo, remember time.Duration) error {
	when := time.Unix(t.Collected, 0).UTC().Format("2006-01-02 15:04:05 UTC")
	how := fmt.Sprintf("store paths are immutable, and hosts that fetched it keep that content; an admin allows another NAR with `cache forget %s`", t.StorePath)
	if remember > 0 {
		how += fmt.Sprintf(", or it is allowed after %s (gc.remember)",
			time.Unix(t.Collected, 0).Add(remember).UTC().Format("2006-01-02"))
	}
	switch {
	case ni.StorePath != t.StorePath:
		return fmt.Errorf("%w: this hash part was %s until it was collected (garbage collection) on %s, the upload names %s (%s)",
			store.ErrConflict, t.StorePath, when, ni.StorePath, how)
	case string(ni.NarHash.Digest) != string(t.NarHash):
		return fmt.Errorf("%w: %s was in the cache with NarHash %s until it was collected (garbage collection) on %s; the upload has NarHash %s (%s)",
			store.ErrConflict, t.StorePath, narinfo.SHA256(t.NarHash), when, ni.NarHash, how)
	case string(refsHash(ni.References)) != string(t.RefsHash):
		return fmt.Errorf("%w: %s was in the cache with NarHash %s and other References than the upload's %q until it was collected (garbage collection) on %s (%s)",
			store.ErrConflict, t.StorePath, narinfo.SHA256(t.NarHash), setOf(ni.References), when, how)
	}
	return nil
}

// pruneTombs removes the tombstones older than Options.Remember; it runs
// in GC's transaction (dry: counts only).
func (s *Store) pruneTombs(tx kv.Tx, dry bool) (int, error) {
	if s.opts.Remember <= 0 {
		return 0, nil
	}
	now := s.now().Unix()
	b := tx.Bucket(bTombs)
	var gone [][]byte
	err := b.ForEach(func(k, v []byte) error {
		var t tombRec
		if json.Unmarshal(v, &t) != nil || s.expired(&t, now) {
			gone = append(gone, append([]byte(nil), k...))
		}
		return nil
	})
	if err != nil || dry {
		return len(gone), err
	}
	for _, k := range gone {
		if err := b.Delete(k); err != nil {
			return 0, err
		}
	}
	return len(gone), nil
}

// Forget removes the tombstone of a collected path (a full store path or
// a hash part), so it may be uploaded again with another NAR. ErrNotFound
// when there is none; ErrConflict when the path is in the cache (forget
// is not for paths it serves: those never change).
func (s *Store) Forget(ctx context.Context, pathOrHash string) (forgotten string, err error) {
	hp := pathOrHash
	if strings.Contains(pathOrHash, "/") {
		_, h, _, err := narinfo.ParseStorePath(pathOrHash)
		if err != nil {
			return "", fmt.Errorf("%w: %v", store.ErrInvalid, err)
		}
		hp = h
	}
	if !narinfo.ValidHashPart(hp) {
		return "", invalidf("%q is neither a store path nor a hash part", pathOrHash)
	}
	err = s.db.Update(func(tx kv.Tx) error {
		var t tombRec
		found, err := getJSON(tx.Bucket(bTombs), []byte(hp), &t)
		if err != nil {
			return err
		}
		if !found {
			if tx.Bucket(bPaths).Get([]byte(hp)) != nil {
				return fmt.Errorf("%w: %s is in the cache: a path it has never changes, there is nothing to forget", store.ErrConflict, storePathOf(tx, hp))
			}
			return fmt.Errorf("no tombstone for %s: %w", pathOrHash, store.ErrNotFound)
		}
		forgotten = t.StorePath
		return tx.Bucket(bTombs).Delete([]byte(hp))
	})
	if err == nil {
		s.log.Info("tombstone forgotten: the path may be uploaded with another NAR", "path", forgotten)
	}
	return forgotten, mapErr(err)
}
