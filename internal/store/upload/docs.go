package upload

import (
	"encoding/json"
	"path"

	bolt "go.etcd.io/bbolt"

	"github.com/bos55/concordia/pkg/narinfo"
)

// Build logs and realisations (with build-trace entries) belong to store
// paths, and GC collects them with those paths (gc.go): a log belongs to
// the derivation that is the Deriver of kept paths, a realisation to the
// output path it names. One that belongs to no path (uploaded before its
// path, which Nix does for logs, or naming a path the upload store never
// got) is kept for the pending grace period, then collected like an
// abandoned NAR.

// realRec is the index record beside a realisation document.
type realRec struct {
	// Owner is the hash part of the document's outPath, "" when it names
	// none (then it belongs to no path).
	Owner   string `json:"owner,omitempty"`
	Created int64  `json:"created"` // upload time, unix seconds
}

// realisationOwner is the hash part of the store path a realisation or
// build-trace document names as its outPath (Nix writes a base name; a
// full path is read too), or "".
func realisationOwner(doc []byte) string {
	var d struct {
		OutPath string `json:"outPath"`
	}
	if json.Unmarshal(doc, &d) != nil {
		return ""
	}
	base := path.Base(d.OutPath)
	if len(base) < narinfo.HashPartLen || !narinfo.ValidHashPart(base[:narinfo.HashPartLen]) {
		return ""
	}
	return base[:narinfo.HashPartLen]
}

// recoverRealisations gives the realisations an older version stored
// (without records) a record, whose grace period starts now.
func (s *Store) recoverRealisations() error {
	now := s.now().Unix()
	return s.db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bRealMeta)
		type add struct {
			k []byte
			r realRec
		}
		var adds []add
		err := tx.Bucket(bReal).ForEach(func(k, v []byte) error {
			if meta.Get(k) == nil {
				adds = append(adds, add{append([]byte(nil), k...), realRec{Owner: realisationOwner(v), Created: now}})
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, a := range adds {
			if err := putJSON(meta, a.k, a.r); err != nil {
				return err
			}
		}
		return nil
	})
}
