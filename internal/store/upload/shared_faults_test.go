package upload_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/bos55/concordia/internal/sharedtest"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/upload"
)

// Faults of the shared backend's servers, on real servers: whatever
// breaks, the client gets an error, nothing partial becomes visible, a
// retry succeeds and no acknowledged path is lost.

func openOwn(t *testing.T, env *sharedtest.Env) *upload.Store {
	t.Helper()
	s, err := upload.OpenBackend(context.Background(), env.Backend(t), upload.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestSharedMinIOStoppedMidUpload: the bucket's server dies with half a
// NAR sent; the upload fails, after the restart nothing of it is
// visible, and the retry succeeds.
func TestSharedMinIOStoppedMidUpload(t *testing.T) {
	ctx := context.Background()
	env := sharedtest.NewOwn(t, false, true)
	s := openOwn(t, env)
	p := newPath(t, "minio-mid-upload", randomBytes(t, 12<<20)) // several 5 MiB parts
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		_, err := s.PutNAR(ctx, p.fileName, pr)
		done <- err
	}()
	pw.Write(p.file[:len(p.file)/2])
	env.MinIO.Kill()
	go func() { pw.Write(p.file[len(p.file)/2:]); pw.Close() }()
	if err := <-done; err == nil {
		t.Fatal("an upload whose bucket went away succeeded")
	}
	env.MinIO.Restart(t)
	if ok, _ := s.HasNAR(ctx, p.fileName); ok {
		t.Fatal("the failed upload's NAR is there")
	}
	for _, o := range env.Objects(t, "nar/") {
		if !strings.HasPrefix(o, ".tmp-") {
			t.Fatalf("published object %s left by a failed upload", o)
		}
	}
	if err := p.upload(ctx, s); err != nil {
		t.Fatalf("retry: %v", err)
	}
	if got, err := narOf(t, s, p.hash); err != nil || !bytes.Equal(got, p.nar) {
		t.Fatalf("NAR after the retry: %v", err)
	}
}

// TestSharedMinIOStoppedMidDownload: the server dies while a NAR is
// read: the reader gets an error, never a short NAR passed as whole.
func TestSharedMinIOStoppedMidDownload(t *testing.T) {
	ctx := context.Background()
	env := sharedtest.NewOwn(t, false, true)
	s := openOwn(t, env)
	p := newPath(t, "minio-mid-download", randomBytes(t, 24<<20))
	if err := p.upload(ctx, s); err != nil {
		t.Fatal(err)
	}
	info, err := s.PathInfo(ctx, p.hash)
	if err != nil {
		t.Fatal(err)
	}
	w := &killAfter{n: 4 << 20, kill: env.MinIO.Kill}
	if err := s.NAR(ctx, info, w); err == nil {
		t.Fatalf("NAR read through a dead server succeeded (%d bytes)", w.written)
	}
	env.MinIO.Restart(t)
	if got, err := narOf(t, s, p.hash); err != nil || !bytes.Equal(got, p.nar) {
		t.Fatalf("NAR after the restart: %v", err)
	}
}

// killAfter kills the server once n bytes went through it.
type killAfter struct {
	n, written int
	once       sync.Once
	kill       func()
}

func (k *killAfter) Write(p []byte) (int, error) {
	k.written += len(p)
	if k.written >= k.n {
		k.once.Do(k.kill)
	}
	return len(p), nil
}

// TestSharedMinIOStoppedDuringGC: GC whose bucket is down may delete
// records but loses no kept path; after the restart the kept paths are
// whole and the collected ones gone.
func TestSharedMinIOStoppedDuringGC(t *testing.T) {
	ctx := context.Background()
	env := sharedtest.NewOwn(t, false, true)
	s := openOwn(t, env)
	kept, gone := closure(t, "gc-kept"), closure(t, "gc-gone")
	for _, p := range append(kept, gone...) {
		if err := p.upload(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Pin(ctx, kept[2].info.StorePath, ""); err != nil {
		t.Fatal(err)
	}
	env.MinIO.Kill()
	s.GCWith(ctx, store.Policy{MaxSize: 1}, false) // may fail removing files
	env.MinIO.Restart(t)
	for _, p := range kept {
		if got, err := narOf(t, s, p.hash); err != nil || !bytes.Equal(got, p.nar) {
			t.Fatalf("kept %s after GC with the bucket down: %v", p.base, err)
		}
	}
	for _, p := range gone {
		if _, err := s.PathInfo(ctx, p.hash); err == nil {
			t.Fatalf("%s not collected", p.base)
		}
	}
}

// TestSharedPostgresRestartedMidUploads: the database restarts while
// uploads run; each either succeeds or errs, every one that succeeded
// is served whole, and retries of the others succeed.
func TestSharedPostgresRestartedMidUploads(t *testing.T) {
	ctx := context.Background()
	env := sharedtest.NewOwn(t, true, false)
	pg := env.PG
	s := openOwn(t, env)
	var paths []*fakePath
	for i := range 8 {
		paths = append(paths, closure(t, "pg-restart-"+string(rune('a'+i)))...)
	}
	errs := make([]error, len(paths))
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i, p := range paths {
			errs[i] = p.upload(ctx, s)
		}
	}()
	pg.Restart(t)
	wg.Wait()
	for i, p := range paths {
		if errs[i] != nil {
			if err := p.upload(ctx, s); err != nil && !errors.Is(err, context.Canceled) {
				t.Fatalf("retry of %s (failed with %v): %v", p.base, errs[i], err)
			}
		}
		if got, err := narOf(t, s, p.hash); err != nil || !bytes.Equal(got, p.nar) {
			t.Fatalf("%s (upload error %v): %v", p.base, errs[i], err)
		}
	}
}

func randomBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}
