package upload

import (
	"context"
	"encoding/json"
	"errors"
	"path"
	"slices"
	"time"

	"github.com/bos55/concordia/internal/kv"
	"github.com/bos55/concordia/internal/store"
)

var (
	_ store.Sizer     = (*Store)(nil)
	_ store.Referrers = (*Store)(nil)
)

// sizeRec is the part of a pathRec Size and Referrers read.
type sizeRec struct {
	StorePath  string    `json:"storePath"`
	NarSize    uint64    `json:"narSize"`
	References []string  `json:"references"`
	Registered time.Time `json:"registered"`
}

// Size counts the paths, their NAR bytes and those registered since, in
// one scan of the index, and takes FileBytes from Stats (what max_size
// bounds). Both are scans: the landing page keeps the answer.
func (s *Store) Size(ctx context.Context, since time.Time) (store.StoreSize, error) {
	var sz store.StoreSize
	err := s.db.View(func(tx kv.Tx) error {
		return tx.Bucket(bPaths).ForEach(func(k, v []byte) error {
			var r sizeRec
			if json.Unmarshal(v, &r) != nil {
				return nil // Stats skips what it cannot read too
			}
			sz.Paths++
			sz.NarBytes += int64(r.NarSize)
			if !r.Registered.Before(since) {
				sz.Since++
			}
			return ctx.Err()
		})
	})
	if err != nil {
		return sz, err
	}
	st, err := s.Stats(ctx)
	if err != nil {
		return sz, err
	}
	sz.FileBytes = st.Bytes
	return sz, nil
}

// Referrers scans the index for paths whose references name storePath:
// the store keeps no reverse index (GC's planner builds one in memory
// for each run), so this costs one pass over every narinfo.
func (s *Store) Referrers(ctx context.Context, storePath string, limit int) ([]string, bool, error) {
	if limit < 1 || path.Dir(storePath) != s.storeDir {
		return nil, false, nil
	}
	base := path.Base(storePath)
	var (
		out  []string
		more bool
	)
	err := s.db.View(func(tx kv.Tx) error {
		return tx.Bucket(bPaths).ForEach(func(k, v []byte) error {
			var r sizeRec
			if json.Unmarshal(v, &r) != nil || !slices.Contains(r.References, base) {
				return ctx.Err()
			}
			if r.StorePath == storePath {
				return ctx.Err()
			}
			if len(out) == limit {
				more = true
				return errStop
			}
			out = append(out, r.StorePath)
			return ctx.Err()
		})
	})
	if err != nil && !errors.Is(err, errStop) {
		return nil, false, err
	}
	slices.Sort(out)
	return out, more, nil
}
