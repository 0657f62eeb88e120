package upload

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"path"
	"strings"

	"github.com/bos55/concordia/internal/kv"
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
	return s.db.Update(func(tx kv.Tx) error {
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

// readSmall reads at most limit bytes, refusing more.
func readSmall(r io.Reader, limit int64, what string) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	if int64(len(data)) > limit {
		return nil, invalidf("%s larger than %d bytes", what, limit)
	}
	return data, nil
}

// PutListing stores the .ls listing of hashPart. Nix uploads it before the
// narinfo, so the path need not exist yet; it is served only once it does.
// Until then another listing replaces it (a retry from another Nix version
// may render it differently); once the path is published its listing is
// fixed: the same document again is a no-op, another is ErrConflict.
// (The server's GET .ls is computed from the NAR, never from this
// document, so not even a listing stored before the path can mislead a
// client; keeping it write-once keeps the rule the same for every
// document.)
func (s *Store) PutListing(ctx context.Context, hashPart string, body io.Reader) error {
	if !narinfo.ValidHashPart(hashPart) {
		return invalidf("%q is not a 32-character nix32 hash", hashPart)
	}
	data, err := readSmall(body, MaxListingSize, "listing")
	if err != nil {
		return err
	}
	var doc struct {
		Version int             `json:"version"`
		Root    json.RawMessage `json:"root"`
	}
	if err := json.Unmarshal(data, &doc); err != nil || doc.Version != 1 || len(doc.Root) == 0 {
		return invalidf("listing is not a {\"version\":1,\"root\":...} JSON document")
	}
	key := []byte(hashPart)
	err = s.db.Update(func(tx kv.Tx) error {
		ls := tx.Bucket(bListings)
		if old := ls.Get(key); old != nil && len(old) >= 8 && tx.Bucket(bPaths).Get(key) != nil {
			return sameDoc(old[8:], data, sameJSON, "listing of "+hashPart)
		}
		// The upload time goes first, so SweepPending can drop
		// listings whose narinfo never came.
		return ls.Put(key, append(binary.BigEndian.AppendUint64(nil, uint64(s.now().Unix())), data...))
	})
	return mapErr(err)
}

// PutRealisation stores a realisation document "sha256:<hash>!<output>"
// (realisations/<id>.doi). A realisation says which store path a
// derivation output is, so it is as immutable as the path: one the cache
// serves (here or in another store) may be uploaded again only as the same
// JSON document (same values, whatever the layout), else ErrConflict.
func (s *Store) PutRealisation(ctx context.Context, id string, body io.Reader) error {
	return s.putJSONDoc(ctx, bReal, id, body, "realisation")
}

// PutBuildTrace stores a build-trace-v2 document (Nix 2.35 and later,
// build-trace-v2/<drv base name>/<output>.doi). It is kept with the
// realisations under "<drv base name>!<output>", the id the server asks
// Realisation for.
func (s *Store) PutBuildTrace(ctx context.Context, drvBase, output string, body io.Reader) error {
	if _, _, err := narinfo.ParseDerivation(drvBase); err != nil {
		return invalidf("build trace: %q is not a .drv store path base name", drvBase)
	}
	if output == "" || strings.ContainsAny(output, "/!\x00") {
		return invalidf("build trace: bad output name %q", output)
	}
	return s.putJSONDoc(ctx, bReal, drvBase+"!"+output, body, "build trace entry")
}

func (s *Store) putJSONDoc(ctx context.Context, bucket []byte, key string, body io.Reader, what string) error {
	if key == "" || len(key) > 512 || strings.Contains(key, "..") || strings.ContainsAny(key, "\x00\n") {
		return invalidf("%s id %q is malformed", what, key)
	}
	data, err := readSmall(body, MaxRealisationSize, what)
	if err != nil {
		return err
	}
	if !json.Valid(data) {
		return invalidf("%s is not well-formed JSON", what)
	}
	other, err := s.otherRealisation(ctx, key)
	if err != nil {
		return err
	}
	if other != nil {
		if err := sameDoc(other, data, sameJSON, what+" "+key); err != nil {
			return err
		}
	}
	meta := realRec{Owner: realisationOwner(data), Created: s.now().Unix()}
	return s.putOnce(bucket, key, data, sameJSON, what, func(tx kv.Tx) error {
		return putJSON(tx.Bucket(bRealMeta), []byte(key), meta)
	})
}
