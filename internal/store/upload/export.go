package upload

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/bos55/concordia/internal/kv"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/pkg/narinfo"
)

// Reads and writes for copying one store into another (package migrate).
// The normal read paths (PathInfo, NarInfo) stamp an access, so reading a
// whole store through them would make every path look used now and
// reorder GC; these read the index as it is. The writes put back what an
// upload cannot carry (times, tombstones, upstream marks, pins as they
// were made); everything a client could send still goes through the
// normal, verified intake.

// PathRecord is a path as the index holds it.
type PathRecord struct {
	// NarInfo is the narinfo as served (URL nar/<Blob>, the signatures
	// served), references and deriver as base names.
	NarInfo *narinfo.NarInfo
	// Blob is the name of its NAR file.
	Blob string
	// Origin is the upstream a pulled path came from (Adopt), "" for
	// an upload.
	Origin string
	// Registered is when it was accepted; Access when it was last used
	// and Told when a writer was last told it exists (zero if never).
	Registered, Access, Told time.Time
}

// PathRecords lists every path of the index, sorted by store path,
// without stamping an access.
func (s *Store) PathRecords(ctx context.Context) ([]PathRecord, error) {
	var out []PathRecord
	err := s.db.View(func(tx kv.Tx) error {
		return tx.Bucket(bPaths).ForEach(func(k, v []byte) error {
			var r pathRec
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("index record %s: %w", k, err)
			}
			out = append(out, s.pathRecord(tx, string(k), &r))
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list paths: %w", err)
	}
	slices.SortFunc(out, func(a, b PathRecord) int { return strings.Compare(a.NarInfo.StorePath, b.NarInfo.StorePath) })
	return out, nil
}

// PathRecordOf is the record of hashPart (store.ErrNotFound if none),
// without stamping an access.
func (s *Store) PathRecordOf(ctx context.Context, hashPart string) (*PathRecord, error) {
	var out *PathRecord
	err := s.db.View(func(tx kv.Tx) error {
		var r pathRec
		found, err := getJSON(tx.Bucket(bPaths), []byte(hashPart), &r)
		if found {
			pr := s.pathRecord(tx, hashPart, &r)
			out = &pr
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	if out == nil {
		return nil, store.ErrNotFound
	}
	return out, nil
}

func (s *Store) pathRecord(tx kv.Tx, hp string, r *pathRec) PathRecord {
	ni := r.narinfo()
	ni.Sigs = s.servedSigs(r)
	pr := PathRecord{NarInfo: ni, Blob: r.Blob, Origin: r.Upstream, Registered: r.Registered}
	if a := tx.Bucket(bAccess).Get([]byte(hp)); a != nil {
		pr.Access = time.Unix(parseUnix(a), 0)
	}
	if t := tx.Bucket(bTold).Get([]byte(hp)); t != nil {
		pr.Told = time.Unix(parseUnix(t), 0)
	}
	return pr
}

// SetPathTimes sets the registration time, last access and last time a
// writer was told of hashPart to what they were in the store it was
// copied from, so GC orders and protects it as it would have there:
// the intake of the copy stamped it accessed and told now. A zero
// registration time leaves it; a zero access or told time removes that
// stamp (GC then goes by the registration time, which for an upload is
// also when its writer was told). A path the index lacks is
// store.ErrNotFound.
func (s *Store) SetPathTimes(ctx context.Context, hashPart string, registered, access, told time.Time) error {
	return mapErr(s.db.Update(func(tx kv.Tx) error {
		var r pathRec
		found, err := getJSON(tx.Bucket(bPaths), []byte(hashPart), &r)
		if err != nil {
			return err
		}
		if !found {
			return fmt.Errorf("path %s: %w", hashPart, store.ErrNotFound)
		}
		if !registered.IsZero() && !r.Registered.Equal(registered) {
			r.Registered = registered.UTC()
			if err := putJSON(tx.Bucket(bPaths), []byte(hashPart), r); err != nil {
				return err
			}
		}
		for _, t := range []struct {
			b []byte
			t time.Time
		}{{bAccess, access}, {bTold, told}} {
			if t.t.IsZero() {
				err = tx.Bucket(t.b).Delete([]byte(hashPart))
			} else {
				err = tx.Bucket(t.b).Put([]byte(hashPart), unixBytes(t.t.Unix()))
			}
			if err != nil {
				return err
			}
		}
		return nil
	}))
}

// LogNames lists the derivations (base names) whose build log is stored.
func (s *Store) LogNames(ctx context.Context) ([]string, error) {
	return s.keys(bLogFiles)
}

// LogSum is the size and SHA-256 of the stored build log of drvBase,
// decompressed (store.ErrNotFound if none): what says whether another
// store has the same log without reading it.
func (s *Store) LogSum(ctx context.Context, drvBase string) (size int64, sha256 []byte, err error) {
	rec, err := s.logRecord(drvBase)
	if err != nil {
		return 0, nil, err
	}
	if rec == nil {
		return 0, nil, store.ErrNotFound
	}
	return rec.Size, rec.SHA256, nil
}

// RealisationIDs lists the ids of the stored realisations and build-trace
// entries, which Realisation reads and PutRealisation writes.
func (s *Store) RealisationIDs(ctx context.Context) ([]string, error) {
	return s.keys(bReal)
}

func (s *Store) keys(bucket []byte) ([]string, error) {
	var out []string
	err := s.db.View(func(tx kv.Tx) error {
		return tx.Bucket(bucket).ForEach(func(k, _ []byte) error {
			out = append(out, string(k))
			return nil
		})
	})
	slices.Sort(out)
	return out, err
}

// Tombstone is a collected path whose NAR hash the store remembers
// (tombstone.go).
type Tombstone struct {
	StorePath string
	NarHash   []byte
	RefsHash  []byte // of its references, as the store hashes them
	Collected time.Time
	Upstream  string // the upstream a pulled path came from
}

// Tombstones lists the remembered collected paths, sorted by store path,
// expired ones included (a GC prunes those).
func (s *Store) Tombstones(ctx context.Context) ([]Tombstone, error) {
	var out []Tombstone
	err := s.db.View(func(tx kv.Tx) error {
		return tx.Bucket(bTombs).ForEach(func(k, v []byte) error {
			var t tombRec
			if err := json.Unmarshal(v, &t); err != nil {
				return fmt.Errorf("tombstone %s: %w", k, err)
			}
			out = append(out, Tombstone{StorePath: t.StorePath, NarHash: t.NarHash, RefsHash: t.RefsHash,
				Collected: time.Unix(t.Collected, 0), Upstream: t.Upstream})
			return nil
		})
	})
	slices.SortFunc(out, func(a, b Tombstone) int { return strings.Compare(a.StorePath, b.StorePath) })
	return out, err
}

// PutTombstone remembers t as a collected path, unless the index has the
// path (then it is not collected) or a tombstone of it already (the one
// there stays): added reports whether it was written.
func (s *Store) PutTombstone(ctx context.Context, t Tombstone) (added bool, err error) {
	_, hp, _, err := narinfo.ParseStorePath(t.StorePath)
	if err != nil || len(t.NarHash) == 0 {
		return false, invalidf("tombstone of %q: not a store path with a NAR hash", t.StorePath)
	}
	err = s.db.Update(func(tx kv.Tx) error {
		if tx.Bucket(bPaths).Get([]byte(hp)) != nil || tx.Bucket(bTombs).Get([]byte(hp)) != nil {
			return nil
		}
		added = true
		return putJSON(tx.Bucket(bTombs), []byte(hp), tombRec{StorePath: t.StorePath, NarHash: t.NarHash,
			RefsHash: t.RefsHash, Collected: t.Collected.Unix(), Upstream: t.Upstream})
	})
	return added, mapErr(err)
}

// UpstreamPaths is the lasting record of paths an upstream is known to
// have (hash part -> upstream name, tombstone.go), which keeps the
// uploads referring to them through the closure check of every Open.
func (s *Store) UpstreamPaths(ctx context.Context) (map[string]string, error) {
	out := map[string]string{}
	err := s.db.View(func(tx kv.Tx) error {
		return tx.Bucket(bUpstream).ForEach(func(k, v []byte) error {
			out[string(k)] = string(v)
			return nil
		})
	})
	return out, err
}

// PutUpstreamPaths records that each upstream named in marks has the
// path of that hash part, as UpstreamPaths lists them.
func (s *Store) PutUpstreamPaths(ctx context.Context, marks map[string]string) error {
	return mapErr(s.db.Update(func(tx kv.Tx) error {
		for hp, origin := range marks {
			if !narinfo.ValidHashPart(hp) || origin == "" {
				return invalidf("upstream mark %q -> %q is malformed", hp, origin)
			}
			if err := markUpstream(tx, hp, origin); err != nil {
				return err
			}
		}
		return nil
	}))
}

// PutPin writes a pin exactly as p holds it (owner and creation time
// included), as Pins listed it in another store, so it stays its owner's
// to remove. A pin of the path there already stays as it is: added
// reports whether p was written.
func (s *Store) PutPin(ctx context.Context, p Pin) (added bool, err error) {
	hp := p.StorePath
	if strings.Contains(hp, "/") {
		dir, h, _, err := narinfo.ParseStorePath(hp)
		if err != nil || dir != s.storeDir {
			return false, invalidf("pin of %q: not a store path in %s", p.StorePath, s.storeDir)
		}
		hp = h
	}
	if !narinfo.ValidHashPart(hp) {
		return false, invalidf("pin of %q: neither a store path nor a hash part", p.StorePath)
	}
	err = s.db.Update(func(tx kv.Tx) error {
		if tx.Bucket(bPins).Get([]byte(hp)) != nil {
			return nil
		}
		added = true
		return putJSON(tx.Bucket(bPins), []byte(hp), p)
	})
	return added, mapErr(err)
}
