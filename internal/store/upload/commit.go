package upload

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/bos55/concordia/internal/kv"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/pkg/narinfo"
)

// The commit of an uploaded narinfo: gather what it is judged against
// (narinfo.go), wait for its NAR to be durable, and write the record, its
// blob's claim and the cache's signatures in one transaction.

// PutNarInfo accepts the narinfo for hashPart once everything it claims is
// true: its StorePath is well formed with that hash part, its URL names a
// NAR we received and verified, its hashes, sizes and compression match
// what we computed, and each reference (but itself) is already present
// here or in another store. The cache's signatures are added to the
// uploader's.
func (s *Store) PutNarInfo(ctx context.Context, hashPart string, body io.Reader) error {
	err := s.putNarInfo(ctx, hashPart, body)
	s.metrics.upload("narinfo", err)
	return err
}

func (s *Store) putNarInfo(ctx context.Context, hashPart string, body io.Reader) error {
	ni, err := s.parseNarInfo(hashPart, body)
	if err != nil {
		return err
	}
	up, err := checkForm(ni, hashPart, s.storeDir, s.opts.Limits)
	if err != nil {
		return err
	}
	canon := s.blobOf(up)
	// References found in another store are settled before the write
	// transaction, which then only has to look at its own index.
	elsewhere, err := s.refsElsewhere(ctx, up)
	if err != nil {
		return err
	}
	// So is what another store serves under this hash part; the write
	// transaction compares the upload with it and with its own record.
	other, err := s.servedElsewhere(ctx, hashPart, ni.StorePath)
	if err != nil {
		return err
	}
	claimed, err := s.claim(ctx, up, canon, elsewhere, other)
	s.unpend(canon, claimed)
	return mapErr(err)
}

// unpend forgets the pending entry of blob canon once a record claims it.
// Until then the entry is redundant, which is harmless: a sweep keeps
// pending blobs the index claims. A narinfo that was a no-op claimed
// nothing: its blob, if another, stays pending until a sweep drops it.
func (s *Store) unpend(canon string, claimed bool) {
	if !claimed {
		return
	}
	s.pendMu.Lock()
	s.unpendLocked(canon)
	s.pendMu.Unlock()
}

// parseNarInfo reads the narinfo document of hashPart, refusing one over
// limits.max_narinfo_size.
func (s *Store) parseNarInfo(hashPart string, body io.Reader) (*narinfo.NarInfo, error) {
	if !narinfo.ValidHashPart(hashPart) {
		return nil, invalidf("%q is not a 32-character nix32 hash", hashPart)
	}
	l := s.opts.Limits
	ni, err := narinfo.Parse(&atMost{r: body, left: l.MaxNarinfoSize,
		err: l.NarinfoTooLarge(invalidf("narinfo of %s larger than %d bytes", hashPart, l.MaxNarinfoSize))})
	if err != nil {
		if !errors.Is(err, narinfo.ErrInvalid) {
			// The body: over the limit, past the server's, or broken.
			return nil, fmt.Errorf("%w: narinfo of %s: %w", store.ErrInvalid, hashPart, err)
		}
		return nil, fmt.Errorf("%w: %v", store.ErrInvalid, err)
	}
	return ni, nil
}

// blobOf is the name of the blob the upload's URL names. A bare ".nar"
// may be stored in any of bareCompressions (Nix names gzip NARs so): it is
// the one pending or in the index, else the uncompressed one, which the
// commit then finds was not uploaded.
func (s *Store) blobOf(up *narinfoUpload) string {
	names := blobNames(up.fileHash, up.urlComp)
	if len(names) == 1 {
		return names[0]
	}
	s.pendMu.Lock()
	for _, n := range names {
		if s.pending[n] != nil {
			s.pendMu.Unlock()
			return n
		}
	}
	s.pendMu.Unlock()
	found := names[0]
	s.db.View(func(tx kv.Tx) error {
		for _, n := range names {
			if tx.Bucket(bBlobs).Get([]byte(n)) != nil {
				found = n
				return nil
			}
		}
		return nil
	})
	return found
}

// refsElsewhere is which of refs another store has and this index does
// not. A reference no store has while an upstream could not be asked
// refuses the upload (store.ErrUnavailable): it may be there, and a
// reference we could not confirm is not taken on trust.
//
// Those an upstream has are noted in up.upstreamRefs, which the commit
// remembers (upstreamRef): the index must not depend on asking the
// upstream again to know that the path's closure is complete.
func (s *Store) refsElsewhere(ctx context.Context, up *narinfoUpload) ([]string, error) {
	refs := up.refs
	var here map[string]bool
	if err := s.db.View(func(tx kv.Tx) error {
		here = map[string]bool{}
		for _, ref := range refs {
			here[ref] = hasBase(tx.Bucket(bPaths), s.storeDir, ref)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	var elsewhere []string
	for _, ref := range refs {
		if here[ref] {
			continue
		}
		has, origin, err := s.otherHas(ctx, narinfo.HashPartOf(ref), ref)
		if err != nil {
			return nil, uncheckable(s.full(ref), err)
		}
		if has {
			elsewhere = append(elsewhere, ref)
			if origin != "" {
				if up.upstreamRefs == nil {
					up.upstreamRefs = map[string]string{}
				}
				up.upstreamRefs[narinfo.HashPartOf(ref)] = origin
			}
		}
	}
	return elsewhere, nil
}

// claim commits the upload once its blob is durable. A pending NAR must be
// durable before a narinfo claims it; that wait happens outside the
// index's write lock, and again if a re-upload replaced the blob in
// between (errNotDurable), a few times.
func (s *Store) claim(ctx context.Context, up *narinfoUpload, canon string, elsewhere []string, other *served) (claimed bool, err error) {
	for attempt := 0; ; attempt++ {
		s.pendMu.Lock()
		p := s.pending[canon]
		s.pendMu.Unlock()
		if p != nil {
			s.startReverify(canon, p)
			select {
			case <-p.durable:
			case <-ctx.Done():
				return false, ctx.Err()
			}
			if p.err != nil {
				s.pendMu.Lock()
				replaced := s.pending[canon] != p
				s.pendMu.Unlock()
				if replaced && attempt < 10 {
					continue // a new upload of the NAR took its place
				}
				return false, p.err
			}
		}
		claimed, err = s.commitNarInfo(up, canon, elsewhere, other)
		if !errors.Is(err, errNotDurable) || attempt == 10 {
			return claimed, err
		}
	}
}

// commitNarInfo is the write transaction of putNarInfo. other is what
// another store serves under the hash part (nil if none). The comparison
// with the index's own record happens in the same transaction as the
// commit, so of two conflicting uploads racing, exactly one is accepted.
// claimed reports whether the upload's blob is now claimed by a new
// record (not when the path was there already).
//
// Concurrent commits share a transaction (kv.Group): Nix uploads the
// paths of a closure that do not depend on each other in parallel, and
// each commit's 200 still waits for its own writes to be on disk. The
// function may run twice (when another in its group fails) and reads
// everything it decides on afresh in each run.
func (s *Store) commitNarInfo(up *narinfoUpload, canon string, elsewhere []string, other *served) (claimed bool, err error) {
	var inlined bool
	err = s.commits.Update(func(tx kv.Tx) error {
		claimed, inlined = false, false
		h, old, err := s.holdings(tx, up, canon, elsewhere, other)
		if err != nil {
			return err
		}
		rec, err := validateNarInfo(up, h)
		if err != nil {
			return err
		}
		if rec == nil && up.origin != "" {
			// An adoption of a path the index has: it stays exactly
			// as it is, whoever put it there.
			return s.accessed(tx, up.hashPart)
		}
		if rec == nil {
			return s.keepServed(tx, up.hashPart, *old, up.ni)
		}
		if h.tomb != nil {
			// The upload is the collected path: it is back.
			if err := tx.Bucket(bTombs).Delete([]byte(up.hashPart)); err != nil {
				return err
			}
		}
		claimed, inlined = true, h.blobData != nil
		if h.blobData != nil {
			if err := s.putInline(tx, canon, h.blobData, *h.blob); err != nil {
				return err
			}
		}
		return s.insert(tx, up, rec, h.blob)
	})
	if inlined && err == nil {
		s.metrics.inlined.Inc()
	}
	return claimed && err == nil, err
}

// holdings gathers, in the commit's transaction, what validateNarInfo
// judges the upload by; old is the index's record of the path, if any.
func (s *Store) holdings(tx kv.Tx, up *narinfoUpload, canon string, elsewhere []string, other *served) (*holdings, *pathRec, error) {
	b, data, err := s.blobFor(tx, canon)
	if err != nil {
		return nil, nil, err
	}
	paths := tx.Bucket(bPaths)
	h := &holdings{
		storeDir: s.storeDir, blob: b, blobData: data, blobName: canon, other: other, remember: s.opts.Remember,
		pendingGrace: s.opts.PendingGrace,
		has:          func(ref string) bool { return hasBase(paths, s.storeDir, ref) || slices.Contains(elsewhere, ref) },
	}
	if b == nil {
		h.dropped = s.droppedWhy(canon)
		return h, nil, nil // refused for that before anything else is read
	}
	var old pathRec
	hadOld, err := getJSON(paths, []byte(up.hashPart), &old)
	if err != nil {
		return nil, nil, err
	}
	if hadOld {
		h.old = servedRec(&old)
		return h, &old, nil
	}
	// Read only when the index has no record: a tombstone is of a
	// path that is gone.
	if h.tomb, err = s.tombFor(tx, up.hashPart); err != nil {
		return nil, nil, err
	}
	return h, nil, nil
}

// blobFor is the record of blob canon: the index's, else the pending
// upload's once durable (errNotDurable until then); nil if neither has it.
//
// data is the NAR file of a small upload held in memory (small.go), which
// the commit writes into the index: nil when the blob is a file or the
// index has it already.
func (s *Store) blobFor(tx kv.Tx, canon string) (b *blobRec, data []byte, err error) {
	var rec blobRec
	found, err := getJSON(tx.Bucket(bBlobs), []byte(canon), &rec)
	if err != nil || found {
		return &rec, nil, err
	}
	s.pendMu.Lock()
	p := s.pending[canon]
	if p != nil {
		rec, data = p.rec, p.data
	}
	s.pendMu.Unlock()
	if p == nil {
		return nil, nil, nil
	}
	select {
	case <-p.durable:
	default:
		return nil, nil, errNotDurable
	}
	if p.err != nil {
		return nil, nil, p.err
	}
	return &rec, data, nil
}

// insert commits the new record rec of an upload and its claim on blob b,
// signed by the cache.
func (s *Store) insert(tx kv.Tx, up *narinfoUpload, rec *pathRec, b *blobRec) error {
	ni := up.ni
	fhash := narinfo.SHA256(b.FileHash)
	ni.FileHash, ni.FileSize = &fhash, uint64(b.FileSize)
	ni.URL = "nar/" + rec.Blob
	ni.Sign(s.opts.SignKeys...)
	rec.Registered = s.now().UTC()
	rec.Sigs = s.boundSigs(rec, ni.Sigs)
	b.Refs++
	if err := putJSON(tx.Bucket(bBlobs), []byte(rec.Blob), b); err != nil {
		return err
	}
	for hp, origin := range up.upstreamRefs {
		if err := markUpstream(tx, hp, origin); err != nil {
			return err
		}
	}
	// The record's Registered is its first access, and for an upload
	// (not an adoption) the time its writer was told it exists: GC reads
	// them so (readPaths), so a new record writes no access or told
	// stamp, which would dirty two more pages of every commit.
	return putJSON(tx.Bucket(bPaths), []byte(up.hashPart), rec)
}

// uploaded stamps a path whose narinfo PUT is answered 200: accessed, and
// told to a writer, since Nix keeps the narinfo it uploaded in its disk
// cache (and so believes the path present) as it keeps one it fetched.
func (s *Store) uploaded(tx kv.Tx, hashPart string) error {
	if err := s.accessed(tx, hashPart); err != nil {
		return err
	}
	return tx.Bucket(bTold).Put([]byte(hashPart), unixBytes(s.now().Unix()))
}

// accessed stamps a path as used now, for GC's least recently used order.
// An adopted path is only that: the client it was pulled for asked a
// reader's question, and no writer was told anything (writer_ttl).
func (s *Store) accessed(tx kv.Tx, hashPart string) error {
	return tx.Bucket(bAccess).Put([]byte(hashPart), unixBytes(s.now().Unix()))
}

// keepServed commits an upload of a path the index already has, which
// check found to describe it exactly: the record and its blob stay as
// they are (even when the upload came in another compression), so not a
// byte a client fetches changes. Only the upload's signatures, and the
// cache's own (a key may have been added since), are merged in: they sign
// the same fingerprint. The access time is refreshed.
//
// The merge never grows the record past the limits: the cache's own
// signatures and the stored ones come first, and the upload's new ones
// are dropped once the record holds max_signatures or would render past
// max_narinfo_size. Dropping rather than refusing: the upload is of a
// path the cache already serves correctly, a client re-sending it (nix
// copy from a machine that signed it too) must not fail for it, and the
// signatures that are kept are the ones hosts already use.
//
// A record stored before the limits, over them already, keeps its
// signatures as they are (nothing stored is dropped; it is served
// trimmed, servedSigs) and gets none added.
func (s *Store) keepServed(tx kv.Tx, hashPart string, old pathRec, ni *narinfo.NarInfo) error {
	ni.Sign(s.opts.SignKeys...)
	if s.opts.Limits.SigsWithin(old.baseSize(), old.Sigs) {
		old.Sigs = s.boundSigs(&old, old.Sigs, ni.Sigs)
	}
	if err := putJSON(tx.Bucket(bPaths), []byte(hashPart), old); err != nil {
		return err
	}
	return s.uploaded(tx, hashPart)
}

// boundSigs is the signatures rec keeps of lists (in order of
// preference, see limits.BoundSigs), sorted. What does not fit is logged.
func (s *Store) boundSigs(rec *pathRec, lists ...[]string) []string {
	kept, dropped := s.opts.Limits.BoundSigs(rec.baseSize(), s.ownNames, lists...)
	if len(dropped) > 0 {
		s.log.Info("signatures not kept: the record is at limits.max_signatures or limits.max_narinfo_size",
			"path", rec.StorePath, "kept", len(kept), "dropped", len(dropped))
	}
	slices.Sort(kept)
	return slices.Compact(kept)
}

// atMost reads r, failing with err once more than left bytes came.
type atMost struct {
	r    io.Reader
	left int64
	err  error
}

func (a *atMost) Read(p []byte) (int, error) {
	if a.left < 0 {
		return 0, a.err
	}
	if int64(len(p)) > a.left+1 {
		p = p[:a.left+1]
	}
	n, err := a.r.Read(p)
	a.left -= int64(n)
	if a.left < 0 {
		return n, a.err
	}
	return n, err
}
