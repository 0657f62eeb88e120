package upload

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

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

// servedElsewhere returns what another store serves under hashPart, or nil
// when none has it. Unlike otherHas it returns a store's error instead of
// taking it for absence: an upload we could not compare must be refused,
// not accepted.
func (s *Store) servedElsewhere(ctx context.Context, hashPart string) (*served, error) {
	for _, o := range s.opts.Others {
		info, err := o.PathInfo(ctx, hashPart)
		if errors.Is(err, store.ErrNotFound) {
			continue
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
