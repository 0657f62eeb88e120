package upload_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/blob"
	"github.com/bos55/concordia/internal/blob/diskblob"
	"github.com/bos55/concordia/internal/kv"
	"github.com/bos55/concordia/internal/kv/boltkv"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/upload"
)

// Replicas: two stores on one shared index and one set of files, as two
// `cache serve` processes on one bucket and database are. newReplicaPair
// gives them a real shared backend when one is set up (sharedBackends),
// else one bbolt file both open through a handle that says it is shared,
// and one directory of files: the same code paths in one process.

// sharedBolt is a bbolt index two stores use at once, as if shared by
// processes: Shared is true, so the stores keep nothing in memory that
// another needs, and Lock is the handle's, one for both.
type sharedBolt struct {
	*boltkv.DB
	mu    sync.Mutex
	opens int
}

func (s *sharedBolt) Shared() bool { return true }

func (s *sharedBolt) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.opens--; s.opens == 0 {
		return s.DB.Close()
	}
	return nil
}

// replicaBackends returns n backends sharing one index and one set of
// files; newBackend is set by a test file that has real servers.
var newSharedBackends = func(t testing.TB, n int) []upload.Backend {
	dir := t.TempDir()
	db, err := boltkv.Open(filepath.Join(dir, "index.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	shared := &sharedBolt{DB: db, opens: n}
	var dirs [3]blob.Dir
	for i, name := range []string{"blobs", "logs", "quarantine"} {
		d, err := diskblob.Open(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		dirs[i] = d
	}
	out := make([]upload.Backend, n)
	for i := range out {
		out[i] = upload.Backend{Dir: filepath.Join(dir, "local", string(rune('a'+i))), Index: shared,
			Blobs: dirs[0], Logs: dirs[1], Quarantine: dirs[2]}
	}
	return out
}

func newReplicaPair(t testing.TB, opts upload.Options) (a, b *upload.Store) {
	t.Helper()
	bes := newSharedBackends(t, 2)
	var ss [2]*upload.Store
	for i := range ss {
		s, err := upload.OpenBackend(context.Background(), bes[i], opts)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		ss[i] = s
	}
	return ss[0], ss[1]
}

var _ kv.DB = (*sharedBolt)(nil)

// TestReplicaClaimsOthersNAR: nix copy behind a load balancer sends a
// path's NAR to one replica and its narinfo to the other; the second
// knows the first verified it, and both serve the path.
func TestReplicaClaimsOthersNAR(t *testing.T) {
	ctx := context.Background()
	a, b := newReplicaPair(t, upload.Options{})
	for _, p := range closure(t, "replica-claim") {
		if _, err := a.PutNAR(ctx, p.fileName, bytes.NewReader(p.file)); err != nil {
			t.Fatal(err)
		}
		if err := b.PutNarInfo(ctx, p.hash, strings.NewReader(p.narinfo())); err != nil {
			t.Fatalf("narinfo of %s through the other replica: %v", p.base, err)
		}
		for _, s := range []*upload.Store{a, b} {
			got, err := narOf(t, s, p.hash)
			if err != nil || !bytes.Equal(got, p.nar) {
				t.Fatalf("NAR of %s: %v", p.base, err)
			}
		}
	}
}

// TestReplicaGCKeepsOthersPending: a NAR one replica received waits for
// its narinfo; GC on the other, which never saw it, must not delete it.
func TestReplicaGCKeepsOthersPending(t *testing.T) {
	ctx := context.Background()
	a, b := newReplicaPair(t, upload.Options{})
	old := closure(t, "replica-old")
	for _, p := range old {
		if err := p.upload(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	fresh := newPath(t, "replica-pending", []byte("waiting for its narinfo"))
	if _, err := a.PutNAR(ctx, fresh.fileName, bytes.NewReader(fresh.file)); err != nil {
		t.Fatal(err)
	}
	rep, err := b.GCWith(ctx, store.Policy{MaxSize: 1}, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Deleted) != len(old) {
		t.Fatalf("GC deleted %v, want the %d uploaded paths (max size 1 byte)", rep.Deleted, len(old))
	}
	if err := b.PutNarInfo(ctx, fresh.hash, strings.NewReader(fresh.narinfo())); err != nil {
		t.Fatalf("narinfo of the NAR pending on the other replica, after GC: %v", err)
	}
	if got, err := narOf(t, a, fresh.hash); err != nil || !bytes.Equal(got, fresh.nar) {
		t.Fatalf("NAR after GC: %v", err)
	}
}

// TestReplicasSameClosureAtOnce: two CI jobs push one closure through
// both replicas at once; both succeed and each NAR is kept once.
func TestReplicasSameClosureAtOnce(t *testing.T) {
	ctx := context.Background()
	a, b := newReplicaPair(t, upload.Options{})
	paths := closure(t, "replica-race")
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, s := range []*upload.Store{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, p := range paths {
				if err := p.upload(ctx, s); err != nil {
					errs[i] = err
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	st, err := b.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Paths != len(paths) || st.Blobs != len(paths) {
		t.Fatalf("%d paths and %d blobs, want %d of each", st.Paths, st.Blobs, len(paths))
	}
}

// TestReplicaPinKeepsClosureAgainstOthersGC: a pin made through one
// replica keeps the closure through GC on the other.
func TestReplicaPinKeepsClosureAgainstOthersGC(t *testing.T) {
	ctx := context.Background()
	a, b := newReplicaPair(t, upload.Options{})
	paths := closure(t, "replica-pin")
	for _, p := range paths {
		if err := p.upload(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Pin(ctx, paths[2].info.StorePath, "release"); err != nil {
		t.Fatal(err)
	}
	rep, err := b.GCWith(ctx, store.Policy{MaxSize: 1}, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Deleted) != 0 {
		t.Fatalf("GC through the other replica deleted %v of a pinned closure", rep.Deleted)
	}
	for _, p := range paths {
		for _, s := range []*upload.Store{a, b} {
			if got, err := narOf(t, s, p.hash); err != nil || !bytes.Equal(got, p.nar) {
				t.Fatalf("%s after GC: %v", p.base, err)
			}
		}
	}
}

// TestReplicaSweepsOrphans: a replica killed between publishing a NAR
// file and recording it leaves a file nothing accounts for; the sweep
// removes it once older than the grace period, and not before.
func TestReplicaSweepsOrphans(t *testing.T) {
	if !sharedOnDisk {
		t.Skip("plants a file in the shared directory")
	}
	ctx := context.Background()
	clock := newClock()
	a, _ := newReplicaPair(t, upload.Options{Now: clock.Now, PendingGrace: time.Hour})
	p := newPath(t, "replica-orphan", []byte("published, never recorded"))
	blobs := filepath.Join(filepath.Dir(a.Dir()), "..", "blobs")
	orphan := filepath.Join(blobs, p.fileName)
	if err := os.WriteFile(orphan, p.file, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := a.SweepPending(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(orphan); err != nil {
		t.Fatalf("a fresh file was swept: %v", err)
	}
	clock.Advance(2 * time.Hour)
	if _, err := a.SweepPending(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(orphan); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("orphan older than the grace period still there: %v", err)
	}
}

// sharedOnDisk says the replicas' files are a directory the test can
// reach into (not a bucket).
var sharedOnDisk = true
