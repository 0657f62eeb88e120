package upload

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"

	"github.com/nix-community/go-nix/pkg/nixbase32"
	bolt "go.etcd.io/bbolt"

	"github.com/bos55/concordia/internal/compress"
	"github.com/bos55/concordia/internal/limits"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/pkg/nar"
	"github.com/bos55/concordia/pkg/narinfo"
)

const tmpPrefix = ".tmp-"

// errWriter remembers the first write error, so a full disk is reported
// as such rather than as the read error the tee turns it into.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	n, err := e.w.Write(p)
	if err != nil {
		e.err = err
	}
	return n, err
}

// errReader remembers the first read error other than io.EOF.
type errReader struct {
	r   io.Reader
	err error
}

func (e *errReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF && e.err == nil {
		e.err = err
	}
	return n, err
}

// countHash hashes and counts what is written to it.
type countHash struct {
	h hash.Hash
	n int64
}

func (c *countHash) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return c.h.Write(p)
}

// PutNAR stores the NAR file name ("<filehash>.nar.zst") from body. In one
// pass it writes the bytes to a temp file, hashes them (FileHash,
// FileSize), decompresses them and validates and hashes the NAR (NarHash,
// NarSize), so memory stays bounded whatever the size. The name's file hash
// must match the bytes, else ErrInvalid and nothing is kept. The blob is
// pending (not served) until a narinfo claims it.
func (s *Store) PutNAR(ctx context.Context, name string, body io.Reader) (*BlobInfo, error) {
	info, err := s.putNAR(ctx, name, body)
	s.metrics.upload("nar", err)
	if info != nil {
		s.metrics.received.Add(float64(info.FileSize))
	}
	return info, err
}

func (s *Store) putNAR(ctx context.Context, name string, body io.Reader) (info *BlobInfo, err error) {
	wantHash, comp, err := ParseNARName(name)
	if err != nil {
		return nil, err
	}
	tmp, err := os.CreateTemp(s.blobDir, tmpPrefix+"*")
	if err != nil {
		return nil, mapErr(fmt.Errorf("put NAR %s: %w", name, err))
	}
	renamed := false
	defer func() {
		if !renamed {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()

	buf := fileBufs.Get().(*bufio.Writer)
	buf.Reset(tmp)
	defer func() { buf.Reset(nil); fileBufs.Put(buf) }()
	fw := &errWriter{w: buf}
	file := &countHash{h: sha256.New()}
	narSum := &countHash{h: sha256.New()}

	// Two stages on two goroutines, so an upload's latency is the
	// slower of them rather than their sum: this one receives, writes
	// and hashes the file; verifyStream decompresses, validates and
	// hashes the NAR from a pipe.
	pr, pw := io.Pipe()
	done := make(chan verifyResult, 1)
	go func() { done <- verifyStream(pr, comp, narSum, s.opts.Limits) }()
	bufp := copyBufs.Get().(*[]byte)
	in := &errReader{r: body}
	_, copyErr := io.CopyBuffer(io.MultiWriter(fw, file, pw), in, *bufp)
	copyBufs.Put(bufp)
	if copyErr != nil {
		pw.CloseWithError(copyErr)
	} else {
		pw.Close()
	}
	res := <-done
	if fw.err != nil {
		return nil, mapErr(fmt.Errorf("put NAR %s: write: %w", name, fw.err))
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if in.err != nil {
		// The connection broke or the body passed the server's size
		// limit (the handler finds *http.MaxBytesError in the chain
		// and answers 413): that, not its effect on the NAR, is why.
		return nil, fmt.Errorf("%w: NAR %s: read body: %w", store.ErrInvalid, name, in.err)
	}
	if res.err != nil {
		// A NAR format error or a decompression error (corrupt or
		// truncated stream).
		return nil, fmt.Errorf("%w: NAR %s: %w", store.ErrInvalid, name, res.err)
	}
	if copyErr != nil {
		return nil, fmt.Errorf("put NAR %s: %w", name, copyErr)
	}
	if narSum.n != res.narSize {
		return nil, fmt.Errorf("%w: NAR %s: %d bytes of trailing data after the NAR", store.ErrInvalid, name, narSum.n-res.narSize)
	}
	// Whatever follows the compressed stream is part of the file (and
	// of FileHash) but not of the NAR: refuse it.
	if res.extra > 0 {
		return nil, fmt.Errorf("%w: NAR %s: %d bytes after the end of the %s stream", store.ErrInvalid, name, res.extra, comp)
	}
	got := file.h.Sum(nil)
	if !bytes.Equal(got, wantHash) {
		return nil, fmt.Errorf("%w: NAR %s: file hash mismatch: the name says %s, the %d bytes received hash to %s",
			store.ErrInvalid, name, nixbase32.EncodeToString(wantHash), file.n, nixbase32.EncodeToString(got))
	}
	if err := buf.Flush(); err != nil {
		return nil, mapErr(fmt.Errorf("put NAR %s: write: %w", name, err))
	}
	canon := nixbase32.EncodeToString(got) + extFor(comp)
	info = &BlobInfo{
		Name: canon, Compression: comp, FileHash: got, FileSize: file.n,
		NarHash: narSum.h.Sum(nil), NarSize: uint64(res.narSize),
	}
	rec := blobRec{
		Compression: comp, FileHash: got, FileSize: file.n,
		NarHash: info.NarHash, NarSize: info.NarSize, Created: s.now(),
	}

	s.fileMu.Lock()
	defer s.fileMu.Unlock()
	final := filepath.Join(s.blobDir, canon)
	s.pendMu.Lock()
	p := s.pending[canon]
	s.pendMu.Unlock()
	if p != nil && p.failed() {
		// The last upload of these bytes could not be made durable:
		// this one replaces it (and its file, if still there).
		s.dropPending(canon, p)
		p = nil
	}
	var indexed, claimed bool
	err = s.db.View(func(tx *bolt.Tx) error {
		var r blobRec
		found, err := getJSON(tx.Bucket(bBlobs), []byte(canon), &r)
		indexed, claimed = found, found && r.Refs > 0
		return err
	})
	if err != nil {
		return nil, mapErr(fmt.Errorf("put NAR %s: index: %w", name, err))
	}
	if _, err := os.Stat(final); err == nil && !indexed && p == nil {
		// A file nothing accounts for cannot be trusted to be durable
		// (it should not exist: Open removes such files): replace it.
		os.Remove(final)
	} else if err == nil {
		// Stored already (the deferred cleanup drops our copy):
		// claimed, or pending from another upload, whose durability
		// we then share, or left by paths since deleted.
		info.Existed = true
		if claimed {
			return info, nil
		}
		s.pendMu.Lock()
		if p != nil {
			p.rec.Created = rec.Created // its grace period restarts
		} else {
			// An index record whose paths were deleted: the file was
			// durable when they were accepted.
			s.pending[canon] = &pendingBlob{rec: rec, durable: closedChan}
		}
		s.pendMu.Unlock()
		return info, nil
	}
	if err := os.Rename(tmp.Name(), final); err != nil {
		return nil, mapErr(fmt.Errorf("put NAR %s: %w", name, err))
	}
	renamed = true
	p = &pendingBlob{rec: rec, durable: make(chan struct{})}
	s.pendMu.Lock()
	s.pending[canon] = p
	s.pendMu.Unlock()
	s.wg.Add(1)
	go s.makeDurable(canon, p, tmp)
	return info, nil
}

// pendingBlob is a verified NAR file no narinfo has claimed yet.
type pendingBlob struct {
	rec blobRec // Created is guarded by Store.pendMu
	// durable is closed once the file's bytes and its directory entry
	// are on disk (err is nil) or could not be put there (err says
	// why). A narinfo claiming the file is committed only after that.
	durable chan struct{}
	err     error
}

// syncFile is f.Sync, replaced by tests to make fsync slow or fail.
var syncFile = (*os.File).Sync

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func (p *pendingBlob) failed() bool {
	select {
	case <-p.durable:
		return p.err != nil
	default:
		return false
	}
}

// makeDurable fsyncs an uploaded NAR file and its directory, both at
// once, while the client goes on to PUT the narinfo: nix copy uploads one
// path after another, so this takes the file's fsyncs off the critical
// path. The file was renamed into place first; that is safe because a
// blob file is published only by the narinfo that claims it, which waits
// for durable, and a file without a record is removed by Open.
func (s *Store) makeDurable(canon string, p *pendingBlob, f *os.File) {
	defer s.wg.Done()
	dirDone := make(chan error, 1)
	go func() { dirDone <- syncDir(s.blobDir) }()
	err := syncFile(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if derr := <-dirDone; err == nil {
		err = derr
	}
	if err != nil {
		p.err = mapErr(fmt.Errorf("NAR %s could not be stored durably: %w", canon, err))
		s.log.Error("uploaded NAR not durable, dropping it", "blob", canon, "err", err)
	}
	close(p.durable)
	if err != nil {
		// The file goes now; the failed entry stays, so the narinfo
		// that comes next gets this error (a full disk is 507), until a
		// new upload of the NAR replaces it or a sweep drops it.
		s.fileMu.Lock()
		s.pendMu.Lock()
		if s.pending[canon] == p {
			os.Remove(filepath.Join(s.blobDir, canon))
		}
		s.pendMu.Unlock()
		s.fileMu.Unlock()
	}
}

// dropPending removes a failed pending blob and its file, unless another
// upload has replaced it since. The caller holds fileMu.
func (s *Store) dropPending(canon string, p *pendingBlob) {
	s.pendMu.Lock()
	defer s.pendMu.Unlock()
	if s.pending[canon] == p {
		delete(s.pending, canon)
		os.Remove(filepath.Join(s.blobDir, canon))
	}
}

// errNotDurable says a pending blob was replaced by a re-upload whose
// fsync is still running while a narinfo tried to claim it; the claim
// waits and tries again.
var errNotDurable = errors.New("NAR not yet durable")

// The buffers of an upload are pooled: a closure is mostly small paths,
// for which allocating (and clearing) fresh 256 KiB buffers costs more
// than the upload's own work.
var (
	copyBufs   = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}
	fileBufs   = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 256<<10) }}
	verifyBufs = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 256<<10) }}
)

type verifyResult struct {
	narSize int64
	extra   int64 // compressed bytes after the end of the stream
	err     error
}

// verifyStream is the second stage of PutNAR. It always reads r to the
// end (or closes it with its error), so the first stage never blocks on
// the pipe. The limits apply as the bytes stream: a NAR over one stops
// the upload at that byte, before the rest reaches the disk.
func verifyStream(r *io.PipeReader, comp string, narSum *countHash, l limits.Limits) (res verifyResult) {
	defer func() {
		if res.err != nil {
			r.CloseWithError(res.err)
		} else {
			r.Close()
		}
	}()
	// Decoders make many small reads (block headers); served from a
	// buffer they cost no pipe handoff each.
	br := verifyBufs.Get().(*bufio.Reader)
	br.Reset(r)
	defer func() { br.Reset(nil); verifyBufs.Put(br) }()
	dec, err := compress.NewReaderLimits(br, comp, l.Decode(0))
	if err != nil {
		res.err = l.Check(err)
		return res
	}
	defer dec.Close()
	res.narSize, res.err = nar.ValidateOptions(io.TeeReader(dec, narSum), l.NAR())
	if res.err != nil {
		res.err = l.Check(res.err)
		return res
	}
	res.extra, res.err = io.Copy(io.Discard, br)
	return res
}

// extFor is the suffix of a stored NAR compressed with comp.
func extFor(comp string) string {
	if ext, ok := narinfo.NARSuffix(comp); ok {
		return ext
	}
	return ".nar"
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func isNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// HasNAR reports whether the NAR file name is stored, pending or claimed:
// nix copy HEADs a NAR before PUTting it and skips the upload on 200.
func (s *Store) HasNAR(ctx context.Context, name string) (bool, error) {
	h, comp, err := ParseNARName(name)
	if err != nil {
		return false, err
	}
	canon := nixbase32.EncodeToString(h) + extFor(comp)
	s.pendMu.Lock()
	p := s.pending[canon]
	s.pendMu.Unlock()
	if p != nil && !p.failed() {
		return true, nil
	}
	var ok bool
	err = s.db.View(func(tx *bolt.Tx) error {
		ok = tx.Bucket(bBlobs).Get([]byte(canon)) != nil
		return nil
	})
	return ok, err
}

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

func invalidf(format string, a ...any) error {
	return fmt.Errorf("%w: %s", store.ErrInvalid, fmt.Sprintf(format, a...))
}

func (s *Store) putNarInfo(ctx context.Context, hashPart string, body io.Reader) error {
	if !narinfo.ValidHashPart(hashPart) {
		return invalidf("%q is not a 32-character nix32 hash", hashPart)
	}
	l := s.opts.Limits
	ni, err := narinfo.Parse(&atMost{r: body, left: l.MaxNarinfoSize,
		err: l.NarinfoTooLarge(invalidf("narinfo of %s larger than %d bytes", hashPart, l.MaxNarinfoSize))})
	if err != nil {
		if !errors.Is(err, narinfo.ErrInvalid) {
			// The body: over the limit, past the server's, or broken.
			return fmt.Errorf("%w: narinfo of %s: %w", store.ErrInvalid, hashPart, err)
		}
		return fmt.Errorf("%w: %v", store.ErrInvalid, err)
	}
	if len(ni.Sigs) > l.MaxSignatures {
		return l.TooManySignatures(len(ni.Sigs), invalidf("narinfo of %s", hashPart))
	}
	dir, hp, _, err := narinfo.ParseStorePath(ni.StorePath)
	if err != nil {
		return fmt.Errorf("%w: StorePath: %v", store.ErrInvalid, err)
	}
	if dir != s.storeDir {
		return invalidf("StorePath %s is not in %s", ni.StorePath, s.storeDir)
	}
	if hp != hashPart {
		return invalidf("StorePath %s does not have the hash part %s of the URL", ni.StorePath, hashPart)
	}
	blobName, ok := strings.CutPrefix(ni.URL, "nar/")
	if !ok {
		return invalidf("URL %q must be nar/<file hash>.nar[.ext]", ni.URL)
	}
	fh, comp, err := ParseNARName(blobName)
	if err != nil {
		return err
	}
	if ni.Compression != comp {
		return invalidf("Compression %q does not match the NAR file %s (%s)", ni.Compression, blobName, comp)
	}
	canon := nixbase32.EncodeToString(fh) + extFor(comp)
	var refs []string // other than itself
	for _, ref := range ni.References {
		rh, _, err := narinfo.ParseBaseName(ref)
		if err != nil {
			return fmt.Errorf("%w: reference %s: %v", store.ErrInvalid, ref, err)
		}
		if rh == hashPart && s.storeDir+"/"+ref != ni.StorePath {
			return invalidf("reference %s has the hash of %s but another name", ref, ni.StorePath)
		}
		if rh != hashPart {
			refs = append(refs, ref)
		}
	}
	if ni.Deriver != "" {
		if _, _, err := narinfo.ParseDerivation(ni.Deriver); err != nil {
			return invalidf("Deriver %q is not a .drv store path base name", ni.Deriver)
		}
	}

	// References found in another store are settled before the write
	// transaction, which then only has to look at its own index.
	var here map[string]bool
	if err := s.db.View(func(tx *bolt.Tx) error {
		here = map[string]bool{}
		for _, ref := range refs {
			here[ref] = hasBase(tx.Bucket(bPaths), s.storeDir, ref)
		}
		return nil
	}); err != nil {
		return err
	}
	var elsewhere []string
	for _, ref := range refs {
		if !here[ref] && s.otherHas(ctx, hashOf(ref), ref) {
			elsewhere = append(elsewhere, ref)
		}
	}
	// So is what another store serves under this hash part; the write
	// transaction compares the upload with it and with its own record.
	other, err := s.servedElsewhere(ctx, hashPart)
	if err != nil {
		return err
	}

	var claimed bool
	for attempt := 0; ; attempt++ {
		// A pending NAR must be durable before a narinfo claims it;
		// wait for that outside the index's write lock.
		s.pendMu.Lock()
		p := s.pending[canon]
		s.pendMu.Unlock()
		if p != nil {
			select {
			case <-p.durable:
			case <-ctx.Done():
				return ctx.Err()
			}
			if p.err != nil {
				return p.err
			}
		}
		claimed, err = s.commitNarInfo(ni, hashPart, canon, comp, refs, elsewhere, other)
		if !errors.Is(err, errNotDurable) || attempt == 10 {
			break
		}
	}
	if claimed {
		// The index now holds the blob with a claim. Until this
		// line the entry is redundant, which is harmless: a sweep
		// keeps pending blobs the index claims. An upload that was a
		// no-op claimed nothing: its blob, if another, stays pending
		// until a sweep drops it.
		s.pendMu.Lock()
		delete(s.pending, canon)
		s.pendMu.Unlock()
	}
	return mapErr(err)
}

// commitNarInfo is the write transaction of putNarInfo. other is what
// another store serves under hashPart (nil if none). The comparison with
// the index's own record happens in the same transaction as the commit,
// so of two conflicting uploads racing, exactly one is accepted. claimed
// reports whether the upload's blob is now claimed by a new record (not
// when the path was there already).
func (s *Store) commitNarInfo(ni *narinfo.NarInfo, hashPart, canon, comp string, refs, elsewhere []string, other *served) (claimed bool, err error) {
	err = s.db.Update(func(tx *bolt.Tx) error {
		blobs := tx.Bucket(bBlobs)
		var b blobRec
		found, err := getJSON(blobs, []byte(canon), &b)
		if err != nil {
			return err
		}
		if !found {
			s.pendMu.Lock()
			p := s.pending[canon]
			if p != nil {
				b = p.rec
			}
			s.pendMu.Unlock()
			if p != nil {
				select {
				case <-p.durable:
				default:
					return errNotDurable
				}
				if p.err != nil {
					return p.err
				}
				found = true
			}
		}
		if !found {
			return invalidf("URL %s names a NAR that was not uploaded (PUT it first)", ni.URL)
		}
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
		paths := tx.Bucket(bPaths)
		var old pathRec
		hadOld, err := getJSON(paths, []byte(hashPart), &old)
		if err != nil {
			return err
		}
		if hadOld {
			if err := servedRec(&old).check(ni); err != nil {
				return err
			}
		}
		if other != nil {
			if err := other.check(ni); err != nil {
				return err
			}
		}
		if hadOld {
			return s.keepServed(tx, hashPart, old, ni)
		}
		if err := s.checkTomb(tx, hashPart, ni); err != nil {
			return err
		}
		var missing []string
		for _, ref := range refs {
			if hasBase(paths, s.storeDir, ref) || slices.Contains(elsewhere, ref) {
				continue
			}
			missing = append(missing, s.storeDir+"/"+ref)
		}
		if len(missing) > 0 {
			return invalidf("references not in the cache (upload them first): %s", strings.Join(missing, " "))
		}

		fhash := narinfo.SHA256(b.FileHash)
		ni.FileHash, ni.FileSize = &fhash, uint64(b.FileSize)
		ni.URL = "nar/" + canon
		ni.Sign(s.opts.SignKeys...)
		rec := pathRec{
			StorePath: ni.StorePath, Blob: canon, Compression: comp,
			FileHash: b.FileHash, FileSize: uint64(b.FileSize), NarHash: b.NarHash, NarSize: b.NarSize,
			References: ni.References, Deriver: ni.Deriver, System: ni.System, CA: ni.CA,
			Registered: s.now().UTC(),
		}
		rec.Sigs = s.boundSigs(&rec, ni.Sigs)
		b.Refs++
		if err := putJSON(blobs, []byte(canon), b); err != nil {
			return err
		}
		if err := putJSON(paths, []byte(hashPart), rec); err != nil {
			return err
		}
		claimed = true
		return tx.Bucket(bAccess).Put([]byte(hashPart), unixBytes(s.now().Unix()))
	})
	return claimed && err == nil, err
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
func (s *Store) keepServed(tx *bolt.Tx, hashPart string, old pathRec, ni *narinfo.NarInfo) error {
	ni.Sign(s.opts.SignKeys...)
	if s.opts.Limits.SigsWithin(old.baseSize(), old.Sigs) {
		old.Sigs = s.boundSigs(&old, old.Sigs, ni.Sigs)
	}
	if err := putJSON(tx.Bucket(bPaths), []byte(hashPart), old); err != nil {
		return err
	}
	return tx.Bucket(bAccess).Put([]byte(hashPart), unixBytes(s.now().Unix()))
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
	err = s.db.Update(func(tx *bolt.Tx) error {
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
	return s.putOnce(bucket, key, data, sameJSON, what, func(tx *bolt.Tx) error {
		return putJSON(tx.Bucket(bRealMeta), []byte(key), meta)
	})
}
