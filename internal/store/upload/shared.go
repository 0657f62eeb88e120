package upload

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/bos55/concordia/internal/blob"
	"github.com/bos55/concordia/internal/kv"
	"github.com/bos55/concordia/internal/store"
)

// Replicas: several cache processes on one shared index and one bucket.
//
// What one process keeps in memory for an index it owns is in the index
// when it is shared: a verified blob no narinfo claims yet is a record
// without claims (recordPending), so the narinfo may come to any replica
// and GC on any replica sees it. The file lock is the index's, one for all
// replicas, so publishing a blob and deleting it stay ordered across them,
// and so is every write transaction. What a crash can leave (a blob
// published whose record was never written, an upload cut off before it
// was published) is not reconciled at start, when other replicas are
// publishing, but swept once older than the pending grace period, which
// no upload outlives (sweepOrphans).

// sweepOrphans removes, in a shared store, the files no record accounts
// for that are older than cutoff: NAR files and logs a replica published
// and died before recording, and unpublished leftovers of cut-off writes
// (incomplete multipart uploads). The caller holds the file lock, so no
// replica publishes meanwhile.
func (s *Store) sweepOrphans(ctx context.Context, cutoff time.Time) (int, error) {
	if !s.db.Shared() {
		return 0, nil
	}
	n := 0
	for _, d := range []struct {
		dir    blob.Dir
		bucket []byte
		kind   string
		key    func(name string) (string, bool)
	}{
		{s.blobs, bBlobs, "nar/", func(name string) (string, bool) { return name, true }},
		{s.logs, bLogFiles, "log/", func(name string) (string, bool) { return strings.CutSuffix(name, logExt) }},
	} {
		swept, err := d.dir.Sweep(ctx, cutoff)
		if err != nil {
			return n, err
		}
		n += swept
		// A file GC collected counts from then, not from its upload.
		var old []blob.Info
		err = d.dir.List(ctx, func(fi blob.Info) error {
			old = append(old, fi)
			return nil
		})
		if err != nil {
			return n, err
		}
		var orphans []string
		err = s.db.Update(func(tx kv.Tx) error {
			b, doomed := tx.Bucket(d.bucket), tx.Bucket(bDoomed)
			orphans = orphans[:0]
			for _, fi := range old {
				k, ok := d.key(fi.Name)
				claimed := ok && b.Get([]byte(k)) != nil || s.isPending(fi.Name)
				wasDoomed := doomed.Get([]byte(d.kind+fi.Name)) != nil
				switch {
				case claimed:
					if wasDoomed { // uploaded again since its GC
						if err := doomed.Delete([]byte(d.kind + fi.Name)); err != nil {
							return err
						}
					}
				case s.doomedKept(doomed, d.kind, fi.Name):
				case wasDoomed || fi.ModTime.Before(cutoff):
					orphans = append(orphans, fi.Name)
					if err := doomed.Delete([]byte(d.kind + fi.Name)); err != nil {
						return err
					}
				}
			}
			return nil
		})
		if err != nil {
			return n, err
		}
		for _, name := range orphans {
			s.log.Info("removing a file no index record accounts for", "file", name)
			if err := d.dir.Remove(ctx, name); err != nil {
				return n, err
			}
			n++
		}
	}
	return n, nil
}

// DefaultDeleteDelay is how long a collected file stays in a shared
// store's bucket: longer than any one NAR download takes.
const DefaultDeleteDelay = 15 * time.Minute

// delayDeletes keeps the files GC collected from a shared store for
// Options.DeleteDelay, noting when, instead of deleting them: another
// replica may be streaming one, and an object store's object, unlike an
// open file, goes with its name. sweepOrphans deletes them once the delay
// has passed and no record claims them again. It reports whether it took
// the files over.
func (s *Store) delayDeletes(c *collected) bool {
	if !s.db.Shared() || s.opts.DeleteDelay < 0 || len(c.blobs)+len(c.logs) == 0 {
		return false
	}
	now := []byte(strconv.FormatInt(s.now().Unix(), 10))
	err := s.db.Update(func(tx kv.Tx) error {
		b := tx.Bucket(bDoomed)
		for _, name := range c.blobs {
			if err := b.Put([]byte("nar/"+name), now); err != nil {
				return err
			}
		}
		for _, drv := range c.logs {
			if err := b.Put([]byte("log/"+logName(drv)), now); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		// Unnoted, they are orphans swept past the pending grace period.
		s.log.Warn("GC could not note its collected files; they are swept later", "err", err)
	}
	return true
}

// doomedKept reports whether file (under kind "nar/" or "log/") was
// collected less than Options.DeleteDelay ago.
func (s *Store) doomedKept(b kv.Bucket, kind, name string) bool {
	v := b.Get([]byte(kind + name))
	if v == nil {
		return false
	}
	at, err := strconv.ParseInt(string(v), 10, 64)
	return err == nil && s.now().Before(time.Unix(at, 0).Add(s.opts.DeleteDelay))
}

// isPending reports whether this process holds blob name as pending.
func (s *Store) isPending(name string) bool {
	s.pendMu.Lock()
	defer s.pendMu.Unlock()
	return s.pending[name] != nil
}

// NARRedirect implements store.NARRedirector: with Options.RedirectTTL set
// and files in a store that presigns, a presigned URL of the path's file.
func (s *Store) NARRedirect(ctx context.Context, info *store.PathInfo) (string, error) {
	ps, ok := s.blobs.(blob.Presigner)
	if !ok || s.opts.RedirectTTL <= 0 {
		return "", nil
	}
	rec, err := s.recordFor(info)
	if err != nil {
		return "", err
	}
	u, err := ps.PresignGet(ctx, rec.Blob, s.opts.RedirectTTL)
	if err != nil {
		return "", fmt.Errorf("NAR of %s: presigning its file: %w", rec.StorePath, err)
	}
	return u.String(), nil
}
