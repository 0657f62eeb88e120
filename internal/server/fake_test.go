package server_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/bos55/concordia/internal/compress"
	"github.com/bos55/concordia/internal/server"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/pkg/nar"
)

// fakePath is one path of a fakeStore.
type fakePath struct {
	info *store.PathInfo
	nar  []byte
	// failAfter > 0 makes NAR fail after that many bytes.
	failAfter int
	// goneAtNAR makes NAR answer ErrNotFound (path deleted after lookup).
	goneAtNAR bool
	// entered (if set) gets a value when NAR starts; NAR then waits
	// for block to be closed.
	entered chan struct{}
	block   chan struct{}
}

// fakeStore is an in-memory store.Store with call counters.
type fakeStore struct {
	dir       string
	mu        sync.Mutex
	paths     map[string]*fakePath
	infoErr   error
	infoCalls atomic.Int64
	logs      map[string][]byte // drv -> content; key suffix ".bz2" means compressed
}

func newFakeStore() *fakeStore {
	return &fakeStore{dir: "/nix/store", paths: map[string]*fakePath{}, logs: map[string][]byte{}}
}

func (f *fakeStore) StoreDir() string { return f.dir }

func (f *fakeStore) PathInfo(ctx context.Context, hash string) (*store.PathInfo, error) {
	f.infoCalls.Add(1)
	if f.infoErr != nil {
		return nil, f.infoErr
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	p, ok := f.paths[hash]
	if !ok {
		return nil, store.ErrNotFound
	}
	info := *p.info
	return &info, nil
}

func (f *fakeStore) NAR(ctx context.Context, info *store.PathInfo, w io.Writer) error {
	f.mu.Lock()
	p, ok := f.paths[filepath.Base(info.StorePath)[:32]]
	f.mu.Unlock()
	if !ok || p.goneAtNAR {
		return fmt.Errorf("dump %s: %w", info.StorePath, store.ErrNotFound)
	}
	data := p.nar
	if p.entered != nil {
		select {
		case p.entered <- struct{}{}:
		default:
		}
		<-p.block
	}
	if p.failAfter > 0 {
		if _, err := writeChunks(w, data[:p.failAfter]); err != nil {
			return err
		}
		return errors.New("disk on fire")
	}
	_, err := writeChunks(w, data)
	return err
}

// writeChunks writes in 1000-byte pieces, as a real dump would write in
// buffer-sized pieces, so the range logic sees chunk boundaries.
func writeChunks(w io.Writer, data []byte) (int, error) {
	n := 0
	for len(data) > 0 {
		c := min(1000, len(data))
		m, err := w.Write(data[:c])
		n += m
		if err != nil {
			return n, err
		}
		data = data[c:]
	}
	return n, nil
}

func (f *fakeStore) delete(hash string) {
	f.mu.Lock()
	delete(f.paths, hash)
	f.mu.Unlock()
}

func (f *fakeStore) BuildLog(ctx context.Context, drv string) (io.ReadCloser, string, error) {
	if b, ok := f.logs[drv]; ok {
		return io.NopCloser(bytes.NewReader(b)), "", nil
	}
	if b, ok := f.logs[drv+".bz2"]; ok {
		return io.NopCloser(bytes.NewReader(b)), "bz2", nil
	}
	return nil, "", store.ErrNotFound
}

// realStore adds the Realisations capability.
type realStore struct {
	*fakeStore
	docs map[string][]byte
}

func (r *realStore) Realisation(ctx context.Context, id string) ([]byte, error) {
	if d, ok := r.docs[id]; ok {
		return d, nil
	}
	return nil, store.ErrNotFound
}

// fileStore adds FileNAR: every NAR is kept as a ready-made file in
// compression comp.
type fileStore struct {
	*fakeStore
	comp  string
	files map[string][]byte
}

type nopSeekCloser struct{ *bytes.Reader }

func (nopSeekCloser) Close() error { return nil }

func (s *fileStore) OpenFileNAR(ctx context.Context, info *store.PathInfo) (store.ReadSeekCloser, string, []byte, int64, error) {
	b, ok := s.files[filepath.Base(info.StorePath)[:32]]
	if !ok {
		return nil, "", nil, 0, store.ErrNotFound
	}
	sum := sha256.Sum256(b)
	return nopSeekCloser{bytes.NewReader(b)}, s.comp, sum[:], int64(len(b)), nil
}

// addTree builds a directory tree, dumps it with pkg/nar and registers it
// under hash with the given references.
func (f *fakeStore) addTree(t testing.TB, hash, name string, files map[string]string, refs ...string) *fakePath {
	t.Helper()
	return f.addBuilt(t, hash, name, func(dir string) {
		for rel, content := range files {
			p := filepath.Join(dir, rel)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}, refs...)
}

// addBuilt registers the NAR of whatever build makes in its directory.
func (f *fakeStore) addBuilt(t testing.TB, hash, name string, build func(dir string), refs ...string) *fakePath {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "p")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	build(dir)
	var buf bytes.Buffer
	if _, err := nar.DumpPath(&buf, dir); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(buf.Bytes())
	sp := f.dir + "/" + hash + "-" + name
	full := make([]string, len(refs))
	for i, r := range refs {
		full[i] = f.dir + "/" + r
	}
	p := &fakePath{
		info: &store.PathInfo{StorePath: sp, NarHash: sum[:], NarSize: uint64(buf.Len()), References: full,
			Deriver: f.dir + "/" + hash[:31] + "d-" + name + ".drv"},
		nar: buf.Bytes(),
	}
	f.mu.Lock()
	f.paths[hash] = p
	f.mu.Unlock()
	return p
}

// memCache is a ZstdCache fake: compresses fully on first Get, then
// serves complete entries (or, with incomplete set, entries that claim to
// be still growing).
type memCache struct {
	mu         sync.Mutex
	data       map[string][]byte
	incomplete bool
	gets       atomic.Int64
	produced   atomic.Int64
}

func newMemCache() *memCache { return &memCache{data: map[string][]byte{}} }

type memEntry struct {
	*bytes.Reader
	complete bool
}

func (e *memEntry) Close() error { return nil }
func (e *memEntry) Complete() bool {
	return e.complete
}
func (e *memEntry) Size() (int64, bool) { return e.Reader.Size(), e.complete }

func (c *memCache) Get(ctx context.Context, key string, produce func(context.Context, io.Writer) error) (server.ZstdEntry, error) {
	c.gets.Add(1)
	c.mu.Lock()
	defer c.mu.Unlock()
	b, ok := c.data[key]
	if !ok {
		c.produced.Add(1)
		var buf bytes.Buffer
		enc, err := compress.NewEncoder(&buf, 1)
		if err != nil {
			return nil, err
		}
		if err := produce(ctx, enc); err != nil {
			return nil, err
		}
		if err := enc.Close(); err != nil {
			return nil, err
		}
		b = buf.Bytes()
		c.data[key] = b
	}
	return &memEntry{Reader: bytes.NewReader(b), complete: !c.incomplete}, nil
}
