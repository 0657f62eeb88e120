package upload

import (
	"context"
	"fmt"
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
		key    func(name string) (string, bool)
	}{
		{s.blobs, bBlobs, func(name string) (string, bool) { return name, true }},
		{s.logs, bLogFiles, func(name string) (string, bool) { return strings.CutSuffix(name, logExt) }},
	} {
		swept, err := d.dir.Sweep(ctx, cutoff)
		if err != nil {
			return n, err
		}
		n += swept
		var old []blob.Info
		err = d.dir.List(ctx, func(fi blob.Info) error {
			if fi.ModTime.Before(cutoff) {
				old = append(old, fi)
			}
			return nil
		})
		if err != nil {
			return n, err
		}
		var orphans []string
		err = s.db.View(func(tx kv.Tx) error {
			b := tx.Bucket(d.bucket)
			orphans = orphans[:0]
			for _, fi := range old {
				k, ok := d.key(fi.Name)
				if !ok || b.Get([]byte(k)) == nil && !s.isPending(fi.Name) {
					orphans = append(orphans, fi.Name)
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
