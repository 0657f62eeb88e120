package upload

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"slices"
	"strconv"

	"github.com/bos55/concordia/internal/blob/diskblob"
	"github.com/bos55/concordia/internal/compress"
	"github.com/bos55/concordia/internal/kv"
	"github.com/bos55/concordia/internal/limits"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/pkg/narinfo"
)

func unixBytes(t int64) []byte { return strconv.AppendInt(nil, t, 10) }

func parseUnix(b []byte) int64 {
	n, _ := strconv.ParseInt(string(b), 10, 64)
	return n
}

// touch records an access in memory; flushAccess writes them in one
// transaction, so reads never wait for a disk write.
func (s *Store) touch(hashPart string) {
	now := s.now().Unix()
	s.accessMu.Lock()
	s.access[hashPart] = now
	s.accessMu.Unlock()
}

// ToldWriter records, in memory like an access, that a writer got the
// narinfo of hashPart (store.WriterTold): GC keeps the path for
// Options.WriterTTL from then.
func (s *Store) ToldWriter(hashPart string) {
	now := s.now().Unix()
	s.accessMu.Lock()
	s.told[hashPart] = now
	s.accessMu.Unlock()
}

func (s *Store) flushAccess() {
	s.accessMu.Lock()
	pending, told := s.access, s.told
	s.access, s.told = map[string]int64{}, map[string]int64{}
	s.accessMu.Unlock()
	if len(pending) == 0 && len(told) == 0 {
		return
	}
	err := s.db.Update(func(tx kv.Tx) error {
		paths := tx.Bucket(bPaths)
		for _, m := range []struct {
			b     []byte
			times map[string]int64
		}{{bAccess, pending}, {bTold, told}} {
			b := tx.Bucket(m.b)
			for hp, t := range m.times {
				if paths.Get([]byte(hp)) == nil {
					continue // collected meanwhile
				}
				if err := b.Put([]byte(hp), unixBytes(t)); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		s.log.Warn("access times not recorded", "err", err)
	}
}

func (s *Store) record(hashPart string) (*pathRec, error) {
	var rec pathRec
	var found bool
	err := s.db.View(func(tx kv.Tx) error {
		var err error
		found, err = getJSON(tx.Bucket(bPaths), []byte(hashPart), &rec)
		return err
	})
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, store.ErrNotFound
	}
	return &rec, nil
}

func (s *Store) full(base string) string {
	if base == "" {
		return ""
	}
	return s.storeDir + "/" + base
}

// PathInfo implements store.Store.
func (s *Store) PathInfo(ctx context.Context, hashPart string) (*store.PathInfo, error) {
	if !narinfo.ValidHashPart(hashPart) {
		return nil, store.ErrNotFound
	}
	rec, err := s.record(hashPart)
	if err != nil {
		return nil, err
	}
	s.touch(hashPart)
	refs := make([]string, len(rec.References))
	for i, r := range rec.References {
		refs[i] = s.full(r)
	}
	slices.Sort(refs)
	return &store.PathInfo{
		StorePath:  rec.StorePath,
		NarHash:    rec.NarHash,
		NarSize:    rec.NarSize,
		References: refs,
		Deriver:    s.full(rec.Deriver),
		Sigs:       s.servedSigs(rec),
		CA:         rec.CA,
		Registered: rec.Registered,
		Origin:     rec.Upstream,
	}, nil
}

// NarInfo returns the stored narinfo of hashPart as accepted (with the
// cache's signatures), URL and Compression naming the stored file.
func (s *Store) NarInfo(ctx context.Context, hashPart string) (*narinfo.NarInfo, error) {
	if !narinfo.ValidHashPart(hashPart) {
		return nil, store.ErrNotFound
	}
	rec, err := s.record(hashPart)
	if err != nil {
		return nil, err
	}
	s.touch(hashPart)
	ni := rec.narinfo()
	ni.Sigs = s.servedSigs(rec)
	return ni, nil
}

// narinfo is the record as a narinfo document, without signatures.
func (r *pathRec) narinfo() *narinfo.NarInfo {
	fh := narinfo.SHA256(r.FileHash)
	return &narinfo.NarInfo{
		StorePath: r.StorePath, URL: "nar/" + r.Blob, Compression: r.Compression,
		FileHash: &fh, FileSize: r.FileSize, NarHash: narinfo.SHA256(r.NarHash), NarSize: r.NarSize,
		References: slices.Clone(r.References), Deriver: r.Deriver, System: r.System, CA: r.CA,
	}
}

// baseSize is the length of the record's narinfo without Sig lines.
func (r *pathRec) baseSize() int { return len(r.narinfo().String()) }

// servedSigs is the record's signatures as served: all of them, unless
// the record is over the limits (stored before they existed, when every
// upload of a path added its signatures), then the cache's own and as
// many of the others as fit (limits.BoundSigs).
func (s *Store) servedSigs(rec *pathRec) []string {
	l := s.opts.Limits
	var n int
	for _, sig := range rec.Sigs {
		n += limits.SigLineCost(sig)
	}
	// Records accepted under the limits pass here without rendering.
	if len(rec.Sigs) <= l.MaxSignatures && int64(n) <= l.MaxNarinfoSize/4 {
		return slices.Clone(rec.Sigs)
	}
	base := rec.baseSize()
	if l.SigsWithin(base, rec.Sigs) {
		return slices.Clone(rec.Sigs)
	}
	kept, _ := l.BoundSigs(base, s.ownNames, rec.Sigs)
	slices.Sort(kept)
	return kept
}

func (s *Store) recordFor(info *store.PathInfo) (*pathRec, error) {
	_, hp, _, err := narinfo.ParseStorePath(info.StorePath)
	if err != nil {
		return nil, store.ErrNotFound
	}
	rec, err := s.record(hp)
	if err != nil {
		return nil, err
	}
	// A path re-uploaded with other contents since info was read: the
	// caller's narinfo would not match these bytes.
	if info.NarHash != nil && !bytes.Equal(info.NarHash, rec.NarHash) {
		return nil, store.ErrNotFound
	}
	return rec, nil
}

// openBlob opens a blob file. A local file is returned as the *os.File
// itself, which net/http sends with sendfile.
func (s *Store) openBlob(name string) (store.ReadSeekCloser, error) {
	f, err := s.blobs.Open(bg, name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("NAR file %s: %w", name, store.ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	if df, ok := f.(*diskblob.File); ok {
		return df.File, nil
	}
	return f, nil
}

// NAR implements store.Store: the stored file, decompressed.
func (s *Store) NAR(ctx context.Context, info *store.PathInfo, w io.Writer) error {
	rec, err := s.recordFor(info)
	if err != nil {
		return err
	}
	if err := s.withinLimits(rec.Blob, rec.Compression, rec.FileSize, rec.NarSize); err != nil {
		return fmt.Errorf("NAR of %s: %w", rec.StorePath, err)
	}
	f, err := s.openBlob(rec.Blob)
	if err != nil {
		return err
	}
	defer f.Close()
	l := s.opts.Limits
	dec, err := compress.NewReaderLimits(f, rec.Compression, l.Decode(int64(rec.NarSize)))
	if err != nil {
		return fmt.Errorf("NAR of %s: %w", rec.StorePath, limits.Stored(l.Check(err)))
	}
	defer dec.Close()
	n, err := io.Copy(w, dec)
	if err != nil {
		return fmt.Errorf("NAR of %s: %w", rec.StorePath, limits.Stored(l.Check(err)))
	}
	if uint64(n) != rec.NarSize {
		return fmt.Errorf("NAR of %s: file gave %d bytes, want %d (run cache verify)", rec.StorePath, n, rec.NarSize)
	}
	return nil
}

// NARFrom implements store.RangeNAR for NARs stored uncompressed (the
// file is the NAR); a compressed one would have to be decoded from its
// start, which is what NAR does, so that is errors.ErrUnsupported.
func (s *Store) NARFrom(ctx context.Context, info *store.PathInfo, offset int64, w io.Writer) error {
	rec, err := s.recordFor(info)
	if err != nil {
		return err
	}
	if rec.Compression != "none" {
		return errors.ErrUnsupported
	}
	f, err := s.openBlob(rec.Blob)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return err
	}
	if _, err := io.Copy(w, f); err != nil {
		return fmt.Errorf("NAR of %s from %d: %w", rec.StorePath, offset, err)
	}
	return nil
}

// withinLimits refuses, before anything is opened, to decode a stored
// blob its record shows to be over the limits (stored before they were
// lowered): its NAR size, or a ratio of NAR to file size that only a bomb
// reaches. What the record cannot show (an xz dictionary, a zstd window)
// the decoder refuses at the header, before allocating.
func (s *Store) withinLimits(blob, comp string, fileSize uint64, narSize uint64) error {
	l := s.opts.Limits
	var err error
	switch {
	case narSize > uint64(l.MaxNARSize):
		err = &limits.Error{Key: limits.KeyNARSize, Max: l.MaxNARSize, Size: true,
			Err: fmt.Errorf("stored NAR %s is %d bytes", blob, narSize)}
	case comp != "none" && l.MaxRatio > 0 && narSize > compress.DefaultRatioFloor && narSize/max(fileSize, 1) > uint64(l.MaxRatio):
		err = &limits.Error{Key: limits.KeyRatio, Max: l.MaxRatio, Size: true,
			Err: fmt.Errorf("stored NAR %s decompresses %d:1", blob, narSize/max(fileSize, 1))}
	}
	return limits.Stored(err)
}

// OpenFileNAR implements store.FileNAR: the stored file as uploaded.
func (s *Store) OpenFileNAR(ctx context.Context, info *store.PathInfo) (store.ReadSeekCloser, string, []byte, int64, error) {
	rec, err := s.recordFor(info)
	if err != nil {
		return nil, "", nil, 0, err
	}
	f, err := s.openBlob(rec.Blob)
	if err != nil {
		return nil, "", nil, 0, err
	}
	return f, rec.Compression, rec.FileHash, int64(rec.FileSize), nil
}

// OpenBlob opens a claimed NAR file by its name ("<filehash>.nar.zst"),
// for serving GET /nar/<name> directly. Pending blobs are not served.
func (s *Store) OpenBlob(ctx context.Context, name string) (store.ReadSeekCloser, int64, error) {
	h, comp, err := ParseNARName(name)
	if err != nil {
		return nil, 0, store.ErrNotFound
	}
	// A bare ".nar" is the name Nix gave a gzip NAR too (blobNames).
	var rec blobRec
	var canon string
	err = s.db.View(func(tx kv.Tx) error {
		for _, n := range blobNames(h, comp) {
			var r blobRec
			found, err := getJSON(tx.Bucket(bBlobs), []byte(n), &r)
			if err != nil {
				return err
			}
			if found && r.Refs > 0 {
				rec, canon = r, n
				return nil
			}
		}
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	if canon == "" {
		return nil, 0, store.ErrNotFound
	}
	f, err := s.openBlob(canon)
	if err != nil {
		return nil, 0, err
	}
	return f, rec.FileSize, nil
}

func (s *Store) getDoc(bucket []byte, key string) ([]byte, error) {
	var out []byte
	err := s.db.View(func(tx kv.Tx) error {
		if v := tx.Bucket(bucket).Get([]byte(key)); v != nil {
			out = bytes.Clone(v)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if out == nil {
		return nil, store.ErrNotFound
	}
	return out, nil
}

// Listing returns the uploaded .ls document of a path present here.
func (s *Store) Listing(ctx context.Context, hashPart string) ([]byte, error) {
	if _, err := s.record(hashPart); err != nil {
		return nil, err
	}
	doc, err := s.getDoc(bListings, hashPart)
	if err != nil {
		return nil, err
	}
	if len(doc) < 8 {
		return nil, fmt.Errorf("listing record of %s: too short", hashPart)
	}
	return doc[8:], nil
}

// Realisation implements store.Realisations.
func (s *Store) Realisation(ctx context.Context, id string) ([]byte, error) {
	return s.getDoc(bReal, id)
}
