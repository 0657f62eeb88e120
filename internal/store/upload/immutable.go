package upload

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/bos55/concordia/internal/kv"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/pkg/narinfo"
)

// Store paths are immutable, and every host trusts what the cache signs,
// so an upload may add a path but never change one the cache already
// serves, from this index or from another store (the machine's own
// /nix/store): a write token that could swap the NAR of a path named like
// glibc would own every host that substitutes it. The same holds for the
// documents kept beside paths (listings, logs, realisations). What is
// compared is what a client acts on; an identical upload is a no-op.

// served is what the cache answers for a hash part, reduced to what a
// signature covers (the fingerprint): the path, its NAR and its
// references. Deriver, CA and the like are not compared: the same output
// may come from several derivations, and they change no byte a client
// gets.
type served struct {
	storePath string
	narHash   []byte
	refs      []string // base names, self included
}

func servedRec(r *pathRec) *served {
	return &served{storePath: r.StorePath, narHash: r.NarHash, refs: r.References}
}

// check returns an ErrConflict saying how the upload ni differs from what
// is served, or nil when it describes the same path.
func (sv *served) check(ni *narinfo.NarInfo) error {
	switch {
	case ni.StorePath != sv.storePath:
		return fmt.Errorf("%w: the cache already serves this hash part as %s, the upload names %s (store paths are immutable)",
			store.ErrConflict, sv.storePath, ni.StorePath)
	case !bytes.Equal(ni.NarHash.Digest, sv.narHash):
		return fmt.Errorf("%w: %s is already in the cache with NarHash %s, the upload has NarHash %s (store paths are immutable)",
			store.ErrConflict, sv.storePath, narinfo.SHA256(sv.narHash), ni.NarHash)
	case !sameSet(ni.References, sv.refs):
		return fmt.Errorf("%w: %s is already in the cache with References %q, the upload says %q (store paths are immutable)",
			store.ErrConflict, sv.storePath, setOf(sv.refs), setOf(ni.References))
	}
	return nil
}

func setOf(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return slices.Compact(s)
}

func sameSet(a, b []string) bool { return slices.Equal(setOf(a), setOf(b)) }

// servedElsewhere returns what another store serves under hashPart (the
// upload's storePath), or nil when none has it. Unlike otherHas it
// returns a store's error instead of taking it for absence: an upload we
// could not compare must be refused, not accepted. An upstream that could
// not be asked refuses it with store.ErrUnavailable (503, retried).
func (s *Store) servedElsewhere(ctx context.Context, hashPart, storePath string) (*served, error) {
	for _, o := range s.opts.Others {
		info, err := o.PathInfo(ctx, hashPart)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if errors.Is(err, store.ErrUnavailable) {
			return nil, uncheckable(storePath, err)
		}
		if err != nil {
			return nil, fmt.Errorf("look up %s in another store: %w", hashPart, err)
		}
		refs := make([]string, len(info.References))
		for i, r := range info.References {
			refs[i] = strings.TrimPrefix(r, s.storeDir+"/")
		}
		return &served{storePath: info.StorePath, narHash: info.NarHash, refs: refs}, nil
	}
	return nil, nil
}

// putOnce stores a document under key unless the bucket has one there
// already: then the same document (by same) is a no-op and another one is
// ErrConflict. Both in one write transaction, so of two racing uploads of
// different documents one is refused.
// onNew, if set, runs in the transaction that stores a new document.
func (s *Store) putOnce(bucket []byte, key string, data []byte, same func(a, b []byte) bool, what string, onNew func(kv.Tx) error) error {
	err := s.db.Update(func(tx kv.Tx) error {
		b := tx.Bucket(bucket)
		if old := b.Get([]byte(key)); old != nil {
			return sameDoc(old, data, same, what+" "+key)
		}
		if onNew != nil {
			if err := onNew(tx); err != nil {
				return err
			}
		}
		return b.Put([]byte(key), data)
	})
	return mapErr(err)
}

// sameDoc is nil when the upload equals the document the cache has, else
// an ErrConflict naming both by their SHA-256.
func sameDoc(have, upload []byte, same func(a, b []byte) bool, what string) error {
	if same(have, upload) {
		return nil
	}
	return fmt.Errorf("%w: the cache already has the %s with sha256 %s (%d bytes), the upload has %s (%d bytes)",
		store.ErrConflict, what, docHash(have), len(have), docHash(upload), len(upload))
}

func docHash(b []byte) string {
	sum := sha256.Sum256(b)
	return narinfo.SHA256(sum[:]).String()
}

// sameJSON compares two JSON documents by value: key order and white
// space are the client's rendering, not part of what the document says.
func sameJSON(a, b []byte) bool {
	ca, erra := canonicalJSON(a)
	cb, errb := canonicalJSON(b)
	if erra != nil || errb != nil {
		return bytes.Equal(a, b)
	}
	return bytes.Equal(ca, cb)
}

// canonicalJSON re-renders a document with sorted keys and no white space
// (numbers kept as written).
func canonicalJSON(data []byte) ([]byte, error) {
	d := json.NewDecoder(bytes.NewReader(data))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return nil, err
	}
	return json.Marshal(v)
}

// otherRealisation returns another store's realisation document id, or nil.
func (s *Store) otherRealisation(ctx context.Context, id string) ([]byte, error) {
	for _, o := range s.opts.Others {
		rs, ok := o.(store.Realisations)
		if !ok {
			continue
		}
		doc, err := rs.Realisation(ctx, id)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("realisation %s in another store: %w", id, err)
		}
		return doc, nil
	}
	return nil, nil
}
