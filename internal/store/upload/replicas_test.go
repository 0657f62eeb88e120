package upload_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/sharedtest"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/upload"
	"github.com/minio/minio-go/v7"
)

// Replicas: two stores on one PostgreSQL index and one MinIO bucket, as
// two `cache serve` processes behind a load balancer are.

func newReplicaPair(t testing.TB, opts upload.Options) (a, b *upload.Store, env *sharedtest.Env) {
	t.Helper()
	env = sharedtest.New(t)
	var ss [2]*upload.Store
	for i := range ss {
		s, err := upload.OpenBackend(context.Background(), env.Backend(t), opts)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		ss[i] = s
	}
	return ss[0], ss[1], env
}

// TestReplicaClaimsOthersNAR: nix copy behind a load balancer sends a
// path's NAR to one replica and its narinfo to the other; the second
// knows the first verified it, and both serve the path.
func TestReplicaClaimsOthersNAR(t *testing.T) {
	ctx := context.Background()
	a, b, _ := newReplicaPair(t, upload.Options{})
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
	a, b, _ := newReplicaPair(t, upload.Options{})
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
	a, b, _ := newReplicaPair(t, upload.Options{})
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
	a, b, _ := newReplicaPair(t, upload.Options{})
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
	ctx := context.Background()
	clock := newClock()
	a, _, env := newReplicaPair(t, upload.Options{Now: clock.Now, PendingGrace: time.Hour})
	p := newPath(t, "replica-orphan", []byte("published, never recorded"))
	mc := env.MinIO.Client(t)
	if _, err := mc.PutObject(ctx, env.Bucket, "nar/"+p.fileName, bytes.NewReader(p.file), int64(len(p.file)), minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	exists := func() bool {
		_, err := mc.StatObject(ctx, env.Bucket, "nar/"+p.fileName, minio.StatObjectOptions{})
		return err == nil
	}
	if _, err := a.SweepPending(ctx); err != nil {
		t.Fatal(err)
	}
	if !exists() {
		t.Fatal("a fresh file was swept")
	}
	clock.Advance(2 * time.Hour)
	if _, err := a.SweepPending(ctx); err != nil {
		t.Fatal(err)
	}
	if exists() {
		t.Fatal("an orphan older than the grace period is still there")
	}
}

// TestReplicasCollectAtOnce: GC started on both replicas at once, while
// uploads go on through both, runs one at a time (the file lock is the
// database's): both succeed and every upload acknowledged and pinned is
// whole after.
func TestReplicasCollectAtOnce(t *testing.T) {
	ctx := context.Background()
	a, b, _ := newReplicaPair(t, upload.Options{})
	var pinned []*fakePath
	for i := range 4 {
		c := closure(t, "collect-at-once-"+string(rune('a'+i)))
		pinned = append(pinned, c...)
		s := []*upload.Store{a, b}[i%2]
		for _, p := range c {
			if err := p.upload(ctx, s); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Pin(ctx, c[2].info.StorePath, ""); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	errs := make([]error, 4)
	during := make([][]*fakePath, 2)
	for i, s := range []*upload.Store{a, b} {
		wg.Add(2)
		go func() {
			defer wg.Done()
			_, errs[i] = s.GCWith(ctx, store.Policy{MaxSize: 1}, false)
		}()
		go func() {
			defer wg.Done()
			for j := range 3 {
				// Pinned by hash before it exists: GC may run between
				// the upload and any later pin.
				p := newPath(t, fmt.Sprintf("during-gc-%d-%d", i, j), []byte("uploaded while GC runs"))
				if err := s.Pin(ctx, p.hash, ""); err != nil {
					errs[2+i] = err
					return
				}
				if err := p.upload(ctx, s); err != nil {
					errs[2+i] = err
					return
				}
				during[i] = append(during[i], p)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	pinned = append(append(pinned, during[0]...), during[1]...)
	for _, p := range pinned {
		for _, s := range []*upload.Store{a, b} {
			if got, err := narOf(t, s, p.hash); err != nil || !bytes.Equal(got, p.nar) {
				t.Fatalf("%s after two GCs at once: %v", p.base, err)
			}
		}
	}
}

// TestReplicaGCKeepsFileOthersStream: a replica streaming a NAR keeps
// getting it whole while another replica's GC collects its path; the
// file goes once Options.DeleteDelay has passed, and not before.
func TestReplicaGCKeepsFileOthersStream(t *testing.T) {
	ctx := context.Background()
	clock := newClock()
	a, b, env := newReplicaPair(t, upload.Options{Now: clock.Now, DeleteDelay: time.Hour})
	p := newPath(t, "streamed-while-collected", randomBytes(t, 8<<20))
	if err := p.upload(ctx, a); err != nil {
		t.Fatal(err)
	}
	f, _, _, _, err := a.OpenFileNAR(ctx, &store.PathInfo{StorePath: p.info.StorePath})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	head := make([]byte, 1<<20)
	if _, err := io.ReadFull(f, head); err != nil {
		t.Fatal(err)
	}
	if rep, err := b.GCWith(ctx, store.Policy{MaxSize: 1}, false); err != nil || len(rep.Deleted) != 1 {
		t.Fatalf("GC through the other replica: %+v %v", rep, err)
	}
	rest, err := io.ReadAll(f)
	if err != nil || !bytes.Equal(append(head, rest...), p.file) {
		t.Fatalf("the stream of a collected path broke off or changed: %v", err)
	}
	objects := func() int { return len(env.Objects(t, "nar/")) }
	if n := objects(); n != 1 {
		t.Fatalf("%d NAR files right after GC, want the collected one kept", n)
	}
	clock.Advance(30 * time.Minute)
	b.SweepPending(ctx)
	if n := objects(); n != 1 {
		t.Fatalf("%d NAR files within the delete delay", n)
	}
	clock.Advance(time.Hour)
	b.SweepPending(ctx)
	if n := objects(); n != 0 {
		t.Fatalf("%d NAR files after the delete delay, want none", n)
	}
}

// TestSharedUploadCannotReplaceBlob: a write token holder sends other
// bytes under the name of a stored NAR file, through the other replica:
// refused, and the stored file is untouched (an upload streams under its
// final key, but is completed only once verified).
func TestSharedUploadCannotReplaceBlob(t *testing.T) {
	ctx := context.Background()
	a, b, env := newReplicaPair(t, upload.Options{})
	p := newPath(t, "shared-victim", randomBytes(t, 11<<20))
	if err := p.upload(ctx, a); err != nil {
		t.Fatal(err)
	}
	forged := append(bytes.Clone(p.file[:len(p.file)-100]), bytes.Repeat([]byte{0}, 100)...)
	if _, err := b.PutNAR(ctx, p.fileName, bytes.NewReader(forged)); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("forged bytes under a stored name: %v, want ErrInvalid", err)
	}
	if got := env.ReadObject(t, "nar/"+p.fileName); !bytes.Equal(got, p.file) {
		t.Fatal("the stored NAR file changed")
	}
	for _, s := range []*upload.Store{a, b} {
		if got, err := narOf(t, s, p.hash); err != nil || !bytes.Equal(got, p.nar) {
			t.Fatalf("NAR after the forged upload: %v", err)
		}
	}
	for _, o := range env.Objects(t, "nar/") {
		if strings.HasPrefix(o, ".tmp-") {
			t.Fatalf("the forged upload left %s", o)
		}
	}
}
