package upload

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/bos55/concordia/internal/kv"
	"github.com/bos55/concordia/internal/store"
)

// Small NARs: most paths of a closure are a few KB. As files, each costs
// a temp file, a rename, an fsync of the file and one of the directory
// before its narinfo may commit, and hands the upload between goroutines
// (the verifying stage, the fsyncs) several times. A NAR file of at most
// Options.InlineMax bytes is instead read into memory whole, verified in
// the request's goroutine, and kept in memory as a pending blob
// (pendingBlob.data) until the narinfo that claims it commits it into the
// index in the same transaction as its record (inlineblob): one durable
// write per path. Its 200 promises what a file's does: nothing until the
// narinfo's 200, which means the NAR is on disk.
//
// A held NAR is also appended to a log (smalllog.go), one unsynced write,
// so that it outlives the process as a file would: Open replays the log.
// The bytes held are bounded by maxInlineMemory: past it a small NAR is
// written as a file, as a large one is.

// DefaultInlineMax is the default upload.inline_max_size: a NAR file (as
// uploaded, compressed) up to 64 KiB is kept in the index. Most paths of
// a system closure are below it; bbolt stores such a value in a few
// overflow pages.
const DefaultInlineMax = 64 << 10

// maxInlineMemory bounds the bytes of small NARs held in memory waiting
// for their narinfos: Nix 2.35 sends every NAR of a closure first. It is
// well under the default memory_limit (48 MiB), which the rest of the
// server needs; Nix 2.8 and Lix send each narinfo right after its NAR,
// so one NAR per upload at a time is held. A variable for tests.
var maxInlineMemory int64 = 16 << 20

var heads = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// readHead reads body up to max+1 bytes into a pooled buffer: small
// reports whether that was all of it. err is the body's read error.
func readHead(body io.Reader, max int64) (head []byte, small bool, err error) {
	buf := heads.Get().(*bytes.Buffer)
	buf.Reset()
	n, err := buf.ReadFrom(io.LimitReader(body, max+1))
	if err != nil {
		return buf.Bytes(), true, err
	}
	return buf.Bytes(), n <= max, nil
}

// putHead returns readHead's buffer to the pool.
func putHead(head []byte) {
	if cap(head) > 2*DefaultInlineMax {
		return // a larger InlineMax's; not kept
	}
	heads.Put(bytes.NewBuffer(head[:0]))
}

// putSmallNAR is PutNAR of the whole NAR file head (readErr: the body's
// read error, if reading it failed).
func (s *Store) putSmallNAR(ctx context.Context, name string, wantHash []byte, comp string, head []byte, readErr error) (*BlobInfo, error) {
	if readErr != nil {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		// As receive says it: the 413 of a body past the server's
		// limit finds *http.MaxBytesError in the chain.
		return nil, fmt.Errorf("%w: NAR %s: read body: %w", store.ErrInvalid, name, readErr)
	}
	narSum := &countHash{h: sha256.New()}
	res := verifyNAR(bytes.NewReader(head), comp, narSum, s.opts.Limits)
	if err := s.checkReceived(ctx, name, res.comp, &errWriter{w: io.Discard}, &errReader{}, res, nil, narSum); err != nil {
		return nil, err
	}
	fileHash := sha256.Sum256(head)
	got := &received{comp: res.comp, fileHash: fileHash[:], fileSize: int64(len(head)), narHash: narSum.h.Sum(nil), narSize: uint64(res.narSize)}
	info, rec, err := s.checkName(name, wantHash, got)
	if err != nil {
		return nil, err
	}
	kept, err := s.placeInline(name, info.Name, head, info, rec)
	if err != nil {
		return nil, err
	}
	if !kept {
		// Over maxInlineMemory: a file, as a large NAR.
		return s.putSmallFile(ctx, name, head, info, rec)
	}
	if !info.Existed {
		if err := s.boundPending(info.Name); err != nil {
			return nil, err
		}
	}
	return info, nil
}

// putSmallFile writes a verified small NAR file as a pending file.
func (s *Store) putSmallFile(ctx context.Context, name string, head []byte, info *BlobInfo, rec blobRec) (*BlobInfo, error) {
	tmp, err := s.createFor(ctx, name)
	if err != nil {
		return nil, err
	}
	if _, err := tmp.Write(head); err != nil {
		tmp.Close()
		return nil, mapErr(fmt.Errorf("put NAR %s: write: %w", name, err))
	}
	return s.placeFile(name, tmp, info, rec)
}

// placeInline makes the verified NAR file data the pending blob canon,
// held in memory, as place does for a file; when the blob is stored or
// pending already it sets info.Existed and keeps nothing. kept is false,
// with nothing done, when the memory bound leaves no room for data.
func (s *Store) placeInline(name, canon string, data []byte, info *BlobInfo, rec blobRec) (kept bool, err error) {
	unlock, err := s.lockFiles()
	if err != nil {
		return false, mapErr(fmt.Errorf("put NAR %s: %w", name, err))
	}
	defer unlock()
	if existed, err := s.storedAlready(name, canon, info, rec, func(p *pendingBlob, stored bool) bool {
		return stored || p != nil
	}); existed || err != nil {
		return err == nil, err
	}
	s.pendMu.Lock()
	if s.inlineMem+int64(len(data)) > maxInlineMemory {
		s.pendMu.Unlock()
		return false, nil
	}
	held := bytes.Clone(data)
	s.pending[canon] = &pendingBlob{rec: rec, durable: closedChan, data: held}
	s.inlineMem += int64(len(data))
	s.pendMu.Unlock()
	s.logSmall(canon, held, rec.Created)
	return true, nil
}

// unpendLocked forgets the pending entry of canon, and the memory its
// bytes held. The caller holds pendMu.
func (s *Store) unpendLocked(canon string) {
	if p := s.pending[canon]; p != nil {
		s.inlineMem -= int64(len(p.data))
	}
	delete(s.pending, canon)
}

// setPendingLocked makes p the pending entry of canon, replacing any.
// The caller holds pendMu.
func (s *Store) setPendingLocked(canon string, p *pendingBlob) {
	s.unpendLocked(canon)
	s.pending[canon] = p
	s.inlineMem += int64(len(p.data))
}

// putInline writes the in-memory pending NAR file data as the inline blob
// canon in tx, the claiming narinfo's commit.
func (s *Store) putInline(tx kv.Tx, canon string, data []byte, created blobRec) error {
	if s.inline == nil {
		return errors.New("a NAR held in memory without an inline store") // cannot happen: placeInline needs one
	}
	return s.inline.Put(tx, canon, data, created.Created)
}
