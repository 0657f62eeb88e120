package upload

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/bos55/concordia/internal/blob"
	"github.com/bos55/concordia/internal/blob/diskblob"
	"github.com/bos55/concordia/internal/kv"
	"github.com/bos55/concordia/internal/store"
)

// Pending NARs across restarts, and their bounds.
//
// Nix 2.35 uploads every NAR of a closure first, largest first, and the
// narinfos after (binary-cache-store.cc 2.35.0:326-455), so a NAR may wait
// for its narinfo as long as the whole copy takes, and a restart in between
// must not lose it. Writing a pending record for every NAR would cost the
// upload a second durable commit (the narinfo's is the first), which is
// most of a small path's upload time. Instead the blob file itself is the
// record: its name is the hash of its bytes, and Open adopts every blob
// file the index does not know as pending (adoptPending). What it was
// verified to be is not kept: the disk is not trusted blindly, so the first
// narinfo that claims an adopted file has it decoded and hashed again, and
// fsynced, before the claim commits (reverify). A file that no longer
// matches its name is removed and the narinfo refused. The fast path of an
// upload that runs without a restart is unchanged.
//
// Pending NARs are bounded by age (Options.PendingGrace, upload.pending_max_age)
// and by their total size (Options.MaxPending, upload.pending_max_size): past
// the size, the oldest are dropped first, and a narinfo claiming one is told
// why.

// DefaultPendingGrace is how long a NAR waits for its narinfo: longer than
// any one `nix copy`, however large.
const DefaultPendingGrace = 24 * time.Hour

// DefaultMaxPending bounds the bytes of NAR files waiting for their
// narinfos: the NARs of the closures being uploaded at once.
const DefaultMaxPending = 20 << 30

// adoptPending makes a blob file the index has no record of pending again
// (its claim re-verifies it), or removes it when it is older than the
// grace period or does not have a blob file's name. Created is the file's
// modification time: when its upload finished.
func (s *Store) adoptPending(fi blob.Info) {
	name := fi.Name
	fileHash, comp, err := ParseNARName(name)
	switch {
	case err != nil:
		s.log.Info("removing a file that is not a NAR file", "blob", name)
		s.blobs.Remove(bg, name)
		return
	case fi.ModTime.Before(s.now().Add(-s.opts.PendingGrace)):
		s.log.Info("removing a NAR file no narinfo claimed within the grace period", "blob", name,
			"age", s.now().Sub(fi.ModTime).Round(time.Second))
		s.blobs.Remove(bg, name)
		return
	}
	s.log.Info("keeping an unclaimed NAR file as pending; it is verified again when a narinfo claims it", "blob", name)
	s.pending[name] = &pendingBlob{
		rec:     blobRec{Compression: comp, FileHash: fileHash, FileSize: fi.Size, Created: fi.ModTime},
		durable: make(chan struct{}),
		adopted: true,
	}
}

// startReverify starts the verification of an adopted pending blob, once;
// its claim waits for p.durable like any other.
func (s *Store) startReverify(canon string, p *pendingBlob) {
	if !p.adopted {
		return
	}
	p.verify.Do(func() {
		s.wg.Add(1)
		go s.reverify(canon, p)
	})
}

// unverified reports whether p is an adopted blob not yet found intact.
func (p *pendingBlob) unverified() bool {
	if !p.adopted {
		return false
	}
	select {
	case <-p.durable:
		return p.err != nil
	default:
		return true
	}
}

// errStopping is reverify's error when the store closes meanwhile.
var errStopping = errors.New("the upload store is closing")

// reverify decodes and hashes an adopted blob file as PutNAR did when it
// came, and fsyncs it and its directory: it may have been renamed into
// place just before a crash, its fsyncs not done. Found intact, its record
// gets what was computed; otherwise the claim is refused and the file,
// damaged, removed, so the client's next HEAD says it is missing and it is
// sent again.
func (s *Store) reverify(canon string, p *pendingBlob) {
	defer s.wg.Done()
	rec, err := s.checkBlobFile(canon)
	damaged := err != nil && !errors.Is(err, errStopping) && !isIOError(err)
	if err == nil {
		err = s.syncBlob(canon)
	}
	if err == nil {
		s.pendMu.Lock()
		rec.Created = p.rec.Created
		p.rec = *rec
		s.pendMu.Unlock()
		close(p.durable)
		return
	}
	if damaged {
		p.err = fmt.Errorf("%w: NAR %s was damaged on disk since its upload (%v); upload it again", store.ErrInvalid, canon, err)
		s.log.Warn("an unclaimed NAR file kept across a restart is damaged: removed", "blob", canon, "err", err)
	} else {
		p.err = fmt.Errorf("NAR %s: verifying it again: %w", canon, err)
	}
	// Damaged: the file goes, the failed entry stays so the narinfo is
	// told why (as after a failed fsync), and the file goes before the
	// claim waiting on p.durable is told, so a client that got the error
	// and sends HEAD next hears "missing" (nothing waits on p.durable
	// holding the file lock). Unreadable (or the lock could not be had):
	// the entry goes, after the claim was told, and the file stays,
	// adopted again by the next Open, or replaced by a new upload.
	unlock, lerr := s.lockFiles()
	if damaged && lerr == nil {
		s.pendMu.Lock()
		if s.pending[canon] == p {
			s.blobs.Remove(bg, canon)
		}
		s.pendMu.Unlock()
		unlock()
		close(p.durable)
		return
	}
	close(p.durable)
	s.pendMu.Lock()
	if s.pending[canon] == p {
		s.unpendLocked(canon)
	}
	s.pendMu.Unlock()
	if lerr == nil {
		unlock()
	}
}

// ioError marks a failure to read a blob file (not a sign of damage).
type ioError struct{ err error }

func (e ioError) Error() string { return e.err.Error() }
func (e ioError) Unwrap() error { return e.err }

func isIOError(err error) bool { var e ioError; return errors.As(err, &e) }

// checkBlobFile computes what PutNAR computed of a stored blob file and
// checks that it is what the name says: its bytes hash to it and decode,
// within the limits, to a valid NAR in the compression of its suffix.
func (s *Store) checkBlobFile(canon string) (*blobRec, error) {
	wantHash, comp, err := ParseNARName(canon)
	if err != nil {
		return nil, err
	}
	f, err := s.blobs.Open(bg, canon)
	if err != nil {
		return nil, ioError{err}
	}
	defer f.Close()
	file := &countHash{h: sha256.New()}
	narSum := &countHash{h: sha256.New()}
	pr, pw := io.Pipe()
	done := make(chan verifyResult, 1)
	go func() { done <- verifyStream(pr, comp, narSum, s.opts.Limits) }()
	in := &errReader{r: &stopReader{r: f, stop: s.stop}}
	_, copyErr := io.Copy(io.MultiWriter(file, pw), in)
	if copyErr != nil {
		pw.CloseWithError(copyErr)
	} else {
		pw.Close()
	}
	res := <-done
	switch {
	case errors.Is(in.err, errStopping):
		return nil, errStopping
	case in.err != nil:
		return nil, ioError{in.err}
	case res.err != nil:
		return nil, res.err
	case copyErr != nil:
		return nil, copyErr
	case narSum.n != res.narSize:
		return nil, fmt.Errorf("%d bytes of trailing data after the NAR", narSum.n-res.narSize)
	case res.extra > 0:
		return nil, fmt.Errorf("%d bytes after the end of the %s stream", res.extra, res.comp)
	}
	got := file.h.Sum(nil)
	if !bytes.Equal(got, wantHash) {
		return nil, fmt.Errorf("its %d bytes hash to %s", file.n, nixbase32.EncodeToString(got))
	}
	if nixbase32.EncodeToString(got)+extFor(res.comp) != canon {
		return nil, fmt.Errorf("it is %s-compressed", res.comp)
	}
	return &blobRec{Compression: res.comp, FileHash: got, FileSize: file.n, NarHash: narSum.h.Sum(nil), NarSize: uint64(res.narSize)}, nil
}

// syncBlob fsyncs a blob file and the blob directory (where blobs are
// files; an object store's are durable once published).
func (s *Store) syncBlob(canon string) error {
	f, err := s.blobs.Open(bg, canon)
	if err != nil {
		return ioError{err}
	}
	if df, ok := f.(*diskblob.File); ok {
		err = diskblob.SyncFile(df.File)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = s.blobs.Sync(bg)
	}
	return mapErr(err)
}

// stopReader fails once the store closes, so Close does not wait for the
// verification of a large file.
type stopReader struct {
	r    io.Reader
	stop chan struct{}
}

func (s *stopReader) Read(p []byte) (int, error) {
	select {
	case <-s.stop:
		return 0, errStopping
	default:
	}
	return s.r.Read(p)
}

// boundPending drops the oldest pending blobs, but keep, while their total
// size is over Options.MaxPending. Dropping happens in a write
// transaction, as a sweep's does, so it never races a claim's commit; it
// costs one only when the bound is passed.
func (s *Store) boundPending(keep string) error {
	if s.opts.MaxPending < 0 || s.pendingBytes() <= s.opts.MaxPending {
		return nil
	}
	unlock, err := s.lockFiles()
	if err != nil {
		return mapErr(err)
	}
	defer unlock()
	type entry struct {
		name string
		p    *pendingBlob
	}
	var gone []entry
	err = s.db.Update(func(tx kv.Tx) error {
		blobs := tx.Bucket(bBlobs)
		s.pendMu.Lock()
		defer s.pendMu.Unlock()
		var live []entry
		var total int64
		for k, p := range s.pending {
			var rec blobRec
			if found, _ := getJSON(blobs, []byte(k), &rec); found && rec.Refs > 0 {
				s.unpendLocked(k) // claimed since
				continue
			}
			if p.failed() {
				continue
			}
			live = append(live, entry{k, p})
			total += p.rec.FileSize
		}
		slices.SortFunc(live, func(a, b entry) int {
			return cmp.Or(a.p.rec.Created.Compare(b.p.rec.Created), cmp.Compare(a.name, b.name))
		})
		for _, e := range live {
			if total <= s.opts.MaxPending {
				break
			}
			if e.name == keep {
				continue
			}
			s.unpendLocked(e.name)
			if blobs.Get([]byte(e.name)) != nil {
				// Left by paths since deleted: the record goes too.
				if err := blobs.Delete([]byte(e.name)); err != nil {
					return err
				}
			}
			total -= e.p.rec.FileSize
			gone = append(gone, e)
		}
		return nil
	})
	if err != nil {
		return mapErr(err)
	}
	for _, e := range gone {
		s.blobs.Remove(bg, e.name)
		s.noteDropped(e.name, fmt.Sprintf("it was dropped unclaimed after %s because the NARs waiting for their narinfos passed upload.pending_max_size (%s), oldest first",
			s.now().Sub(e.p.rec.Created).Round(time.Second), sizeString(s.opts.MaxPending)))
		s.log.Warn("pending NARs over upload.pending_max_size: dropped the oldest", "blob", e.name,
			"size", e.p.rec.FileSize, "age", s.now().Sub(e.p.rec.Created).Round(time.Second), "max_pending", s.opts.MaxPending)
	}
	return nil
}

// pendingBytes is the size of the pending blob files.
func (s *Store) pendingBytes() int64 {
	s.pendMu.Lock()
	defer s.pendMu.Unlock()
	var n int64
	for _, p := range s.pending {
		if !p.failed() {
			n += p.rec.FileSize
		}
	}
	return n
}

// maxDropped bounds how many dropped blob names are remembered to explain
// a narinfo's refusal.
const maxDropped = 4096

// noteDropped remembers why blob name was dropped, for the narinfo that
// claims it later (droppedWhy).
func (s *Store) noteDropped(name, why string) {
	s.pendMu.Lock()
	defer s.pendMu.Unlock()
	if _, ok := s.dropped[name]; !ok {
		s.droppedOrder = append(s.droppedOrder, name)
	}
	s.dropped[name] = why
	for len(s.droppedOrder) > maxDropped {
		delete(s.dropped, s.droppedOrder[0])
		s.droppedOrder = s.droppedOrder[1:]
	}
}

func (s *Store) droppedWhy(name string) string {
	s.pendMu.Lock()
	defer s.pendMu.Unlock()
	return s.dropped[name]
}

// sizeString writes a size as the config does (K, M, G, T: powers of 1024).
func sizeString(n int64) string {
	for _, u := range []struct {
		suffix string
		shift  uint
	}{{"T", 40}, {"G", 30}, {"M", 20}, {"K", 10}} {
		if n >= 1<<u.shift && n%(1<<u.shift) == 0 {
			return fmt.Sprintf("%d%s", n>>u.shift, u.suffix)
		}
	}
	return fmt.Sprintf("%d bytes", n)
}

// durationString writes a duration as the config does (d for whole days).
func durationString(d time.Duration) string {
	switch {
	case d > 24*time.Hour && d%(24*time.Hour) == 0:
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	case d >= time.Hour && d%time.Hour == 0:
		return fmt.Sprintf("%dh", d/time.Hour)
	case d >= time.Minute && d%time.Minute == 0:
		return fmt.Sprintf("%dm", d/time.Minute)
	}
	return d.String()
}
