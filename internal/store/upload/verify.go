package upload

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/bos55/concordia/internal/blob"
	"github.com/bos55/concordia/internal/compress"
	"github.com/bos55/concordia/internal/kv"
	"github.com/bos55/concordia/pkg/nar"
)

// Verify re-hashes every NAR file against the FileHash and NarHash computed
// at upload, and re-validates the NAR structure. With repair, bad files are
// moved to quarantine/, the paths claiming them are dropped, and so is
// every path whose closure that breaks. progress, if set, is called with
// bytes done and total.
func (s *Store) Verify(ctx context.Context, repair bool, progress func(done, total int64)) (*VerifyReport, error) {
	type item struct {
		name string
		rec  blobRec
		data []byte // a pending small NAR's, held in memory
	}
	var items []item
	var total int64
	claims := map[string][]string{}
	err := s.db.View(func(tx kv.Tx) error {
		err := tx.Bucket(bBlobs).ForEach(func(k, v []byte) error {
			var b blobRec
			if err := json.Unmarshal(v, &b); err != nil {
				return fmt.Errorf("index record %s: %w", k, err)
			}
			items = append(items, item{string(k), b, nil})
			total += b.FileSize
			return nil
		})
		if err != nil {
			return err
		}
		// Pending blobs too: they are about to be claimed.
		s.pendMu.Lock()
		for k, b := range s.pending {
			if tx.Bucket(bBlobs).Get([]byte(k)) == nil && !b.failed() {
				items = append(items, item{k, b.rec, b.data})
				total += b.rec.FileSize
			}
		}
		s.pendMu.Unlock()
		return tx.Bucket(bPaths).ForEach(func(k, v []byte) error {
			var r pathRec
			if err := json.Unmarshal(v, &r); err != nil {
				return err
			}
			claims[r.Blob] = append(claims[r.Blob], r.StorePath)
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	rep := &VerifyReport{}
	var done int64
	for _, it := range items {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		if reason := s.checkBlob(it.name, &it.rec, it.data); reason != "" {
			s.metrics.verifyFailures.Inc()
			s.log.Error("NAR file damaged", "blob", it.name, "reason", reason)
			rep.Bad = append(rep.Bad, BadBlob{Name: it.name, Reason: reason, Paths: claims[it.name]})
		}
		rep.Checked++
		done += it.rec.FileSize
		rep.Bytes = done
		if progress != nil {
			progress(done, total)
		}
	}
	if !repair || len(rep.Bad) == 0 {
		return rep, nil
	}
	return rep, s.repair(ctx, rep)
}

// checkBlob returns why a blob is bad, or "". data is the blob when it is
// a pending small NAR held in memory (small.go), else nil.
func (s *Store) checkBlob(name string, rec *blobRec, data []byte) string {
	var f io.ReadCloser = io.NopCloser(bytes.NewReader(data))
	if data == nil {
		var err error
		if f, err = s.blobs.Open(bg, name); err != nil {
			return fmt.Sprintf("cannot open: %v", err)
		}
	}
	defer f.Close()
	if err := s.withinLimits(name, rec.Compression, uint64(rec.FileSize), rec.NarSize); err != nil {
		return err.Error()
	}
	l := s.opts.Limits
	file := &countHash{h: sha256.New()}
	dec, err := compress.NewReaderLimits(io.TeeReader(f, file), rec.Compression, l.Decode(int64(rec.NarSize)))
	if err != nil {
		return fmt.Sprintf("cannot decompress: %v", l.Check(err))
	}
	defer dec.Close()
	narSum := &countHash{h: sha256.New()}
	_, verr := nar.ValidateOptions(io.TeeReader(dec, narSum), l.NAR())
	verr = l.Check(verr)
	io.Copy(io.Discard, io.TeeReader(f, file)) // hash any tail the decoder left
	switch {
	case file.n != rec.FileSize:
		return fmt.Sprintf("file size %d, uploaded %d", file.n, rec.FileSize)
	case !bytes.Equal(file.h.Sum(nil), rec.FileHash):
		return fmt.Sprintf("file hash sha256:%s, uploaded sha256:%s", nixbase32.EncodeToString(file.h.Sum(nil)), nixbase32.EncodeToString(rec.FileHash))
	case verr != nil:
		return fmt.Sprintf("NAR: %v", verr)
	case uint64(narSum.n) != rec.NarSize:
		return fmt.Sprintf("NAR size %d, uploaded %d", narSum.n, rec.NarSize)
	case !bytes.Equal(narSum.h.Sum(nil), rec.NarHash):
		return fmt.Sprintf("NAR hash sha256:%s, uploaded sha256:%s", nixbase32.EncodeToString(narSum.h.Sum(nil)), nixbase32.EncodeToString(rec.NarHash))
	}
	return ""
}

func (s *Store) repair(ctx context.Context, rep *VerifyReport) error {
	unlock, err := s.lockFiles()
	if err != nil {
		return mapErr(err)
	}
	defer unlock()
	bad := map[string]bool{}
	for _, b := range rep.Bad {
		bad[b.Name] = true
	}
	err = s.db.Update(func(tx kv.Tx) error {
		var drop []string
		err := tx.Bucket(bPaths).ForEach(func(k, v []byte) error {
			var r pathRec
			if json.Unmarshal(v, &r) != nil || bad[r.Blob] {
				drop = append(drop, string(k))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, hp := range drop {
			if err := s.deletePath(tx, hp); err != nil {
				return err
			}
		}
		s.pendMu.Lock()
		for name := range bad {
			s.unpendLocked(name)
		}
		s.pendMu.Unlock()
		for name := range bad {
			if err := tx.Bucket(bBlobs).Delete([]byte(name)); err != nil {
				return err
			}
		}
		rep.Broken, err = s.dropBrokenClosures(ctx, tx)
		return err
	})
	if err != nil {
		return mapErr(err)
	}
	stamp := time.Now().UTC().Format("20060102T150405Z")
	for name := range bad {
		if err := s.quarantineBlob(name, name+"."+stamp); err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.log.Error("could not quarantine NAR file, removing it", "blob", name, "err", err)
		}
		if err := s.blobs.Remove(bg, name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.log.Error("could not remove a damaged NAR file; the next gc sweeps it as an orphan", "blob", name, "err", err)
		}
	}
	// The index no longer names the damaged files, so a removal that a
	// crash undoes leaves an orphan, which gc sweeps: worth a log line, not
	// a failed repair whose index changes are already committed.
	if err := s.blobs.Sync(bg); err != nil {
		s.log.Error("could not make the removal of damaged NAR files durable; the next gc sweeps any that come back", "err", err)
	}
	slices.Sort(rep.Broken)
	rep.Repaired = true
	return nil
}

// quarantineBlob keeps a damaged blob under quarantine for inspection: a
// rename where both are directories on one disk, a copy otherwise.
func (s *Store) quarantineBlob(name, to string) error {
	if from, q := s.blobs.Local(), s.quarantine.Local(); from != "" && q != "" {
		return os.Rename(filepath.Join(from, name), filepath.Join(q, to))
	}
	return blob.Copy(bg, s.blobs, name, s.quarantine, to)
}
