package upload

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/bos55/concordia/internal/durable"
	"github.com/bos55/concordia/internal/kv"
	"github.com/bos55/concordia/internal/limits"
)

// The log of held small NARs. A small NAR held in memory (small.go) is
// also appended to one file, unsynced: one write per upload, not a file
// of its own. The page cache outlives the process, so a NAR whose narinfo
// has not come survives a SIGKILL or a crash of the server as a file
// would (Nix 2.35 sends every NAR of a closure first); Open replays the
// log, verifies each NAR again, and holds the unclaimed ones once more.
// Close fsyncs it, so a stop followed by a power cut keeps them too. A
// power cut while the server runs may lose the NARs of the last seconds,
// as it may lose an unsynced file's; the narinfo of such a NAR is refused
// as naming a NAR not uploaded, and nix copy sends it again.
//
// A record: "CNP1", the name's length (2 bytes) and the name, the data's
// length (4 bytes) and the data, the upload time (8 bytes, Unix
// nanoseconds), all big-endian. The name is the hash of the data, so a
// torn or damaged record is told from a whole one; replay stops at the
// first that is not whole.

const smallLogName = "pending-small.log"

var smallLogMagic = []byte("CNP1")

// smallLog appends held small NARs to their log.
type smallLog struct {
	mu   sync.Mutex
	f    *os.File
	size int64
}

// append writes one record; an error leaves the NAR held in memory only.
func (l *smallLog) append(name string, data []byte, created time.Time) error {
	rec := appendSmallRecord(make([]byte, 0, len(smallLogMagic)+2+len(name)+4+len(data)+8), name, data, created)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return errors.New("the small NAR log is closed")
	}
	n, err := l.f.Write(rec)
	l.size += int64(n)
	return err
}

// compactAt is the size past which the log is rewritten with only the
// NARs still held: a bound on the disk it takes whatever the traffic.
var compactAt int64 = 4 * maxInlineMemory

// smallEntry is one NAR of the log.
type smallEntry struct {
	name    string
	data    []byte
	created time.Time
}

// readSmallLog reads the whole records of r, stopping at the first that
// is not (the tail a crash cut, or damage).
func readSmallLog(r io.Reader) []smallEntry {
	br := bufio.NewReader(r)
	var out []smallEntry
	for {
		var head [6]byte
		if _, err := io.ReadFull(br, head[:]); err != nil || !bytes.Equal(head[:4], smallLogMagic) {
			return out
		}
		name := make([]byte, binary.BigEndian.Uint16(head[4:]))
		if _, err := io.ReadFull(br, name); err != nil {
			return out
		}
		var n [4]byte
		if _, err := io.ReadFull(br, n[:]); err != nil {
			return out
		}
		size := binary.BigEndian.Uint32(n[:])
		if size > limits.MaxInlineNAR {
			return out // no small NAR is this large
		}
		data := make([]byte, size)
		if _, err := io.ReadFull(br, data); err != nil {
			return out
		}
		var ts [8]byte
		if _, err := io.ReadFull(br, ts[:]); err != nil {
			return out
		}
		want, _, err := ParseNARName(string(name))
		if got := sha256.Sum256(data); err != nil || !bytes.Equal(got[:], want) {
			return out
		}
		out = append(out, smallEntry{string(name), data, time.Unix(0, int64(binary.BigEndian.Uint64(ts[:])))})
	}
}

// openSmallLog replays the log of an earlier run into the held NARs and
// starts a fresh one holding just those. It runs in Open, after recovery.
func (s *Store) openSmallLog() error {
	path := filepath.Join(s.dir, smallLogName)
	var entries []smallEntry
	if f, err := os.Open(path); err == nil {
		entries = readSmallLog(f)
		f.Close()
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("small NAR log: %w", err)
	}
	kept := 0
	for _, e := range entries {
		if s.replaySmall(e) {
			kept++
		}
	}
	if kept > 0 {
		s.log.Info("holding again the small NARs uploaded before the restart, verified again", "count", kept)
	}
	return s.rewriteSmallLog()
}

// replaySmall holds e again unless it is claimed, pending otherwise,
// past the grace period or no longer a valid NAR; it reports whether it
// did.
func (s *Store) replaySmall(e smallEntry) bool {
	if e.created.Before(s.now().Add(-s.opts.PendingGrace)) {
		return false
	}
	var stored bool
	s.db.View(func(tx kv.Tx) error {
		stored = tx.Bucket(bBlobs).Get([]byte(e.name)) != nil || s.inline.Has(tx, e.name)
		return nil
	})
	s.pendMu.Lock()
	_, pending := s.pending[e.name]
	s.pendMu.Unlock()
	if stored || pending {
		return false
	}
	_, comp, err := ParseNARName(e.name)
	if err != nil {
		return false
	}
	narSum := &countHash{h: sha256.New()}
	res := verifyNAR(bytes.NewReader(e.data), comp, narSum, s.opts.Limits)
	if res.err != nil || res.extra != 0 || narSum.n != res.narSize || res.comp != comp {
		s.log.Warn("a small NAR of the log no longer verifies: dropped", "blob", e.name, "err", res.err)
		return false
	}
	fh := sha256.Sum256(e.data)
	rec := blobRec{Compression: res.comp, FileHash: fh[:], FileSize: int64(len(e.data)),
		NarHash: narSum.h.Sum(nil), NarSize: uint64(res.narSize), Created: e.created}
	s.pendMu.Lock()
	defer s.pendMu.Unlock()
	if s.inlineMem+int64(len(e.data)) > maxInlineMemory {
		return false
	}
	s.setPendingLocked(e.name, &pendingBlob{rec: rec, durable: closedChan, data: e.data})
	return true
}

// rewriteSmallLog replaces the log with one of the NARs held now, and
// appends to it from then on.
func (s *Store) rewriteSmallLog() error {
	path := filepath.Join(s.dir, smallLogName)
	var buf []byte
	l := &smallLog{}
	s.pendMu.Lock()
	for name, p := range s.pending {
		if p.data != nil {
			buf = appendSmallRecord(buf, name, p.data, p.rec.Created)
		}
	}
	s.pendMu.Unlock()
	// Written whole before the rename, so the old log is replaced by a
	// complete one; durable only once Close syncs it, as appends are.
	tmp := path + ".new"
	if err := os.WriteFile(tmp, buf, 0o600); err != nil {
		return fmt.Errorf("small NAR log: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("small NAR log: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("small NAR log: %w", err)
	}
	l.f, l.size = f, int64(len(buf))
	old := s.smallLog
	s.smallLog = l
	if old != nil {
		old.mu.Lock()
		if old.f != nil {
			old.f.Close()
			old.f = nil
		}
		old.mu.Unlock()
	}
	return nil
}

// appendSmallRecord appends the log record of one held NAR to rec.
func appendSmallRecord(rec []byte, name string, data []byte, created time.Time) []byte {
	rec = append(rec, smallLogMagic...)
	rec = binary.BigEndian.AppendUint16(rec, uint16(len(name)))
	rec = append(rec, name...)
	rec = binary.BigEndian.AppendUint32(rec, uint32(len(data)))
	rec = append(rec, data...)
	return binary.BigEndian.AppendUint64(rec, uint64(created.UnixNano()))
}

// logSmall appends a newly held NAR to the log, compacting it first when
// it has grown past compactAt. The caller holds the file lock, which
// orders this against another compaction.
func (s *Store) logSmall(name string, data []byte, created time.Time) {
	if s.smallLog.size > compactAt {
		if err := s.rewriteSmallLog(); err != nil {
			s.log.Warn("could not compact the small NAR log", "err", err)
		}
	}
	if err := s.smallLog.append(name, data, created); err != nil {
		s.log.Warn("could not log a held small NAR: a crash before its narinfo loses it", "blob", name, "err", err)
	}
}

// closeSmallLog makes the log durable and closes it (Close).
func (s *Store) closeSmallLog() {
	l := s.smallLog
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return
	}
	if err := l.f.Sync(); err != nil {
		s.log.Warn("could not sync the small NAR log", "err", err)
	}
	l.f.Close()
	l.f = nil
	if err := durable.SyncDir(s.dir); err != nil {
		s.log.Warn("could not sync the small NAR log's directory", "err", err)
	}
}
