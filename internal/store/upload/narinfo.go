package upload

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/bos55/concordia/internal/limits"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/pkg/narinfo"
)

// The judgement of an uploaded narinfo, apart from the index it is
// committed to (commit.go): these functions read nothing and write
// nothing, so every refusal is a row of a table test, and the commit only
// gathers what they judge by and writes what they return.

func invalidf(format string, a ...any) error {
	return fmt.Errorf("%w: %s", store.ErrInvalid, fmt.Sprintf(format, a...))
}

// narinfoUpload is a narinfo whose form checkForm accepted, with what the
// rest of the upload needs of it.
type narinfoUpload struct {
	ni       *narinfo.NarInfo
	hashPart string
	fileHash []byte   // of the NAR file the URL names
	urlComp  string   // the compression the URL's suffix names ("none" for any, see blobNames)
	refs     []string // the references other than the path itself
	// upstreamRefs are the references an upstream has (hash part ->
	// upstream name), found before the commit (refsElsewhere).
	upstreamRefs map[string]string
	// origin is the upstream cache an adopted path was pulled from
	// (checkAdoption), "" for an upload. Its references are not
	// required here: the upstream that signed the narinfo has them, and
	// pull-through serves them from it.
	origin string
}

// checkForm judges what a narinfo says by itself, for the hash part of the
// URL it was PUT to: at most l's signatures, a StorePath in storeDir with
// that hash part, a URL naming a NAR file in the Compression it states,
// well-formed references (a reference with the path's hash part must be
// the path) and deriver.
func checkForm(ni *narinfo.NarInfo, hashPart, storeDir string, l limits.Limits) (*narinfoUpload, error) {
	if len(ni.Sigs) > l.MaxSignatures {
		return nil, l.TooManySignatures(len(ni.Sigs), invalidf("narinfo of %s", hashPart))
	}
	dir, hp, _, err := narinfo.ParseStorePath(ni.StorePath)
	if err != nil {
		return nil, fmt.Errorf("%w: StorePath: %v", store.ErrInvalid, err)
	}
	if dir != storeDir {
		return nil, invalidf("StorePath %s is not in %s", ni.StorePath, storeDir)
	}
	if hp != hashPart {
		return nil, invalidf("StorePath %s does not have the hash part %s of the URL", ni.StorePath, hashPart)
	}
	blobName, ok := strings.CutPrefix(ni.URL, "nar/")
	if !ok {
		return nil, invalidf("URL %q must be nar/<file hash>.nar[.ext]", ni.URL)
	}
	fh, comp, err := ParseNARName(blobName)
	if err != nil {
		return nil, err
	}
	if comp == "none" && ni.Compression != "none" {
		// A bare .nar: what the file is in is checked against the
		// bytes received (validateNarInfo); Nix names gzip NARs so.
		if !slices.Contains(bareCompressions, ni.Compression) {
			return nil, invalidf("Compression %q of the NAR file %s is not one this cache takes (zstd, xz, bzip2, gzip or none)", ni.Compression, blobName)
		}
	} else if ni.Compression != comp {
		return nil, invalidf("Compression %q does not match the NAR file %s (%s)", ni.Compression, blobName, comp)
	}
	up := &narinfoUpload{ni: ni, hashPart: hashPart, fileHash: fh, urlComp: comp}
	for _, ref := range ni.References {
		rh, _, err := narinfo.ParseBaseName(ref)
		if err != nil {
			return nil, fmt.Errorf("%w: reference %s: %v", store.ErrInvalid, ref, err)
		}
		if rh == hashPart && storeDir+"/"+ref != ni.StorePath {
			return nil, invalidf("reference %s has the hash of %s but another name", ref, ni.StorePath)
		}
		if rh != hashPart {
			up.refs = append(up.refs, ref)
		}
	}
	if ni.Deriver != "" {
		if _, _, err := narinfo.ParseDerivation(ni.Deriver); err != nil {
			return nil, invalidf("Deriver %q is not a .drv store path base name", ni.Deriver)
		}
	}
	return up, nil
}

// checkAdoption is checkForm for a narinfo pulled from the upstream
// origin (Adopt), whose NAR file was received as name. The narinfo's URL
// is the upstream's, which says nothing about this cache: the judgement
// is of ni with our URL, nar/<name>, so its Compression must be the
// file's, as an upload's must.
func checkAdoption(ni *narinfo.NarInfo, name, origin, storeDir string, l limits.Limits) (*narinfoUpload, error) {
	if origin == "" {
		return nil, invalidf("adoption of %s names no upstream it was pulled from", ni.StorePath)
	}
	_, hp, _, err := narinfo.ParseStorePath(ni.StorePath)
	if err != nil {
		return nil, fmt.Errorf("%w: StorePath: %v", store.ErrInvalid, err)
	}
	ours := *ni
	ours.URL = "nar/" + name
	ours.References = slices.Clone(ni.References)
	ours.Sigs = slices.Clone(ni.Sigs)
	up, err := checkForm(&ours, hp, storeDir, l)
	if err != nil {
		return nil, err
	}
	up.origin = origin
	return up, nil
}

// holdings is what the store holds that an upload is judged against,
// gathered inside the commit's write transaction.
type holdings struct {
	storeDir string
	blob     *blobRec // the NAR file the URL names; nil if not uploaded
	blobName string   // its canonical name
	blobData []byte   // its bytes when held in memory, to commit inline (small.go)
	old      *served  // the index's path under the hash part, if any
	other    *served  // what another store serves under it, if any
	tomb     *tombRec // its tombstone (when old is nil), if not expired
	remember time.Duration
	// pendingGrace is how long a NAR waits for its narinfo, and dropped
	// why the store dropped the NAR the URL names ("" if it did not, or
	// forgot), for the refusal of a narinfo whose NAR is missing.
	pendingGrace time.Duration
	dropped      string
	// has reports whether a reference (a base name other than the
	// path's) is present, here or in another store.
	has func(ref string) bool
}

// validateNarInfo judges an upload (checkForm's) against what the store
// holds. It returns the record to commit (signatures and registration
// time are the commit's), or nil and no error when the index has the
// path already, exactly as uploaded (only signatures merge then,
// keepServed), or the refusal: the NAR was not uploaded or is not the one
// described (ErrInvalid), the path conflicts with one the cache serves or
// served (ErrConflict), or a reference is missing (ErrInvalid naming them
// all). The order of the checks is the order of the refusals. An
// adoption (checkAdoption's) is judged the same way but for its
// references, and its record keeps the upstream it came from.
func validateNarInfo(up *narinfoUpload, h *holdings) (*pathRec, error) {
	ni, b := up.ni, h.blob
	if b == nil {
		if h.dropped != "" {
			return nil, invalidf("URL %s names a NAR that was not uploaded: %s; upload it again", ni.URL, h.dropped)
		}
		return nil, invalidf("URL %s names a NAR that was not uploaded or expired after %s unclaimed (upload.pending_max_age); upload it again",
			ni.URL, durationString(h.pendingGrace))
	}
	if ni.Compression != b.Compression {
		return nil, invalidf("Compression %q does not match the uploaded NAR file %s, which is in %s", ni.Compression, h.blobName, b.Compression)
	}
	if err := matchBlob(ni, b); err != nil {
		return nil, err
	}
	if h.old != nil {
		if err := h.old.check(ni); err != nil {
			return nil, err
		}
	}
	if h.other != nil {
		if err := h.other.check(ni); err != nil {
			return nil, err
		}
	}
	if h.old != nil {
		return nil, nil
	}
	if h.tomb != nil {
		if err := tombConflict(h.tomb, ni, h.remember); err != nil {
			return nil, err
		}
	}
	var missing []string
	for _, ref := range up.refs {
		if up.origin == "" && !h.has(ref) {
			missing = append(missing, h.storeDir+"/"+ref)
		}
	}
	if len(missing) > 0 {
		// The client checks each reference with a narinfo lookup it
		// caches for narinfo-cache-positive-ttl: one the cache
		// collected since stays present for it, and it never sends it.
		return nil, invalidf("references not in the cache (upload them first): %s; a client that uploaded or fetched them before "+
			"may believe them present from its narinfo cache: retry with --option narinfo-cache-positive-ttl 0",
			strings.Join(missing, " "))
	}
	return &pathRec{
		StorePath: ni.StorePath, Blob: h.blobName, Compression: b.Compression,
		FileHash: b.FileHash, FileSize: uint64(b.FileSize), NarHash: b.NarHash, NarSize: b.NarSize,
		References: ni.References, Deriver: ni.Deriver, System: ni.System, CA: ni.CA,
		Upstream: up.origin,
	}, nil
}

// matchBlob refuses a narinfo whose hashes and sizes are not those
// computed from the NAR file received: the client does not prove them.
// FileHash and FileSize are optional (the record gets the computed ones).
func matchBlob(ni *narinfo.NarInfo, b *blobRec) error {
	if !bytes.Equal(ni.NarHash.Digest, b.NarHash) || ni.NarHash.Algo != "sha256" {
		return invalidf("NarHash %s does not match the uploaded NAR (sha256:%s)", ni.NarHash, nixbase32.EncodeToString(b.NarHash))
	}
	if ni.NarSize != b.NarSize {
		return invalidf("NarSize %d does not match the uploaded NAR (%d bytes)", ni.NarSize, b.NarSize)
	}
	if ni.FileHash != nil && (ni.FileHash.Algo != "sha256" || !bytes.Equal(ni.FileHash.Digest, b.FileHash)) {
		return invalidf("FileHash %s does not match the uploaded file", ni.FileHash)
	}
	if ni.FileSize != 0 && ni.FileSize != uint64(b.FileSize) {
		return invalidf("FileSize %d does not match the uploaded file (%d bytes)", ni.FileSize, b.FileSize)
	}
	return nil
}
