package upload_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/bos55/concordia/internal/sharedtest"
	"github.com/bos55/concordia/internal/store/upload"
	"github.com/bos55/concordia/pkg/nar"
	"github.com/bos55/concordia/pkg/narinfo"
)

// fakePath is one store path of a test closure: its NAR, compressed
// file and narinfo, consistent with each other.
type fakePath struct {
	base     string // <hash>-<name>
	hash     string
	nar      []byte
	file     []byte // zstd
	fileName string // <filehash>.nar.zst
	info     *narinfo.NarInfo
}

// makeNAR returns a NAR of a single regular file with contents.
func makeNAR(t testing.TB, contents []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := nar.NewWriter(&buf)
	if err := w.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeRegular, Size: int64(len(contents))}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(contents); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func zstdBytes(t testing.TB, b []byte) []byte {
	t.Helper()
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	return enc.EncodeAll(b, nil)
}

// hashPart derives a valid, unique 32-char nix32 hash part from a seed.
func hashPart(seed string) string {
	sum := sha256.Sum256([]byte(seed))
	return nixbase32.EncodeToString(sum[:20])
}

// newPath makes a consistent fake path named name with the given
// references (base names; "self" means itself).
func newPath(t testing.TB, name string, contents []byte, refs ...string) *fakePath {
	t.Helper()
	p := &fakePath{hash: hashPart(name)}
	p.base = p.hash + "-" + name
	p.nar = makeNAR(t, contents)
	p.file = zstdBytes(t, p.nar)
	fh := sha256.Sum256(p.file)
	nh := sha256.Sum256(p.nar)
	p.fileName = nixbase32.EncodeToString(fh[:]) + ".nar.zst"
	fileHash := narinfo.SHA256(fh[:])
	var rs []string
	for _, r := range refs {
		if r == "self" {
			r = p.base
		}
		rs = append(rs, r)
	}
	p.info = &narinfo.NarInfo{
		StorePath: "/nix/store/" + p.base, URL: "nar/" + p.fileName, Compression: "zstd",
		FileHash: &fileHash, FileSize: uint64(len(p.file)),
		NarHash: narinfo.SHA256(nh[:]), NarSize: uint64(len(p.nar)),
		References: rs,
	}
	return p
}

func (p *fakePath) narinfo() string { return p.info.String() }

// upload PUTs the NAR then the narinfo, as nix copy does.
func (p *fakePath) upload(ctx context.Context, s *upload.Store) error {
	if _, err := s.PutNAR(ctx, p.fileName, bytes.NewReader(p.file)); err != nil {
		return fmt.Errorf("NAR of %s: %w", p.base, err)
	}
	if err := s.PutNarInfo(ctx, p.hash, strings.NewReader(p.narinfo())); err != nil {
		return fmt.Errorf("narinfo of %s: %w", p.base, err)
	}
	return nil
}

// atOnce runs call(0) to call(n-1) in goroutines released together and
// returns their errors by index: uploads that race for the same commit.
func atOnce(n int, call func(i int) error) []error {
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs[i] = call(i)
		}()
	}
	close(start)
	wg.Wait()
	return errs
}

// closure makes leaf <- mid <- top (top also refers to leaf and itself).
func closure(t testing.TB, tag string) []*fakePath {
	leaf := newPath(t, tag+"-leaf", []byte("leaf contents "+tag))
	mid := newPath(t, tag+"-mid", []byte("mid refers to "+leaf.base), leaf.base)
	top := newPath(t, tag+"-top", bytes.Repeat([]byte("top "+tag), 1000), mid.base, leaf.base, "self")
	return []*fakePath{leaf, mid, top}
}

// sharedBackend runs the package's tests on S3 and PostgreSQL instead of
// a directory (CONCORDIA_UPLOAD_BACKEND=shared; the test script runs the
// package both ways). A dir names one backend: opening it again reopens
// the same database and bucket.
var (
	sharedBackend = os.Getenv("CONCORDIA_UPLOAD_BACKEND") == "shared"
	sharedEnvs    sync.Map // dir -> *sharedtest.Env
)

// diskOnly skips a test that reaches into the store's directory (files
// planted, damaged or counted there) when the files are in a bucket.
func diskOnly(t testing.TB) {
	t.Helper()
	if sharedBackend {
		t.Skip("looks at the store's files on disk")
	}
}

func openStore(t testing.TB, dir string, opts upload.Options) *upload.Store {
	t.Helper()
	s, err := openAt(t, dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// openAt opens the store dir names on the backend the tests run on.
func openAt(t testing.TB, dir string, opts upload.Options) (*upload.Store, error) {
	t.Helper()
	if !sharedBackend {
		s, err := upload.Open(context.Background(), dir, opts)
		if err == nil {
			diskStores.Store(dir, s)
		}
		return s, err
	}
	env, ok := sharedEnvs.Load(dir)
	if !ok {
		env, _ = sharedEnvs.LoadOrStore(dir, sharedtest.New(t))
	}
	be := env.(*sharedtest.Env).Backend(t)
	be.Dir = dir
	if opts.DeleteDelay == 0 {
		opts.DeleteDelay = -1 // collected files go at once, as on a disk, where these tests count them
	}
	return upload.OpenBackend(context.Background(), be, opts)
}

// blobFiles lists the NAR files, temp files included: in the bucket,
// unpublished uploads are named ".tmp-" and their key.
func blobFiles(t testing.TB, dir string) []string {
	t.Helper()
	if sharedBackend {
		env, ok := sharedEnvs.Load(dir)
		if !ok {
			t.Fatalf("no store opened at %s", dir)
		}
		return env.(*sharedtest.Env).Objects(t, "nar/")
	}
	ents, err := os.ReadDir(filepath.Join(dir, "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func narOf(t testing.TB, s *upload.Store, hp string) ([]byte, error) {
	t.Helper()
	ctx := context.Background()
	info, err := s.PathInfo(ctx, hp)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	err = s.NAR(ctx, info, &buf)
	return buf.Bytes(), err
}

func fileName(file []byte) string {
	fh := sha256.Sum256(file)
	return nixbase32.EncodeToString(fh[:]) + ".nar.zst"
}

// fakeClock is a settable clock for Options.Now, safe for the store's
// goroutines to read.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *fakeClock { return &fakeClock{now: time.Now()} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// readBlob and writeBlob read and replace a stored NAR file (to damage
// it), on disk or in the bucket.
func readBlob(t testing.TB, dir, name string) []byte {
	t.Helper()
	if sharedBackend {
		return sharedEnvOf(t, dir).ReadObject(t, "nar/"+name)
	}
	if s, ok := diskStores.Load(dir); ok {
		if b, ok := s.(*upload.Store).InlineBlob(name); ok {
			return b
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, "blobs", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// diskStores are the last store opened on each directory, whose small NAR
// files are in its index (small.go): readBlob and writeBlob reach them.
var diskStores sync.Map

func writeBlob(t testing.TB, dir, name string, data []byte) {
	t.Helper()
	if sharedBackend {
		sharedEnvOf(t, dir).WriteObject(t, "nar/"+name, data)
		return
	}
	if s, ok := diskStores.Load(dir); ok {
		if _, ok := s.(*upload.Store).InlineBlob(name); ok {
			if err := s.(*upload.Store).SetInlineBlob(name, data); err != nil {
				t.Fatal(err)
			}
			return
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "blobs", name), data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func sharedEnvOf(t testing.TB, dir string) *sharedtest.Env {
	t.Helper()
	env, ok := sharedEnvs.Load(dir)
	if !ok {
		t.Fatalf("no store opened at %s", dir)
	}
	return env.(*sharedtest.Env)
}
