package upload

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"slices"
	"strings"
	"sync"
	"syscall"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/bos55/concordia/internal/blob"
	"github.com/bos55/concordia/internal/compress"
	"github.com/bos55/concordia/internal/kv"
	"github.com/bos55/concordia/internal/limits"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/pkg/nar"
	"github.com/bos55/concordia/pkg/narinfo"
)

// NAR intake: PutNAR receives, verifies and keeps an uploaded NAR file as
// a pending blob, which a narinfo then claims (commit.go).

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

func (s *Store) putNAR(ctx context.Context, name string, body io.Reader) (*BlobInfo, error) {
	wantHash, comp, err := ParseNARName(name)
	if err != nil {
		return nil, err
	}
	// A NAR file of at most InlineMax bytes is read into memory whole,
	// verified there without a second goroutine, and kept in memory
	// until its narinfo commits it into the index (small.go).
	var head []byte
	if s.inline != nil && s.opts.InlineMax > 0 {
		var small bool
		head, small, err = readHead(body, s.opts.InlineMax)
		if small || err != nil {
			defer putHead(head)
			return s.putSmallNAR(ctx, name, wantHash, comp, head, err)
		}
		body = io.MultiReader(bytes.NewReader(head), body)
		defer putHead(head)
	}
	// The blob is written under its name from the start where the name
	// is the one it will have (in S3: no copy at publish); a bare .nar
	// may turn out to be gzip, which Nix names so too.
	tmp, err := s.createFor(ctx, name)
	if err != nil {
		return nil, err
	}
	got, err := s.receive(ctx, name, comp, tmp, body)
	if err != nil {
		tmp.Close()
		return nil, err
	}
	info, rec, err := s.checkName(name, wantHash, got)
	if err != nil {
		tmp.Close()
		return nil, err
	}
	return s.placeFile(name, tmp, info, rec)
}

// placeFile publishes the verified temp file of NAR file name as the
// pending blob info.Name (place), closing it unless it was renamed, and
// bounds the pending NARs with it.
func (s *Store) placeFile(name string, tmp blob.Temp, info *BlobInfo, rec blobRec) (*BlobInfo, error) {
	renamed, err := s.place(name, info.Name, tmp, info, rec)
	if !renamed {
		tmp.Close()
	}
	if err != nil {
		return nil, err
	}
	if renamed {
		if err := s.boundPending(info.Name); err != nil {
			return nil, err
		}
	}
	return info, nil
}

// createFor starts the temp file of the upload of NAR file name.
func (s *Store) createFor(ctx context.Context, name string) (blob.Temp, error) {
	var tmp blob.Temp
	var err error
	if strings.HasSuffix(name, ".nar") {
		tmp, err = s.blobs.Create(ctx)
	} else {
		tmp, err = blob.CreateFor(ctx, s.blobs, name)
	}
	if err != nil {
		return nil, mapErr(fmt.Errorf("put NAR %s: %w", name, err))
	}
	return tmp, nil
}

// checkName checks that the bytes received hash to the file hash the
// name says, and describes the blob they are.
func (s *Store) checkName(name string, wantHash []byte, got *received) (*BlobInfo, blobRec, error) {
	if !bytes.Equal(got.fileHash, wantHash) {
		return nil, blobRec{}, fmt.Errorf("%w: NAR %s: file hash mismatch: the name says %s, the %d bytes received hash to %s",
			store.ErrInvalid, name, nixbase32.EncodeToString(wantHash), got.fileSize, nixbase32.EncodeToString(got.fileHash))
	}
	canon := nixbase32.EncodeToString(got.fileHash) + extFor(got.comp) // a bare .nar's compression, from its bytes
	info := &BlobInfo{
		Name: canon, Compression: got.comp, FileHash: got.fileHash, FileSize: got.fileSize,
		NarHash: got.narHash, NarSize: got.narSize,
	}
	rec := blobRec{
		Compression: got.comp, FileHash: got.fileHash, FileSize: got.fileSize,
		NarHash: got.narHash, NarSize: got.narSize, Created: s.now(),
	}
	return info, rec, nil
}

// received is what receive computed of an uploaded NAR file.
type received struct {
	comp     string // the compression it is in
	fileHash []byte
	fileSize int64
	narHash  []byte
	narSize  uint64
}

// receive writes body to tmp (flushed, not synced) while hashing it and,
// on a second goroutine, decompressing, validating and hashing the NAR,
// so an upload's latency is the slower of the two stages rather than
// their sum. Whatever is wrong with the body is ErrInvalid.
func (s *Store) receive(ctx context.Context, name, comp string, tmp blob.Temp, body io.Reader) (*received, error) {
	buf := fileBufs.Get().(*bufio.Writer)
	buf.Reset(tmp)
	defer func() { buf.Reset(nil); fileBufs.Put(buf) }()
	fw := &errWriter{w: buf}
	file := &countHash{h: sha256.New()}
	narSum := &countHash{h: sha256.New()}

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
	if err := s.checkReceived(ctx, name, res.comp, fw, in, res, copyErr, narSum); err != nil {
		return nil, err
	}
	if err := buf.Flush(); err != nil {
		return nil, mapErr(fmt.Errorf("put NAR %s: write: %w", name, err))
	}
	return &received{comp: res.comp, fileHash: file.h.Sum(nil), fileSize: file.n, narHash: narSum.h.Sum(nil), narSize: uint64(res.narSize)}, nil
}

// checkReceived says why an upload failed, of all the ways the stages
// noticed, by the first cause: the disk, the client going away, the body,
// then what the NAR itself is.
func (s *Store) checkReceived(ctx context.Context, name, comp string, fw *errWriter, in *errReader, res verifyResult, copyErr error, narSum *countHash) error {
	if fw.err != nil {
		return mapErr(fmt.Errorf("put NAR %s: write: %w", name, fw.err))
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if in.err != nil {
		// The connection broke or the body passed the server's size
		// limit (the handler finds *http.MaxBytesError in the chain
		// and answers 413): that, not its effect on the NAR, is why.
		return fmt.Errorf("%w: NAR %s: read body: %w", store.ErrInvalid, name, in.err)
	}
	if res.err != nil {
		// A NAR format error or a decompression error (corrupt or
		// truncated stream).
		return fmt.Errorf("%w: NAR %s: %w", store.ErrInvalid, name, res.err)
	}
	if copyErr != nil {
		return fmt.Errorf("put NAR %s: %w", name, copyErr)
	}
	if narSum.n != res.narSize {
		return fmt.Errorf("%w: NAR %s: %d bytes of trailing data after the NAR", store.ErrInvalid, name, narSum.n-res.narSize)
	}
	// Whatever follows the compressed stream is part of the file (and
	// of FileHash) but not of the NAR: refuse it.
	if res.extra > 0 {
		return fmt.Errorf("%w: NAR %s: %d bytes after the end of the %s stream", store.ErrInvalid, name, res.extra, comp)
	}
	return nil
}

// place makes the verified temp file tmp the pending blob canon, or, when
// the blob is stored already, leaves tmp to the caller's cleanup and sets
// info.Existed. renamed reports whether tmp is now the blob's file (its
// fsyncs then run in the background, makeDurable).
func (s *Store) place(name, canon string, tmp blob.Temp, info *BlobInfo, rec blobRec) (renamed bool, err error) {
	unlock, err := s.lockFiles()
	if err != nil {
		return false, mapErr(fmt.Errorf("put NAR %s: %w", name, err))
	}
	defer unlock()
	// A held small NAR's upload, sent again as a file (the memory bound
	// was reached meanwhile), shares it as a stored file's would.
	if existed, err := s.storedAlready(name, canon, info, rec, func(p *pendingBlob, stored bool) bool {
		return stored || p != nil && p.data != nil
	}); existed || err != nil {
		return false, err
	}
	if err := tmp.Publish(canon); err != nil {
		return false, mapErr(fmt.Errorf("put NAR %s: %w", name, err))
	}
	p := &pendingBlob{rec: rec, durable: make(chan struct{})}
	s.pendMu.Lock()
	s.setPendingLocked(canon, p)
	s.pendMu.Unlock()
	s.wg.Add(1)
	if !s.db.Shared() {
		go s.makeDurable(canon, p, tmp)
		return true, nil
	}
	s.makeDurable(canon, p, tmp)
	if p.err != nil {
		return true, p.err
	}
	if err := s.recordPending(canon, rec); err != nil {
		return true, mapErr(fmt.Errorf("put NAR %s: index: %w", name, err))
	}
	return true, nil
}

// storedAlready is the first step of placing the verified upload of blob
// canon, with the file lock held: a file nothing accounts for is removed,
// and when have says the blob is stored or pending already (given its
// pending entry, nil if none, and whether a file or inline blob of the
// name exists) info.Existed is set, an unclaimed blob made pending again
// for this upload, and existed is true: the caller keeps nothing.
func (s *Store) storedAlready(name, canon string, info *BlobInfo, rec blobRec, have func(p *pendingBlob, stored bool) bool) (existed bool, err error) {
	p := s.livePending(canon)
	if p != nil && p.unverified() {
		// Kept across a restart and not verified again yet: this
		// upload's verified bytes replace the file.
		s.pendMu.Lock()
		s.unpendLocked(canon)
		s.pendMu.Unlock()
		p = nil
	}
	indexed, claimed, err := s.indexedBlob(canon)
	if err != nil {
		return false, mapErr(fmt.Errorf("put NAR %s: index: %w", name, err))
	}
	_, statErr := s.blobs.Stat(bg, canon)
	stored := statErr == nil
	if stored && !indexed && p == nil {
		// A file nothing accounts for cannot be trusted to be durable
		// or intact (Open makes such files pending; this is one not
		// verified since): replace it.
		s.blobs.Remove(bg, canon)
		stored = false
	}
	if !have(p, stored) {
		return false, nil
	}
	// Stored already (the caller drops its copy): claimed, or pending
	// from another upload, whose durability is then shared, or left by
	// paths since deleted.
	info.Existed = true
	if !claimed {
		s.repend(canon, p, rec)
		if err := s.recordPending(canon, rec); err != nil {
			return true, mapErr(fmt.Errorf("put NAR %s: index: %w", name, err))
		}
	}
	return true, nil
}

// recordPending puts a verified, durable blob no path claims yet in a
// shared index, as a record without claims dated its upload: the narinfo
// that claims it may come to another replica, and GC and the sweeps of
// every replica must know it is pending (sweepUnclaimed drops it after
// the grace period, as any unclaimed record). An index this process owns
// keeps pending blobs in memory only (pending.go says why). The caller
// holds the file lock.
func (s *Store) recordPending(canon string, rec blobRec) error {
	if !s.db.Shared() {
		return nil
	}
	return s.db.Update(func(tx kv.Tx) error {
		b := tx.Bucket(bBlobs)
		var have blobRec
		found, err := getJSON(b, []byte(canon), &have)
		if err != nil {
			return err
		}
		if found && have.Refs > 0 {
			return nil // claimed meanwhile
		}
		rec.Refs = 0
		return putJSON(b, []byte(canon), rec)
	})
}

// livePending is the pending entry of canon, nil if none. The entry of an
// upload whose bytes could not be made durable is dropped (with its file,
// if still there): this upload replaces it. The caller holds fileMu.
func (s *Store) livePending(canon string) *pendingBlob {
	s.pendMu.Lock()
	p := s.pending[canon]
	s.pendMu.Unlock()
	if p != nil && p.failed() {
		s.dropPending(canon, p)
		return nil
	}
	return p
}

// indexedBlob reports whether the index has a record of blob canon, and
// whether a path claims it.
func (s *Store) indexedBlob(canon string) (indexed, claimed bool, err error) {
	err = s.db.View(func(tx kv.Tx) error {
		var r blobRec
		found, err := getJSON(tx.Bucket(bBlobs), []byte(canon), &r)
		indexed, claimed = found, found && r.Refs > 0
		return err
	})
	return indexed, claimed, err
}

// repend makes a stored, unclaimed blob pending again for a new upload of
// it: its grace period restarts.
func (s *Store) repend(canon string, p *pendingBlob, rec blobRec) {
	s.pendMu.Lock()
	defer s.pendMu.Unlock()
	if p != nil {
		p.rec.Created = rec.Created
		return
	}
	// An index record whose paths were deleted: the file was durable
	// when they were accepted.
	s.setPendingLocked(canon, &pendingBlob{rec: rec, durable: closedChan})
}

// pendingBlob is a verified NAR file no narinfo has claimed yet.
type pendingBlob struct {
	rec blobRec // Created is guarded by Store.pendMu
	// durable is closed once the file's bytes and its directory entry
	// are on disk (err is nil) or could not be put there (err says
	// why). A narinfo claiming the file is committed only after that.
	durable chan struct{}
	err     error
	// adopted is a file Open found without a record (kept across a
	// restart): durable is closed only once the first claim had it
	// verified again (verify, pending.go).
	adopted bool
	verify  sync.Once
	// data is the NAR file of a small upload kept in memory, not in a
	// file (small.go): its narinfo's commit writes it into the index.
	// Set once; guarded by Store.pendMu.
	data []byte
}

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
// for durable, and a file without a record that Open finds is verified
// and fsynced again before a narinfo claims it (pending.go). That order
// is why the NAR is not written with durable.File, whose Commit fsyncs
// before the rename, on the upload's critical path: here the fsyncs run
// while the client sends the narinfo, which waits for them, and the
// narinfo, not the file's name, is what publishes the blob. The directory
// fsync is shared with the NARs whose makeDurable runs at the same time
// (durable.DirSyncer).
func (s *Store) makeDurable(canon string, p *pendingBlob, f blob.Temp) {
	defer s.wg.Done()
	dirDone := make(chan error, 1)
	go func() { dirDone <- s.blobs.Sync(bg) }()
	err := f.Sync()
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
		unlock, lerr := s.lockFiles()
		if lerr != nil {
			return // the next Open or sweep finds the file
		}
		s.pendMu.Lock()
		if s.pending[canon] == p {
			s.blobs.Remove(bg, canon)
		}
		s.pendMu.Unlock()
		unlock()
	}
}

// dropPending removes a failed pending blob and its file, unless another
// upload has replaced it since. The caller holds fileMu.
func (s *Store) dropPending(canon string, p *pendingBlob) {
	s.pendMu.Lock()
	defer s.pendMu.Unlock()
	if s.pending[canon] == p {
		s.unpendLocked(canon)
		s.blobs.Remove(bg, canon)
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
	comp    string // the compression the stream was decoded as
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
	return verifyNAR(r, comp, narSum, l)
}

// verifyNAR decodes the NAR file r in compression comp ("none" for a bare
// .nar: found from its bytes), validates and hashes the NAR into narSum,
// and reads r to its end.
func verifyNAR(r io.Reader, comp string, narSum *countHash, l limits.Limits) (res verifyResult) {
	// Decoders make many small reads (block headers); served from a
	// buffer they cost no pipe handoff each.
	br := verifyBufs.Get().(*bufio.Reader)
	br.Reset(r)
	defer func() { br.Reset(nil); verifyBufs.Put(br) }()
	res.comp = comp
	if comp == "none" {
		// A bare .nar: Nix names a NAR in a compression without a
		// suffix of its own (gzip) so too.
		head, _ := br.Peek(compress.SniffLen)
		res.comp = compress.Sniff(head)
		if !slices.Contains(bareCompressions, res.comp) {
			res.err = fmt.Errorf("the file is %s-compressed, which this cache does not take under a bare .nar name (Nix names such a NAR with its suffix, e.g. .nar.%s; a bare .nar holds a NAR, or gzip, zstd, xz or bzip2 bytes)", res.comp, res.comp)
			return res
		}
	}
	comp = res.comp
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

// bareCompressions are what a NAR file named with the bare ".nar" suffix
// may be in, found from its bytes (verifyStream), and so which blobs such
// a name may be stored as: no compression first, then those Nix writes
// without a suffix (gzip), then the others this store decodes.
var bareCompressions = []string{"none", "gzip", "zstd", "xz", "bzip2"}

// blobNames are the names the NAR file with hash h, named in compression
// comp, may be stored under: one, or, for a bare ".nar", one per
// bareCompressions.
func blobNames(h []byte, comp string) []string {
	hash := nixbase32.EncodeToString(h)
	if comp != "none" {
		return []string{hash + extFor(comp)}
	}
	names := make([]string, len(bareCompressions))
	for i, c := range bareCompressions {
		names[i] = hash + extFor(c)
	}
	return names
}

// extFor is the suffix of a stored NAR compressed with comp.
func extFor(comp string) string {
	if ext, ok := narinfo.NARSuffix(comp); ok {
		return ext
	}
	return ".nar"
}

func isNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// HasNAR reports whether the NAR file name is stored, pending or claimed:
// nix copy HEADs a NAR before PUTting it and skips the upload on 200. A
// bare ".nar" is found whatever compression its bytes turned out to be in.
func (s *Store) HasNAR(ctx context.Context, name string) (bool, error) {
	h, comp, err := ParseNARName(name)
	if err != nil {
		return false, err
	}
	names := blobNames(h, comp)
	s.pendMu.Lock()
	for _, canon := range names {
		if p := s.pending[canon]; p != nil && !p.failed() {
			s.pendMu.Unlock()
			return true, nil
		}
	}
	s.pendMu.Unlock()
	var ok bool
	err = s.db.View(func(tx kv.Tx) error {
		for _, canon := range names {
			ok = ok || tx.Bucket(bBlobs).Get([]byte(canon)) != nil
		}
		return nil
	})
	return ok, err
}
