package migrate_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/bos55/concordia/internal/migrate"
	"github.com/bos55/concordia/internal/nartest"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/upload"
	"github.com/bos55/concordia/pkg/narinfo"
)

const upstream = "https://cache.example.org"

// path is one store path of a test store: its NAR, its file as stored
// (zstd) and a narinfo consistent with both.
type path struct {
	base, hash string
	nar, file  []byte
	name       string // of the NAR file
	info       *narinfo.NarInfo
}

func hashPart(seed string) string {
	sum := sha256.Sum256([]byte(seed))
	return nixbase32.EncodeToString(sum[:20])
}

func newPath(t *testing.T, name, contents string, refs ...string) *path {
	t.Helper()
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	p := &path{hash: hashPart(name)}
	p.base = p.hash + "-" + name
	p.nar = nartest.File([]byte(contents))
	p.file = enc.EncodeAll(p.nar, nil)
	fh, nh := sha256.Sum256(p.file), sha256.Sum256(p.nar)
	p.name = nixbase32.EncodeToString(fh[:]) + ".nar.zst"
	fileHash := narinfo.SHA256(fh[:])
	p.info = &narinfo.NarInfo{
		StorePath: "/nix/store/" + p.base, URL: "nar/" + p.name, Compression: "zstd",
		FileHash: &fileHash, FileSize: uint64(len(p.file)),
		NarHash: narinfo.SHA256(nh[:]), NarSize: uint64(len(p.nar)),
	}
	for _, r := range refs {
		if r == "self" {
			r = p.base
		}
		p.info.References = append(p.info.References, r)
	}
	return p
}

func (p *path) upload(t *testing.T, s *upload.Store) {
	t.Helper()
	ctx := context.Background()
	if _, err := s.PutNAR(ctx, p.name, bytes.NewReader(p.file)); err != nil {
		t.Fatalf("NAR of %s: %v", p.base, err)
	}
	if err := s.PutNarInfo(ctx, p.hash, strings.NewReader(p.info.String())); err != nil {
		t.Fatalf("narinfo of %s: %v", p.base, err)
	}
}

// elsewhere is a store that has one path (the machine's /nix/store):
// a reference to it counts as present.
type elsewhere struct {
	p      *path
	origin string // an upstream's checking view, "" for /nix/store
}

func (e elsewhere) StoreDir() string { return "/nix/store" }

func (e elsewhere) PathInfo(ctx context.Context, hp string) (*store.PathInfo, error) {
	if hp != e.p.hash {
		return nil, store.ErrNotFound
	}
	return &store.PathInfo{StorePath: e.p.info.StorePath, NarHash: e.p.info.NarHash.Digest, NarSize: e.p.info.NarSize,
		Origin: e.origin}, nil
}

func (e elsewhere) NAR(ctx context.Context, info *store.PathInfo, w io.Writer) error {
	_, err := w.Write(e.p.nar)
	return err
}

var outside = newElsewhere("outside", "")

func newElsewhere(name, origin string) elsewhere {
	p := &path{hash: hashPart(name)}
	p.base = p.hash + "-" + name
	p.nar = nartest.File([]byte("in " + name))
	sum := sha256.Sum256(p.nar)
	p.info = &narinfo.NarInfo{StorePath: "/nix/store/" + p.base, NarHash: narinfo.SHA256(sum[:]), NarSize: uint64(len(p.nar))}
	return elsewhere{p, origin}
}

func open(t *testing.T, dir string, keys ...narinfo.SecretKey) *upload.Store {
	t.Helper()
	return openWith(t, dir, upload.Options{SignKeys: keys, Others: []store.Store{outside}})
}

func openWith(t *testing.T, dir string, opts upload.Options) *upload.Store {
	t.Helper()
	s, err := upload.Open(context.Background(), dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// fixture is a source store holding a bit of everything.
type fixture struct {
	dir          string
	src          *upload.Store
	leaf, mid    *path
	top, twin    *path // twin shares leaf's NAR file
	pulled       *path
	drv, realID  string
	log, listing string
}

func newFixture(t *testing.T) *fixture { return newFixtureInline(t, 0) }

// newFixtureInline is newFixture whose source keeps NAR files up to
// inlineMax in its index (0: the default; -1: every one a file).
func newFixtureInline(t *testing.T, inlineMax int64) *fixture {
	t.Helper()
	ctx := context.Background()
	own, _, _ := narinfo.GenerateKey("cache-1")
	up, _, _ := narinfo.GenerateKey("upstream-1")
	f := &fixture{dir: t.TempDir()}
	f.src = openWith(t, f.dir, upload.Options{SignKeys: []narinfo.SecretKey{own}, Others: []store.Store{outside}, InlineMax: inlineMax})
	f.drv = hashPart("drv") + "-top.drv"
	f.leaf = newPath(t, "leaf", "leaf contents")
	f.twin = newPath(t, "twin", "leaf contents") // the same NAR file as leaf
	f.mid = newPath(t, "mid", "mid", f.leaf.base, outside.p.base)
	f.top = newPath(t, "top", strings.Repeat("top ", 5000), f.mid.base, f.leaf.base, "self")
	f.top.info.Deriver = f.drv
	f.top.info.Sigs = []string{} // signed below by a builder key
	builder, _, _ := narinfo.GenerateKey("builder-1")
	f.top.info.Sign(builder)
	for _, p := range []*path{f.leaf, f.twin, f.mid, f.top} {
		p.upload(t, f.src)
	}
	f.pulled = newPath(t, "pulled", "from upstream", hashPart("never here")+"-dep")
	ni := *f.pulled.info
	ni.URL = "nar/upstream-" + f.pulled.name
	ni.Sign(up)
	if _, err := f.src.PutNAR(ctx, f.pulled.name, bytes.NewReader(f.pulled.file)); err != nil {
		t.Fatal(err)
	}
	if err := f.src.Adopt(ctx, f.pulled.name, &ni, upstream); err != nil {
		t.Fatal(err)
	}
	return f
}

// docs adds the documents that belong to the paths, once they are in.
func (f *fixture) docs(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	s := f.src
	f.log = strings.Repeat("building top\n", 3000)
	f.realID = "sha256:" + strings.Repeat("a", 64) + "!out"
	f.listing = `{"version":1,"root":{"type":"regular","size":20000}}`
	must(t, s.PutLog(ctx, f.drv, strings.NewReader(f.log)))
	must(t, s.PutRealisation(ctx, f.realID, strings.NewReader(`{"id":"`+f.realID+`","outPath":"`+f.top.base+`","signatures":[]}`)))
	must(t, s.PutListing(ctx, f.top.hash, strings.NewReader(f.listing)))
	_, err := s.PinAs(ctx, f.top.info.StorePath, "host a", "ci")
	must(t, err)
	_, err = s.PutTombstone(ctx, upload.Tombstone{StorePath: "/nix/store/" + hashPart("gone") + "-gone",
		NarHash: bytes.Repeat([]byte{7}, 32), RefsHash: bytes.Repeat([]byte{8}, 32), Collected: time.Unix(1_700_000_000, 0)})
	must(t, err)
	must(t, s.SetPathTimes(ctx, f.leaf.hash, time.Unix(1_600_000_000, 0), time.Unix(1_650_000_000, 0), time.Time{}))
}

// TestMigrateUpstreamReference: a path uploaded while its reference was
// only an upstream's cannot be published into a destination that does
// not consult that upstream; it fails with the reason, and the
// destination keeps the source's record that the upstream has the
// reference.
func TestMigrateUpstreamReference(t *testing.T) {
	ctx := context.Background()
	up := newElsewhere("upstream-only", upstream)
	src := openWith(t, t.TempDir(), upload.Options{Others: []store.Store{outside, up}})
	p := newPath(t, "refers-upstream", "x", up.p.base)
	p.upload(t, src)
	dst := open(t, t.TempDir())
	rep, err := migrate.Run(ctx, src, dst, migrate.Options{})
	if !errors.Is(err, migrate.ErrIncomplete) || len(rep.Failed) != 1 || !strings.Contains(rep.Failed[0].Err, "only the upstream") {
		t.Fatalf("Run: %+v, %v; want the path failed for its upstream reference", rep, err)
	}
	if marks, _ := dst.UpstreamPaths(ctx); marks[up.p.hash] != upstream {
		t.Errorf("upstream marks at the destination: %v", marks)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) all() []*path { return []*path{f.leaf, f.twin, f.mid, f.top, f.pulled} }

func newFull(t *testing.T) *fixture {
	f := newFixture(t)
	f.docs(t)
	return f
}

// TestMigrateCopiesEverything: every path, byte for byte, with its
// narinfo and signatures (the cache's own kept, nothing added by the
// destination), times, listing, the pulled path as pulled, the log, the
// realisation, the pin with its owner and the tombstone; the shared NAR
// file once. A second run copies nothing.
func TestMigrateCopiesEverything(t *testing.T) {
	ctx := context.Background()
	f := newFull(t)
	dst := open(t, t.TempDir())
	rep, err := migrate.Run(ctx, f.src, dst, migrate.Options{})
	if err != nil {
		t.Fatalf("Run: %v (%+v)", err, rep)
	}
	if rep.Paths != 5 || rep.Copied != 5 || rep.Skipped != 0 || rep.Blobs != 4 {
		t.Errorf("report %+v: want 5 paths copied, 4 NAR files (two share one)", rep)
	}
	if rep.Logs != 1 || rep.Realisations != 1 || rep.Pins != 1 || rep.Tombstones != 1 || rep.Listings != 1 {
		t.Errorf("report %+v: want one log, realisation, pin, tombstone and listing", rep)
	}
	checkSame(t, f, dst)

	again, err := migrate.Run(ctx, f.src, dst, migrate.Options{})
	if err != nil || again.Copied != 0 || again.Skipped != 5 || again.Blobs != 0 || again.Bytes != 0 {
		t.Errorf("second run: %+v, %v; want everything skipped, no NAR read", again, err)
	}
	checkSame(t, f, dst)
}

// checkSame compares dst with the fixture's source.
func checkSame(t *testing.T, f *fixture, dst *upload.Store) {
	t.Helper()
	ctx := context.Background()
	for _, p := range f.all() {
		want, err := f.src.PathRecordOf(ctx, p.hash)
		must(t, err)
		got, err := dst.PathRecordOf(ctx, p.hash)
		if err != nil {
			t.Fatalf("%s at the destination: %v", p.base, err)
		}
		if got.NarInfo.String() != want.NarInfo.String() || got.Origin != want.Origin ||
			!got.Registered.Equal(want.Registered) || !got.Access.Equal(want.Access) || !got.Told.Equal(want.Told) {
			t.Errorf("%s:\n got %+v\n%s\nwant %+v\n%s", p.base, got, got.NarInfo, want, want.NarInfo)
		}
		info, err := dst.PathInfo(ctx, p.hash)
		must(t, err)
		var nar bytes.Buffer
		if err := dst.NAR(ctx, info, &nar); err != nil || !bytes.Equal(nar.Bytes(), p.nar) {
			t.Errorf("NAR of %s at the destination: %v", p.base, err)
		}
	}
	if sigs := mustRecord(t, dst, f.top.hash).NarInfo.Sigs; len(sigs) != 2 || !strings.HasPrefix(sigs[0], "builder-1:") || !strings.HasPrefix(sigs[1], "cache-1:") {
		t.Errorf("top's signatures %q: want the builder's and the source cache's, no other", sigs)
	}
	if o := mustRecord(t, dst, f.pulled.hash).Origin; o != upstream {
		t.Errorf("pulled path's origin %q, want %q", o, upstream)
	}
	checkDocs(t, f, dst)
}

func mustRecord(t *testing.T, s *upload.Store, hp string) *upload.PathRecord {
	t.Helper()
	r, err := s.PathRecordOf(context.Background(), hp)
	must(t, err)
	return r
}

func checkDocs(t *testing.T, f *fixture, dst *upload.Store) {
	t.Helper()
	ctx := context.Background()
	rc, _, err := dst.BuildLog(ctx, f.drv)
	must(t, err)
	text, _ := io.ReadAll(rc)
	rc.Close()
	if string(text) != f.log {
		t.Errorf("log at the destination: %d bytes, want %d", len(text), len(f.log))
	}
	want, _ := f.src.Realisation(ctx, f.realID)
	if got, err := dst.Realisation(ctx, f.realID); err != nil || !bytes.Equal(got, want) {
		t.Errorf("realisation: %q, %v", got, err)
	}
	if ls, err := dst.Listing(ctx, f.top.hash); err != nil || string(ls) != f.listing {
		t.Errorf("listing: %q, %v", ls, err)
	}
	wantPins, _ := f.src.Pins(ctx)
	gotPins, _ := dst.Pins(ctx)
	if len(gotPins) != 1 || gotPins[0] != wantPins[0] {
		t.Errorf("pins %+v, want %+v", gotPins, wantPins)
	}
	wantTombs, _ := f.src.Tombstones(ctx)
	gotTombs, _ := dst.Tombstones(ctx)
	if len(gotTombs) != 1 || fmt.Sprint(gotTombs) != fmt.Sprint(wantTombs) {
		t.Errorf("tombstones %+v, want %+v", gotTombs, wantTombs)
	}
}

// TestMigrateResumes: a run cancelled after two paths, run again,
// completes the copy, skipping what the first one copied.
func TestMigrateResumes(t *testing.T) {
	f := newFull(t)
	dst := open(t, t.TempDir())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rep, err := migrate.Run(ctx, f.src, dst, migrate.Options{Progress: func(p migrate.Progress) {
		if p.Done == 2 {
			cancel()
		}
	}})
	if !errors.Is(err, context.Canceled) || rep.Copied != 2 {
		t.Fatalf("cancelled run: %+v, %v; want 2 copied and context.Canceled", rep, err)
	}
	rep, err = migrate.Run(context.Background(), f.src, dst, migrate.Options{})
	if err != nil || rep.Copied != 3 || rep.Skipped != 2 {
		t.Fatalf("second run: %+v, %v; want 3 copied, 2 skipped", rep, err)
	}
	checkSame(t, f, dst)
}

// TestMigrateConflict: a path the destination has with another NAR is
// reported and stays as it was; the rest is copied.
func TestMigrateConflict(t *testing.T) {
	ctx := context.Background()
	f := newFull(t)
	dst := open(t, t.TempDir())
	other := newPath(t, "pulled", "another NAR for the same store path")
	other.upload(t, dst)
	rep, err := migrate.Run(ctx, f.src, dst, migrate.Options{})
	if !errors.Is(err, migrate.ErrIncomplete) || len(rep.Conflicts) != 1 || rep.Conflicts[0].What != f.pulled.info.StorePath {
		t.Fatalf("Run: %+v, %v; want the one conflict of %s", rep, err, f.pulled.info.StorePath)
	}
	if !strings.Contains(rep.Conflicts[0].Err, "NarHash") || rep.Copied != 4 || len(rep.Failed) != 0 || len(rep.Missing) != 0 {
		t.Errorf("report %+v", rep)
	}
	info, err := dst.PathInfo(ctx, other.hash)
	must(t, err)
	var nar bytes.Buffer
	if err := dst.NAR(ctx, info, &nar); err != nil || !bytes.Equal(nar.Bytes(), other.nar) {
		t.Errorf("the destination's own path changed: %v", err)
	}
}

// TestMigrateDamagedSource: a source NAR file with a flipped byte fails
// its path (the destination's intake refuses it) and the paths that
// refer to it, and nothing of them reaches the destination; the rest is
// copied.
func TestMigrateDamagedSource(t *testing.T) {
	ctx := context.Background()
	f := newFixtureInline(t, -1) // its files are damaged on disk

	file := filepath.Join(f.dir, "blobs", f.mid.name)
	data, err := os.ReadFile(file)
	must(t, err)
	data[len(data)/2] ^= 0x40
	must(t, os.WriteFile(file, data, 0o644))
	dstDir := t.TempDir()
	dst := open(t, dstDir)
	rep, err := migrate.Run(ctx, f.src, dst, migrate.Options{})
	if !errors.Is(err, migrate.ErrIncomplete) || len(rep.Failed) != 2 {
		t.Fatalf("Run: %+v, %v; want mid and top failed", rep, err)
	}
	if rep.Failed[0].What != f.mid.info.StorePath || !strings.Contains(rep.Failed[0].Err, "invalid") {
		t.Errorf("first failure %+v: want mid's NAR refused as invalid", rep.Failed[0])
	}
	if rep.Failed[1].What != f.top.info.StorePath || !strings.Contains(rep.Failed[1].Err, "not copied") {
		t.Errorf("second failure %+v: want top's missing reference", rep.Failed[1])
	}
	paths, _ := dst.Paths(ctx)
	if want := []string{f.leaf.info.StorePath, f.pulled.info.StorePath, f.twin.info.StorePath}; !slices.Equal(paths, sorted(want)) {
		t.Errorf("destination paths %q, want %q", paths, want)
	}
	if ok, _ := dst.HasNAR(ctx, f.mid.name); ok {
		t.Errorf("the damaged NAR file is at the destination")
	}
}

func sorted(s []string) []string { slices.Sort(s); return s }

// TestMigrateDryRun writes nothing and says what would be copied.
func TestMigrateDryRun(t *testing.T) {
	f := newFull(t)
	dst := open(t, t.TempDir())
	rep, err := migrate.Run(context.Background(), f.src, dst, migrate.Options{DryRun: true})
	if err != nil || rep.Copied != 5 || rep.Blobs != 4 {
		t.Fatalf("dry run: %+v, %v", rep, err)
	}
	if paths, _ := dst.Paths(context.Background()); len(paths) != 0 {
		t.Errorf("dry run wrote %q", paths)
	}
}

// TestMigrateSameStore refuses.
func TestMigrateSameStore(t *testing.T) {
	s := open(t, t.TempDir())
	if _, err := migrate.Run(context.Background(), s, s, migrate.Options{}); err == nil {
		t.Fatal("a store migrated into itself")
	}
}

// TestMigrateBoltToPebble: a store made before pebble (index.db) keeps
// bbolt when opened again with the default engine, and migrating it into
// a fresh directory gives a pebble store with every path and NAR.
func TestMigrateBoltToPebble(t *testing.T) {
	ctx := context.Background()
	srcDir, dstDir := t.TempDir(), t.TempDir()
	first := openWith(t, srcDir, upload.Options{Others: []store.Store{outside}, Index: upload.IndexBolt})
	leaf := newPath(t, "leaf", "leaf contents")
	top := newPath(t, "top", strings.Repeat("top ", 50000), leaf.base)
	leaf.upload(t, first)
	top.upload(t, first)
	must(t, first.Close())
	src := open(t, srcDir) // the default engine: the store keeps its own
	if _, err := os.Stat(filepath.Join(srcDir, "index")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("reopening a bbolt store made a pebble index beside it: %v", err)
	}
	dst := open(t, dstDir)
	rep, err := migrate.Run(ctx, src, dst, migrate.Options{})
	if err != nil || rep.Copied != 2 {
		t.Fatalf("Run: %+v, %v; want 2 paths copied", rep, err)
	}
	if _, err := os.Stat(filepath.Join(dstDir, "index")); err != nil {
		t.Fatalf("destination has no pebble index: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dstDir, "index.db")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("destination has a bbolt index: %v", err)
	}
	for _, p := range []*path{leaf, top} {
		info, err := dst.PathInfo(ctx, p.hash)
		must(t, err)
		var nar bytes.Buffer
		if err := dst.NAR(ctx, info, &nar); err != nil || !bytes.Equal(nar.Bytes(), p.nar) {
			t.Errorf("NAR of %s in the pebble store: %v", p.base, err)
		}
	}
}
