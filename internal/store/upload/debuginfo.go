package upload

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/bos55/concordia/internal/kv"
	"github.com/bos55/concordia/internal/store"
)

var _ store.DebugInfo = (*Store)(nil)

// The debug info index. With index-debug-info=true, nix copy --to looks in
// each NAR it uploads for lib/debug/.build-id/<2 hex>/<38 hex>.debug and,
// for each such file, HEADs debuginfo/<build id>.debug and, if that is
// absent, PUTs there (binary-cache-store.cc 2.8.0:212-265,
// 2.32.0:215-267; the server takes both that name and dwarffs's
// debuginfo/<build id> for the document of the 40-digit build id)
//
//	{"archive":"../nar/<file hash>.nar.xz","member":"lib/debug/.build-id/ab/<38 hex>.debug"}
//
// (nlohmann's json.dump(): keys sorted, no spaces), all before it PUTs the
// NAR that "archive" names relative to the document's URL. Readers
// (dwarffs) GET the document, then the archive, and take the member out
// of the NAR.
//
// A document is kept as that compact rendering of the two values it
// holds, and served only while the NAR it names is: between its PUT and
// the narinfo that claims its NAR it is not served yet (a retry's HEAD
// says absent, and its PUT of the same document is a no-op), and once GC
// collects that NAR it is no longer served, so the next upload of a path
// with that build ID (which HEADs, sees nothing, PUTs) replaces it. That
// is the write-once rule of the other documents, applied to a document
// that means nothing without its NAR: another document for a build ID is
// ErrConflict only while the first one's NAR is served. A document whose
// NAR never came or was collected keeps its record (under 200 bytes) until
// a later PUT replaces it; GC does not sweep them.

// bDebugInfo holds the documents: build ID -> document. It is made on the
// first PUT, so a store that never had one has no such bucket.
var bDebugInfo = []byte("debuginfo")

// MaxDebugInfoSize bounds one debuginfo document on upload. Nix's are about
// 150 bytes: a build ID, a NAR file name and a member path of fixed form.
const MaxDebugInfoSize = 4 << 10

// debugInfoDoc is the document, its fields in Nix's (sorted) order.
type debugInfoDoc struct {
	Archive string `json:"archive"`
	Member  string `json:"member"`
}

// validBuildID reports whether id is a build ID Nix indexes: 40 lowercase
// hex digits (the regexes ^[0-9a-f]{2}$ and ^[0-9a-f]{38}\.debug$ of the
// two directory levels).
func validBuildID(id string) bool {
	if len(id) != 40 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// parseDebugInfo checks that data is the document Nix writes for buildID
// and returns its canonical rendering and the NAR file name it points at.
func parseDebugInfo(buildID string, data []byte) (canon []byte, blob string, err error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var d debugInfoDoc
	if err := dec.Decode(&d); err != nil {
		return nil, "", invalidf("debuginfo %s is not a {\"archive\":...,\"member\":...} JSON document: %v", buildID, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, "", invalidf("debuginfo %s: data after the JSON document", buildID)
	}
	blob, ok := strings.CutPrefix(d.Archive, "../nar/")
	if !ok {
		return nil, "", invalidf("debuginfo %s: archive %q is not ../nar/<file hash>.nar[.ext]", buildID, d.Archive)
	}
	if _, _, err := ParseNARName(blob); err != nil {
		return nil, "", invalidf("debuginfo %s: archive %q: %v", buildID, d.Archive, err)
	}
	if want := "lib/debug/.build-id/" + buildID[:2] + "/" + buildID[2:] + ".debug"; d.Member != want {
		return nil, "", invalidf("debuginfo %s: member %q is not %s", buildID, d.Member, want)
	}
	canon, err = json.Marshal(d)
	if err != nil {
		return nil, "", err
	}
	return canon, blob, nil
}

// PutDebugInfo stores the debuginfo document of buildID (see the comment
// at the top of this file for the rules).
func (s *Store) PutDebugInfo(ctx context.Context, buildID string, body io.Reader) error {
	if !validBuildID(buildID) {
		return invalidf("%q is not a build ID (40 lowercase hex digits)", buildID)
	}
	data, err := readSmall(body, MaxDebugInfoSize, "debuginfo")
	if err != nil {
		return err
	}
	canon, _, err := parseDebugInfo(buildID, data)
	if err != nil {
		return err
	}
	key := []byte(buildID)
	err = s.db.Update(func(tx kv.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bDebugInfo)
		if err != nil {
			return err
		}
		if old := b.Get(key); old != nil && !bytes.Equal(old, canon) {
			live, err := debugInfoLive(tx, old)
			if err != nil {
				return err
			}
			if live {
				return sameDoc(old, canon, bytes.Equal, "debuginfo "+buildID)
			}
		}
		return b.Put(key, canon)
	})
	return mapErr(err)
}

// DebugInfo returns the debuginfo document of buildID while the NAR it
// names is served.
func (s *Store) DebugInfo(ctx context.Context, buildID string) ([]byte, error) {
	if !validBuildID(buildID) {
		return nil, store.ErrNotFound
	}
	var doc []byte
	err := s.db.View(func(tx kv.Tx) error {
		b := tx.Bucket(bDebugInfo)
		if b == nil {
			return nil
		}
		v := b.Get([]byte(buildID))
		if v == nil {
			return nil
		}
		live, err := debugInfoLive(tx, v)
		if err == nil && live {
			doc = bytes.Clone(v)
		}
		return err
	})
	if err != nil {
		return nil, mapErr(err)
	}
	if doc == nil {
		return nil, fmt.Errorf("debuginfo %s: %w", buildID, store.ErrNotFound)
	}
	return doc, nil
}

// debugInfoLive reports whether the NAR a stored document names is served:
// a narinfo claims it (what OpenBlob serves).
func debugInfoLive(tx kv.Tx, doc []byte) (bool, error) {
	var d debugInfoDoc
	if err := json.Unmarshal(doc, &d); err != nil {
		return false, nil
	}
	h, comp, err := ParseNARName(strings.TrimPrefix(d.Archive, "../nar/"))
	if err != nil {
		return false, nil
	}
	for _, n := range blobNames(h, comp) {
		var r blobRec
		found, err := getJSON(tx.Bucket(bBlobs), []byte(n), &r)
		if err != nil {
			return false, err
		}
		if found && r.Refs > 0 {
			return true, nil
		}
	}
	return false, nil
}
