package upload

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"

	"github.com/bos55/concordia/internal/blob"
	"github.com/bos55/concordia/internal/compress"
	"github.com/bos55/concordia/internal/kv"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/pkg/narinfo"
)

// Build logs. Each is a file logs/<drv base name>.zst, compressed once at
// upload (independent zstd frames of 64 KiB of text, compress.DocFrame)
// and published durably before its record is committed; the index keeps
// only the record (logRec). A log is bounded by limits.max_log_size,
// counted on the decompressed bytes as they stream in, so a small body
// that inflates to gigabytes stops at the limit with nothing stored. A
// reader is sent the file as it is when it accepts zstd (OpenLogFile),
// else the text decoded a frame at a time (BuildLog): a reader holds one
// frame, never a whole log nor a decoder while it does not read.

const logExt = ".zst"

// logRec is the index record of a stored log.
type logRec struct {
	Size     int64  `json:"size"`     // bytes of the log, decompressed
	FileSize int64  `json:"fileSize"` // bytes of logs/<drv>.zst
	SHA256   []byte `json:"sha256"`   // of the decompressed log
	Created  int64  `json:"created"`  // upload time, unix seconds
}

// logName is the blob name of a derivation's log.
func logName(drvBase string) string { return drvBase + logExt }

// createLog starts a log blob: its bytes, compressed, count the file size.
func (s *Store) createLog(drvBase string) (*logTemp, error) {
	t, err := blob.CreateFor(bg, s.logs, logName(drvBase))
	if err != nil {
		return nil, err
	}
	return &logTemp{Temp: t}, nil
}

// logTemp is a log blob being written, counting its size.
type logTemp struct {
	blob.Temp
	n int64
}

func (t *logTemp) Write(p []byte) (int, error) {
	n, err := t.Temp.Write(p)
	t.n += int64(n)
	return n, err
}

func (s *Store) logRecord(drvBase string) (*logRec, error) {
	var rec logRec
	var found bool
	err := s.db.View(func(tx kv.Tx) error {
		var err error
		found, err = getJSON(tx.Bucket(bLogFiles), []byte(drvBase), &rec)
		return err
	})
	if err != nil || !found {
		return nil, err
	}
	return &rec, nil
}

// logSum is what identifies a log's text: its SHA-256 and length.
type logSum struct {
	sum  []byte
	size int64
}

func (a logSum) same(b logSum) bool { return a.size == b.size && bytes.Equal(a.sum, b.sum) }

// logConflict is the ErrConflict of an upload of another text for a log
// the cache has, naming both by their SHA-256.
func logConflict(drvBase string, have, upload logSum) error {
	return fmt.Errorf("%w: the cache already has the build log %s with sha256 %s (%d bytes), the upload has %s (%d bytes)",
		store.ErrConflict, drvBase, narinfo.SHA256(have.sum), have.size, narinfo.SHA256(upload.sum), upload.size)
}

// PutLog stores the build log of a derivation ("<hash>-<name>.drv"). Logs
// are only informational, but a token must not rewrite what a build said
// either: a log the cache already serves (from here or the machine's own
// log directory) may be uploaded again only with the same text, which is
// then a no-op.
func (s *Store) PutLog(ctx context.Context, drvBase string, body io.Reader) error {
	err := s.putLog(ctx, drvBase, body)
	s.metrics.upload("log", err)
	return mapErr(err)
}

func (s *Store) putLog(ctx context.Context, drvBase string, body io.Reader) error {
	if _, _, err := narinfo.ParseDerivation(drvBase); err != nil {
		return invalidf("log name %q is not a .drv store path base name", drvBase)
	}
	l := s.opts.Limits
	in := &atMost{r: body, left: l.MaxLogSize,
		err: l.LogTooLarge(invalidf("build log %s larger than %d bytes", drvBase, l.MaxLogSize))}
	have, err := s.logRecord(drvBase)
	if err != nil {
		return err
	}
	if have != nil {
		// Stored already: the upload is only compared, never written.
		up, err := sumLog(in)
		if err != nil {
			return bodyErr("build log "+drvBase, err)
		}
		return sameLog(drvBase, have, up)
	}
	other, err := s.otherLog(ctx, drvBase)
	if err != nil {
		return err
	}

	f, err := s.createLog(drvBase)
	if err != nil {
		return fmt.Errorf("build log %s: %w", drvBase, err)
	}
	defer f.Close()
	up, err := writeLog(f, in)
	if err != nil {
		return bodyErr("build log "+drvBase, err)
	}
	if other != nil && !other.same(up) {
		return logConflict(drvBase, *other, up)
	}
	// The bytes go to disk before the lock; Commit's own fsync then finds
	// nothing left to write.
	if err := f.Sync(); err != nil {
		return fmt.Errorf("build log %s: %w", drvBase, err)
	}
	rec := logRec{Size: up.size, FileSize: f.n, SHA256: up.sum, Created: s.now().Unix()}
	return s.publishLog(drvBase, f, rec, up)
}

// sameLog refuses an upload of a log stored already unless it has the
// same text (then it is a no-op).
func sameLog(drvBase string, have *logRec, up logSum) error {
	if hs := (logSum{have.SHA256, have.Size}); !hs.same(up) {
		return logConflict(drvBase, hs, up)
	}
	return nil
}

// publishLog gives the written log f its name and its record rec, unless
// another upload of it came first (then it is compared with that).
func (s *Store) publishLog(drvBase string, f *logTemp, rec logRec, up logSum) error {
	// The file lock orders this against another upload of the same log
	// and against GC, which deletes records and files holding it: the
	// check, the rename and the record are one step.
	unlock, err := s.lockFiles()
	if err != nil {
		return mapErr(fmt.Errorf("build log %s: %w", drvBase, err))
	}
	defer unlock()
	if have, err := s.logRecord(drvBase); err != nil {
		return err
	} else if have != nil {
		return sameLog(drvBase, have, up)
	}
	if err := s.commitBlob(f, s.logs, logName(drvBase)); err != nil {
		return fmt.Errorf("build log %s: %w", drvBase, err)
	}
	err = s.db.Update(func(tx kv.Tx) error {
		return putJSON(tx.Bucket(bLogFiles), []byte(drvBase), rec)
	})
	if err != nil {
		// Nobody was told; Open would remove the file too.
		s.logs.Remove(bg, logName(drvBase))
		return fmt.Errorf("build log %s: %w", drvBase, err)
	}
	return nil
}

// bodyErr wraps an error reading an upload's body: a limit's refusal
// keeps its status; anything else (a broken or truncated body) is the
// client's input.
func bodyErr(what string, err error) error {
	if isNoSpace(err) {
		return mapErr(fmt.Errorf("%s: %w", what, err))
	}
	if errors.Is(err, store.ErrInvalid) {
		return err
	}
	return fmt.Errorf("%w: %s: %w", store.ErrInvalid, what, err)
}

// writeLog compresses r into f and returns the sum of the text.
func writeLog(f io.Writer, r io.Reader) (logSum, error) {
	bw := bufio.NewWriterSize(f, 64<<10)
	enc, err := compress.NewDocWriter(bw)
	if err != nil {
		return logSum{}, err
	}
	h := &countHash{h: sha256.New()}
	fw := &errWriter{w: enc}
	_, err = io.Copy(io.MultiWriter(fw, h), r)
	if cerr := enc.Close(); err == nil {
		err = cerr
	}
	if fw.err != nil {
		err = fw.err
	}
	if err == nil {
		err = bw.Flush()
	}
	return logSum{h.h.Sum(nil), h.n}, err
}

// sumLog reads r to its end and returns the sum of the text.
func sumLog(r io.Reader) (logSum, error) {
	h := &countHash{h: sha256.New()}
	_, err := io.Copy(h, r)
	return logSum{h.h.Sum(nil), h.n}, err
}

// otherLog returns the sum of another store's build log of drvBase,
// decompressed, or nil when none has one. It reads one byte past the
// limit at most: a log that long differs from any upload accepted.
func (s *Store) otherLog(ctx context.Context, drvBase string) (*logSum, error) {
	for _, o := range s.opts.Others {
		lg, ok := o.(store.Logger)
		if !ok {
			continue
		}
		rc, comp, err := lg.BuildLog(ctx, drvBase)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("build log %s in another store: %w", drvBase, err)
		}
		defer rc.Close()
		var r io.Reader = rc
		if comp != "" {
			dec, err := compress.NewReaderLimits(rc, comp, s.opts.Limits.Decode(0))
			if err != nil {
				return nil, fmt.Errorf("build log %s in another store: %w", drvBase, err)
			}
			defer dec.Close()
			r = dec
		}
		sum, err := sumLog(io.LimitReader(r, s.opts.Limits.MaxLogSize+1))
		if err != nil {
			return nil, fmt.Errorf("build log %s in another store: %w", drvBase, err)
		}
		return &sum, nil
	}
	return nil, nil
}

// openLog opens the file of a stored log. A record whose file is missing
// is an error (the store is damaged), unless the record went too: GC
// collected the log meanwhile.
func (s *Store) openLog(drvBase string) (store.ReadSeekCloser, *logRec, error) {
	if _, _, err := narinfo.ParseDerivation(drvBase); err != nil {
		return nil, nil, store.ErrNotFound
	}
	rec, err := s.logRecord(drvBase)
	if err != nil {
		return nil, nil, err
	}
	if rec == nil {
		return nil, nil, store.ErrNotFound
	}
	f, err := s.logs.Open(bg, logName(drvBase))
	if errors.Is(err, fs.ErrNotExist) {
		if again, _ := s.logRecord(drvBase); again == nil {
			return nil, nil, store.ErrNotFound
		}
		return nil, nil, fmt.Errorf("build log %s: its file is missing", drvBase)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("build log %s: %w", drvBase, err)
	}
	return f, rec, nil
}

// BuildLog implements store.Logger: the log, decoded as it is read.
func (s *Store) BuildLog(ctx context.Context, drvBase string) (io.ReadCloser, string, error) {
	f, rec, err := s.openLog(drvBase)
	if err != nil {
		return nil, "", err
	}
	dec, err := compress.NewDocReader(f, rec.Size)
	if err != nil {
		f.Close()
		return nil, "", fmt.Errorf("build log %s: %w", drvBase, err)
	}
	return &logReader{ReadCloser: dec, f: f}, "", nil
}

// OpenLogFile implements store.LogFiles: the zstd file as stored.
func (s *Store) OpenLogFile(ctx context.Context, drvBase string) (store.ReadSeekCloser, string, int64, error) {
	f, rec, err := s.openLog(drvBase)
	if err != nil {
		return nil, "", 0, err
	}
	return f, "zstd", rec.FileSize, nil
}

// logReader closes the decoder, then the file; WriteTo hands the
// decoder's frames to the destination without another copy buffer.
type logReader struct {
	io.ReadCloser
	f io.Closer
}

func (r *logReader) WriteTo(w io.Writer) (int64, error) {
	return r.ReadCloser.(io.WriterTo).WriteTo(w)
}

func (r *logReader) Close() error {
	r.ReadCloser.Close()
	return r.f.Close()
}

// migrateLogs moves the logs an older version kept whole in the index
// into files, one transaction each (a crash repeats at most the one it
// was in), then drops the old bucket. A failure (a full disk) fails Open:
// the logs stay where they were, and nothing is lost.
func (s *Store) migrateLogs() error {
	var names []string
	err := s.db.View(func(tx kv.Tx) error {
		b := tx.Bucket(bOldLogs)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, _ []byte) error {
			names = append(names, string(k))
			return nil
		})
	})
	if err != nil {
		return err
	}
	for _, name := range names {
		err := s.db.Update(func(tx kv.Tx) error {
			data := tx.Bucket(bOldLogs).Get([]byte(name))
			if data == nil {
				return nil
			}
			if _, _, err := narinfo.ParseDerivation(name); err != nil {
				s.log.Warn("dropping a stored build log with an invalid name", "name", name)
				return tx.Bucket(bOldLogs).Delete([]byte(name))
			}
			f, err := s.createLog(name)
			if err != nil {
				return err
			}
			defer f.Close()
			sum, err := writeLog(f, bytes.NewReader(data))
			if err != nil {
				return err
			}
			if err := s.commitBlob(f, s.logs, logName(name)); err != nil {
				return err
			}
			rec := logRec{Size: sum.size, FileSize: f.n, SHA256: sum.sum, Created: s.now().Unix()}
			if err := putJSON(tx.Bucket(bLogFiles), []byte(name), rec); err != nil {
				return err
			}
			return tx.Bucket(bOldLogs).Delete([]byte(name))
		})
		if err != nil {
			return mapErr(fmt.Errorf("moving build log %s out of the index into a file: %w", name, err))
		}
	}
	if len(names) > 0 {
		s.log.Info("moved build logs out of the index into files", "logs", len(names))
	}
	return s.db.Update(func(tx kv.Tx) error {
		if tx.Bucket(bOldLogs) == nil {
			return nil
		}
		return tx.DeleteBucket(bOldLogs)
	})
}

// recoverLogs makes the log files and their records agree after a crash:
// temp files go, records without a file are dropped, files without a
// record (renamed, record never committed) are removed.
func (s *Store) recoverLogs() error {
	if s.db.Shared() {
		// Other replicas publish logs meanwhile (see recover).
		return nil
	}
	if _, err := s.logs.Sweep(bg, s.orphanCutoff()); err != nil {
		return err
	}
	onDisk := map[string]bool{}
	err := s.logs.List(bg, func(fi blob.Info) error {
		if drv, ok := strings.CutSuffix(fi.Name, logExt); ok {
			onDisk[drv] = true
		}
		return nil
	})
	if err != nil {
		return err
	}
	return s.db.Update(func(tx kv.Tx) error {
		b := tx.Bucket(bLogFiles)
		var gone [][]byte
		err := b.ForEach(func(k, _ []byte) error {
			if !onDisk[string(k)] {
				gone = append(gone, bytes.Clone(k))
			}
			delete(onDisk, string(k))
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range gone {
			s.log.Warn("dropping the record of a missing build log file", "drv", string(k))
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		for drv := range onDisk {
			s.log.Info("removing a build log file without a record", "drv", drv)
			s.logs.Remove(bg, logName(drv))
		}
		return nil
	})
}
