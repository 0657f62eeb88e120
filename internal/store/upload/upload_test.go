package upload_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/upload"
	"github.com/bos55/concordia/pkg/narinfo"
)

func TestRoundTrip(t *testing.T) {
	ctx := context.Background()
	sk, pk, err := narinfo.GenerateKey("concordia-test-1")
	if err != nil {
		t.Fatal(err)
	}
	upk, upub, _ := narinfo.GenerateKey("uploader-1")
	dir := t.TempDir()
	s := openStore(t, dir, upload.Options{SignKeys: []narinfo.SecretKey{sk}})
	paths := closure(t, "rt")
	paths[2].info.Sign(upk)
	for _, p := range paths {
		if err := p.upload(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range paths {
		got, err := narOf(t, s, p.hash)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, p.nar) {
			t.Fatalf("%s: NAR differs", p.base)
		}
		ni, err := s.NarInfo(ctx, p.hash)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := ni.Verify([]narinfo.PublicKey{pk}); !ok {
			t.Fatalf("%s: not signed by the cache key: %v", p.base, ni.Sigs)
		}
		if p == paths[2] {
			if _, ok := ni.Verify([]narinfo.PublicKey{upub}); !ok {
				t.Fatalf("uploader's signature lost: %v", ni.Sigs)
			}
		}
		f, comp, fh, size, err := s.OpenFileNAR(ctx, &store.PathInfo{StorePath: p.info.StorePath})
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(f)
		f.Close()
		if comp != "zstd" || !bytes.Equal(fh, p.info.FileHash.Digest) || size != int64(len(p.file)) || !bytes.Equal(data, p.file) {
			t.Fatalf("OpenFileNAR: %s %d", comp, size)
		}
	}
	info, _ := s.PathInfo(ctx, paths[2].hash)
	if len(info.References) != 3 || info.References[0] > info.References[1] {
		t.Fatalf("references %v", info.References)
	}
	// Same upload again: idempotent.
	for _, p := range paths {
		if err := p.upload(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	st, _ := s.Stats(ctx)
	if st.Paths != 3 || st.Blobs != 3 || st.Pending != 0 {
		t.Fatalf("stats %+v", st)
	}
	if _, err := s.PathInfo(ctx, hashPart("absent")); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("absent: %v", err)
	}
}

// TestBadInput: every malformed or lying upload is refused with ErrInvalid
// naming the problem, and nothing is stored or served.
func TestBadInput(t *testing.T) {
	ctx := context.Background()
	good := newPath(t, "bad-good", []byte("good"))
	other := newPath(t, "bad-other", []byte("other contents"))
	missingRef := newPath(t, "bad-missing-dep", []byte("x"))
	withRef := newPath(t, "bad-with-ref", []byte("refers"), missingRef.base)

	type step func(s *upload.Store) error
	putNAR := func(name string, body []byte) step {
		return func(s *upload.Store) error { _, err := s.PutNAR(ctx, name, bytes.NewReader(body)); return err }
	}
	putInfo := func(hp, text string) step {
		return func(s *upload.Store) error { return s.PutNarInfo(ctx, hp, strings.NewReader(text)) }
	}
	edit := func(p *fakePath, f func(n *narinfo.NarInfo)) string {
		c := *p.info
		f(&c)
		return c.String()
	}
	notNAR := zstdBytes(t, []byte("this is not a NAR at all, just text"))
	notNARName := nameFor(notNAR)
	trailing := append(append([]byte(nil), good.nar...), 0, 0, 0, 0, 0, 0, 0, 0)
	trailingZ := zstdBytes(t, trailing)

	tests := []struct {
		name  string
		setup []step // must succeed
		bad   step
		want  string // in the error message
	}{
		{"NAR file hash mismatch", nil, putNAR(good.fileName, other.file), "file hash mismatch"},
		{"truncated body", nil, putNAR(good.fileName, good.file[:len(good.file)/2]), "NAR"},
		{"truncated NAR inside a valid stream", nil, func(s *upload.Store) error {
			z := zstdBytes(t, good.nar[:len(good.nar)-8])
			_, err := s.PutNAR(ctx, nameFor(z), bytes.NewReader(z))
			return err
		}, "NAR"},
		{"not a NAR", nil, putNAR(notNARName, notNAR), "NAR"},
		{"trailing data after NAR", nil, putNAR(nameFor(trailingZ), trailingZ), "trailing"},
		{"bad NAR name", nil, putNAR("abc.nar.zst", good.file), "file hash must be"},
		{"unknown extension", nil, putNAR(strings.TrimSuffix(good.fileName, ".zst")+".lz5", good.file), "want <nix32"},
		{"extension lies about compression", nil, putNAR(strings.TrimSuffix(good.fileName, ".zst")+".xz", good.file), "xz"},
		{"narinfo naming a missing NAR", nil, putInfo(good.hash, good.narinfo()), "not uploaded"},
		{"missing reference", []step{putNAR(withRef.fileName, withRef.file)}, putInfo(withRef.hash, withRef.narinfo()), missingRef.base},
		{"NarHash mismatch", []step{putNAR(good.fileName, good.file)},
			putInfo(good.hash, edit(good, func(n *narinfo.NarInfo) { n.NarHash = other.info.NarHash })), "NarHash"},
		{"NarSize mismatch", []step{putNAR(good.fileName, good.file)},
			putInfo(good.hash, edit(good, func(n *narinfo.NarInfo) { n.NarSize++ })), "NarSize"},
		{"FileSize mismatch", []step{putNAR(good.fileName, good.file)},
			putInfo(good.hash, edit(good, func(n *narinfo.NarInfo) { n.FileSize++ })), "FileSize"},
		{"compression mismatch", []step{putNAR(good.fileName, good.file)},
			putInfo(good.hash, edit(good, func(n *narinfo.NarInfo) { n.Compression = "xz" })), "Compression"},
		{"hash part differs from URL", []step{putNAR(good.fileName, good.file)}, putInfo(other.hash, good.narinfo()), "hash part"},
		{"StorePath with ..", []step{putNAR(good.fileName, good.file)},
			putInfo(good.hash, strings.Replace(good.narinfo(), "/nix/store/", "/nix/store/../", 1)), "StorePath"},
		{"StorePath name ..", []step{putNAR(good.fileName, good.file)},
			putInfo(good.hash, strings.Replace(good.narinfo(), good.base, good.hash+"-..", 1)), ""},
		{"hash of wrong length", []step{putNAR(good.fileName, good.file)},
			putInfo(good.hash, strings.Replace(good.narinfo(), good.base, good.hash[:31]+"-x", 1)), ""},
		{"URL hash of wrong length", nil, putInfo(good.hash[:31], good.narinfo()), "32-character"},
		{"other store dir", []step{putNAR(good.fileName, good.file)},
			putInfo(good.hash, strings.Replace(good.narinfo(), "/nix/store/", "/gnu/store/", 1)), "/nix/store"},
		{"garbage narinfo", nil, putInfo(good.hash, "hello\n"), ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s := openStore(t, dir, upload.Options{})
			for _, st := range tc.setup {
				if err := st(s); err != nil {
					t.Fatalf("setup: %v", err)
				}
			}
			before := blobFiles(t, dir)
			err := tc.bad(s)
			if !errors.Is(err, store.ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not say %q", err, tc.want)
			}
			if after := blobFiles(t, dir); len(after) != len(before) {
				t.Fatalf("files left: %v (before %v)", after, before)
			}
			if paths, _ := s.Paths(ctx); len(paths) != 0 {
				t.Fatalf("paths stored: %v", paths)
			}
			for _, p := range []*fakePath{good, other, withRef} {
				if _, err := s.PathInfo(ctx, p.hash); !errors.Is(err, store.ErrNotFound) {
					t.Fatalf("%s served: %v", p.base, err)
				}
			}
		})
	}
}

func nameFor(file []byte) string { return fileName(file) }

// TestReferenceInOtherStore: a reference the local store has is enough.
func TestReferenceInOtherStore(t *testing.T) {
	ctx := context.Background()
	dep := newPath(t, "local-dep", []byte("dep"))
	p := newPath(t, "needs-local", []byte("x"), dep.base)
	other := &mapStore{paths: map[string]string{dep.hash: dep.base}}
	s := openStore(t, t.TempDir(), upload.Options{Others: []store.Store{other}})
	if err := p.upload(ctx, s); err != nil {
		t.Fatal(err)
	}
	wrong := newPath(t, "needs-local-wrong-name", []byte("z"), dep.hash+"-renamed")
	if err := wrong.upload(ctx, s); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("reference to a local hash under another name: %v", err)
	}
}

type mapStore struct{ paths map[string]string }

func (m *mapStore) StoreDir() string { return "/nix/store" }
func (m *mapStore) PathInfo(ctx context.Context, hp string) (*store.PathInfo, error) {
	if base, ok := m.paths[hp]; ok {
		return &store.PathInfo{StorePath: "/nix/store/" + base}, nil
	}
	return nil, store.ErrNotFound
}
func (m *mapStore) NAR(ctx context.Context, info *store.PathInfo, w io.Writer) error {
	return store.ErrNotFound
}

// TestConcurrentSameClosure: two clients pushing the same closure at once
// both succeed and one copy of each NAR is kept.
func TestConcurrentSameClosure(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := openStore(t, dir, upload.Options{InlineMax: -1})
	paths := closure(t, "conc")
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, p := range paths {
				if err := p.upload(ctx, s); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if files := blobFiles(t, dir); len(files) != len(paths) {
		t.Fatalf("blob files %v, want %d", files, len(paths))
	}
	st, _ := s.Stats(ctx)
	if st.Paths != 3 || st.Blobs != 3 {
		t.Fatalf("stats %+v", st)
	}
}

// TestPendingNotServedAndSwept: a NAR no narinfo claims is reported by
// HasNAR (so nix copy skips re-sending it) but not served, and is removed
// after the grace period.
func TestPendingNotServedAndSwept(t *testing.T) {
	ctx := context.Background()
	clock := newClock()
	dir := t.TempDir()
	s := openStore(t, dir, upload.Options{Now: clock.Now, PendingGrace: time.Hour})
	p := newPath(t, "pending", []byte("pending"))
	if _, err := s.PutNAR(ctx, p.fileName, bytes.NewReader(p.file)); err != nil {
		t.Fatal(err)
	}
	if ok, _ := s.HasNAR(ctx, p.fileName); !ok {
		t.Fatal("HasNAR false for a pending NAR")
	}
	if _, _, err := s.OpenBlob(ctx, p.fileName); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("pending blob served: %v", err)
	}
	if n, _ := s.SweepPending(ctx); n != 0 {
		t.Fatal("swept within the grace period")
	}
	clock.Advance(2 * time.Hour)
	if n, _ := s.SweepPending(ctx); n != 1 {
		t.Fatalf("swept %d", n)
	}
	if files := blobFiles(t, dir); len(files) != 0 {
		t.Fatalf("files left %v", files)
	}
	if ok, _ := s.HasNAR(ctx, p.fileName); ok {
		t.Fatal("HasNAR true after sweep")
	}
}

// TestRecovery: leftovers of a crash are cleaned on Open.
func TestRecovery(t *testing.T) {
	diskOnly(t) // recovery at Open from what a crash leaves on a disk
	ctx := context.Background()
	dir := t.TempDir()
	s, err := openAt(t, dir, upload.Options{InlineMax: -1})
	if err != nil {
		t.Fatal(err)
	}
	a := closure(t, "rec")
	for _, p := range a {
		if err := p.upload(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	lone := newPath(t, "rec-lone", []byte("lone"))
	if err := lone.upload(ctx, s); err != nil {
		t.Fatal(err)
	}
	s.Close()
	blobs := filepath.Join(dir, "blobs")
	// A temp file of an interrupted upload, a blob whose record never
	// committed (a pending NAR: kept, verified again when claimed), a
	// file that is no NAR file, and the blob of the leaf deleted behind
	// our back.
	os.WriteFile(filepath.Join(blobs, ".tmp-123"), []byte("partial"), 0o644)
	os.WriteFile(filepath.Join(blobs, "not-a-nar"), []byte("junk"), 0o644)
	orphan := newPath(t, "rec-orphan", []byte("orphan"))
	os.WriteFile(filepath.Join(blobs, orphan.fileName), orphan.file, 0o644)
	os.Remove(filepath.Join(blobs, a[0].fileName))

	s = openStore(t, dir, upload.Options{InlineMax: -1})
	files := blobFiles(t, dir)
	for _, f := range files {
		if strings.HasPrefix(f, ".tmp") || f == "not-a-nar" || f == a[0].fileName {
			t.Errorf("left after recovery: %s", f)
		}
	}
	if !slices.Contains(files, orphan.fileName) {
		t.Errorf("the pending NAR file was removed by recovery")
	}
	if err := s.PutNarInfo(ctx, orphan.hash, strings.NewReader(orphan.narinfo())); err != nil {
		t.Fatalf("narinfo claiming the NAR kept across the restart: %v", err)
	}
	paths, _ := s.Paths(ctx)
	if want := []string{lone.info.StorePath, orphan.info.StorePath}; !slices.Equal(paths, want) {
		t.Fatalf("paths after recovery %v, want %v: the leaf's referrers must go with it", paths, want)
	}
	// The blobs of the dropped referrers stay until GC/sweep (pending);
	// re-uploading the closure works.
	for _, p := range a {
		if err := p.upload(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := narOf(t, s, a[2].hash); err != nil || !bytes.Equal(got, a[2].nar) {
		t.Fatalf("after re-upload: %v", err)
	}
}

// TestVerifyRepair: a flipped byte is detected, and repair quarantines the
// file and drops its path and the paths whose closure that breaks.
func TestVerifyRepair(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := openStore(t, dir, upload.Options{InlineMax: -1})
	a := closure(t, "ver")
	b := closure(t, "ver2")
	for _, p := range append(a, b...) {
		if err := p.upload(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := s.Verify(ctx, false, nil)
	if err != nil || len(rep.Bad) != 0 || rep.Checked != 6 {
		t.Fatalf("clean verify: %+v %v", rep, err)
	}
	data := readBlob(t, dir, a[1].fileName) // mid: top refers to it
	data[len(data)/2] ^= 0x01
	writeBlob(t, dir, a[1].fileName, data)

	var calls int
	rep, err = s.Verify(ctx, false, func(done, total int64) { calls++ })
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Bad) != 1 || rep.Bad[0].Name != a[1].fileName || calls != 6 {
		t.Fatalf("verify report %+v (progress calls %d)", rep, calls)
	}
	if paths, _ := s.Paths(ctx); len(paths) != 6 {
		t.Fatal("verify without repair changed the index")
	}
	rep, err = s.Verify(ctx, true, nil)
	if err != nil || !rep.Repaired {
		t.Fatal(err)
	}
	if len(rep.Broken) != 1 || rep.Broken[0] != a[2].info.StorePath {
		t.Fatalf("broken closures %v, want top", rep.Broken)
	}
	var q []string
	if sharedBackend {
		q = sharedEnvOf(t, dir).Objects(t, "quarantine/")
	} else {
		ents, _ := os.ReadDir(filepath.Join(dir, "quarantine"))
		for _, e := range ents {
			q = append(q, e.Name())
		}
	}
	if len(q) != 1 || !strings.HasPrefix(q[0], a[1].fileName) {
		t.Fatalf("quarantine %v", q)
	}
	for _, p := range a[1:] {
		if _, err := s.PathInfo(ctx, p.hash); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("%s still served: %v", p.base, err)
		}
	}
	if _, err := s.PathInfo(ctx, a[0].hash); err != nil {
		t.Fatal("intact leaf dropped")
	}
	if rep, _ := s.Verify(ctx, false, nil); len(rep.Bad) != 0 {
		t.Fatalf("still bad after repair: %+v", rep)
	}
}

func TestPins(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir(), upload.Options{})
	p := newPath(t, "pinme", []byte("x"))
	if err := s.Pin(ctx, p.info.StorePath, "host1 system"); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"/nix/store/../x", "/gnu/store/" + p.base, "nope", "/nix/store/" + p.hash + "-.."} {
		if err := s.Pin(ctx, bad, ""); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("Pin(%q) = %v", bad, err)
		}
	}
	pins, _ := s.Pins(ctx)
	if len(pins) != 1 || pins[0].Note != "host1 system" {
		t.Fatalf("pins %+v", pins)
	}
	if err := s.Unpin(ctx, p.hash); err != nil {
		t.Fatal(err)
	}
	if err := s.Unpin(ctx, p.info.StorePath); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("second unpin: %v", err)
	}
}

func TestDocs(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir(), upload.Options{})
	p := newPath(t, "docs", []byte("x"))
	ls := `{"version":1,"root":{"type":"regular","size":1,"narOffset":96}}`
	if err := s.PutListing(ctx, p.hash, strings.NewReader(ls)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Listing(ctx, p.hash); !errors.Is(err, store.ErrNotFound) {
		t.Fatal("listing served before its path")
	}
	if err := p.upload(ctx, s); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Listing(ctx, p.hash); err != nil || string(got) != ls {
		t.Fatalf("listing %q %v", got, err)
	}
	if err := s.PutListing(ctx, p.hash, strings.NewReader(`{"version":1`)); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("bad listing: %v", err)
	}
	drv := hashPart("drv") + "-foo.drv"
	if err := s.PutLog(ctx, drv, strings.NewReader("building foo\n")); err != nil {
		t.Fatal(err)
	}
	r, _, err := s.BuildLog(ctx, drv)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(r)
	if string(got) != "building foo\n" {
		t.Fatalf("log %q", got)
	}
	if err := s.PutLog(ctx, "../etc/passwd", strings.NewReader("x")); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("bad log name: %v", err)
	}
	id := "sha256:" + hashPart("r") + "!out"
	if err := s.PutRealisation(ctx, id, strings.NewReader(`{"id":"x"}`)); err != nil {
		t.Fatal(err)
	}
	if err := s.PutRealisation(ctx, id, strings.NewReader(`{"id":`)); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("bad realisation: %v", err)
	}
	if got, err := s.Realisation(ctx, id); err != nil || string(got) != `{"id":"x"}` {
		t.Fatalf("realisation %q %v", got, err)
	}
}

func TestListingSwept(t *testing.T) {
	ctx := context.Background()
	clock := newClock()
	s := openStore(t, t.TempDir(), upload.Options{Now: clock.Now, PendingGrace: time.Hour})
	kept := newPath(t, "ls-kept", []byte("k"))
	orphan := newPath(t, "ls-orphan", []byte("o"))
	ls := `{"version":1,"root":{"type":"regular","size":1}}`
	for _, p := range []*fakePath{kept, orphan} {
		if err := s.PutListing(ctx, p.hash, strings.NewReader(ls)); err != nil {
			t.Fatal(err)
		}
	}
	if err := kept.upload(ctx, s); err != nil {
		t.Fatal(err)
	}
	clock.Advance(2 * time.Hour)
	if _, err := s.SweepPending(ctx); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Listing(ctx, kept.hash); err != nil || string(got) != ls {
		t.Fatalf("kept listing: %q %v", got, err)
	}
	// The orphan's narinfo arrives late: its listing is gone.
	if err := orphan.upload(ctx, s); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Listing(ctx, orphan.hash); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("stale listing kept: %v", err)
	}
}

// TestReferenceNameMustMatch: a reference naming a stored hash part with
// another name is not "present".
func TestReferenceNameMustMatch(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir(), upload.Options{})
	dep := newPath(t, "name-dep", []byte("dep"))
	if err := dep.upload(ctx, s); err != nil {
		t.Fatal(err)
	}
	liar := newPath(t, "name-liar", []byte("x"), dep.hash+"-other-name")
	err := liar.upload(ctx, s)
	if !errors.Is(err, store.ErrInvalid) || !strings.Contains(err.Error(), dep.hash+"-other-name") {
		t.Fatalf("reference with a wrong name: %v", err)
	}
	self := newPath(t, "name-self", []byte("y"))
	self.info.References = []string{self.hash + "-not-me"}
	if err := self.upload(ctx, s); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("self reference with a wrong name: %v", err)
	}
}

// TestPendingKeptOnRestart: a pending NAR survives a restart (a crash
// between the NAR PUT and the narinfo PUT): its file stays, HasNAR says so
// (nix copy does not send it again), and the narinfo naming it is
// accepted once the file is verified again. (Before, a pending NAR lived
// only in memory and a restart lost it.)
func TestPendingKeptOnRestart(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := openAt(t, dir, upload.Options{InlineMax: -1})
	if err != nil {
		t.Fatal(err)
	}
	p := newPath(t, "restart-pending", []byte("restart"))
	if _, err := s.PutNAR(ctx, p.fileName, bytes.NewReader(p.file)); err != nil {
		t.Fatal(err)
	}
	if st, _ := s.Stats(ctx); st.Pending != 1 || st.Blobs != 1 || st.Bytes != int64(len(p.file)) {
		t.Fatalf("stats with one pending blob: %+v", st)
	}
	s.Close()
	s = openStore(t, dir, upload.Options{InlineMax: -1})
	if files := blobFiles(t, dir); len(files) != 1 || files[0] != p.fileName {
		t.Fatalf("pending blob files after a restart: %v", files)
	}
	if st, _ := s.Stats(ctx); st.Pending != 1 || st.Blobs != 1 || st.Bytes != int64(len(p.file)) {
		t.Fatalf("stats with one pending blob after a restart: %+v", st)
	}
	if ok, _ := s.HasNAR(ctx, p.fileName); !ok {
		t.Fatal("HasNAR false for a NAR kept across a restart")
	}
	if _, _, err := s.OpenBlob(ctx, p.fileName); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("pending blob served after a restart: %v", err)
	}
	if err := s.PutNarInfo(ctx, p.hash, strings.NewReader(p.narinfo())); err != nil {
		t.Fatalf("narinfo for a NAR kept across a restart: %v", err)
	}
	if got, err := narOf(t, s, p.hash); err != nil || !bytes.Equal(got, p.nar) {
		t.Fatalf("served after the restart: %v", err)
	}
}

// TestClaimedSurvivesSweep: once a narinfo claims a blob, a sweep past the
// grace period keeps it, and re-uploading the same NAR does not make it
// pending again.
func TestClaimedSurvivesSweep(t *testing.T) {
	ctx := context.Background()
	clock := newClock()
	s := openStore(t, t.TempDir(), upload.Options{Now: clock.Now, PendingGrace: time.Hour})
	p := newPath(t, "claimed", []byte("claimed"))
	if err := p.upload(ctx, s); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutNAR(ctx, p.fileName, bytes.NewReader(p.file)); err != nil {
		t.Fatal(err)
	}
	clock.Advance(2 * time.Hour)
	if n, err := s.SweepPending(ctx); n != 0 || err != nil {
		t.Fatalf("sweep removed %d claimed blobs (%v)", n, err)
	}
	if got, err := narOf(t, s, p.hash); err != nil || !bytes.Equal(got, p.nar) {
		t.Fatalf("claimed path after sweep: %v", err)
	}
	if st, _ := s.Stats(ctx); st.Pending != 0 || st.Blobs != 1 {
		t.Fatalf("stats: %+v", st)
	}
}

// TestClaimRacesSweep: narinfo PUTs racing sweeps of expired pending NARs.
// Whichever wins, an accepted narinfo is always served with its NAR, and
// a refused one says the NAR was not uploaded.
func TestClaimRacesSweep(t *testing.T) {
	ctx := context.Background()
	clock := newClock()
	s := openStore(t, t.TempDir(), upload.Options{Now: clock.Now, PendingGrace: time.Hour})
	var claimed, swept int
	for i := range 40 {
		p := newPath(t, fmt.Sprintf("race-%d", i), []byte(fmt.Sprintf("race %d", i)))
		if _, err := s.PutNAR(ctx, p.fileName, bytes.NewReader(p.file)); err != nil {
			t.Fatal(err)
		}
		clock.Advance(2 * time.Hour)
		// Durable first, so the claim does not wait for the fsync and
		// really races the sweep; who starts first alternates.
		s.WaitDurable(p.fileName)
		var wg sync.WaitGroup
		var claimErr error
		claim := func() { defer wg.Done(); claimErr = s.PutNarInfo(ctx, p.hash, strings.NewReader(p.narinfo())) }
		sweep := func() { defer wg.Done(); s.SweepPending(ctx) }
		wg.Add(2)
		if i%2 == 0 {
			go claim()
			go sweep()
		} else {
			go sweep()
			go claim()
		}
		wg.Wait()
		if claimErr != nil {
			if !strings.Contains(claimErr.Error(), "not uploaded") {
				t.Fatalf("claim %d: %v", i, claimErr)
			}
			swept++
			continue
		}
		if got, err := narOf(t, s, p.hash); err != nil || !bytes.Equal(got, p.nar) {
			t.Fatalf("accepted path %d not served after the sweep: %v", i, err)
		}
		claimed++
	}
	t.Logf("claims won %d races, sweeps %d", claimed, swept)
}

// TestClaimWaitsForDurability: the NAR PUT returns before its fsync, but
// the narinfo claiming it is committed only once the NAR is on disk; an
// fsync that fails makes the narinfo fail (507 for a full disk), drops
// the file, and a retry of the whole path succeeds.
func TestClaimWaitsForDurability(t *testing.T) {
	diskOnly(t) // fsync of a file; an object store\'s publish is durable when it returns
	ctx := context.Background()
	release := make(chan struct{})
	var fail atomic.Bool
	restore := upload.SetSyncFile(func(f *os.File) error {
		<-release
		if fail.Load() {
			return syscall.ENOSPC
		}
		return f.Sync()
	})
	defer restore()
	dir := t.TempDir()
	s := openStore(t, dir, upload.Options{InlineMax: -1})

	p := newPath(t, "durable", []byte("durable"))
	if _, err := s.PutNAR(ctx, p.fileName, bytes.NewReader(p.file)); err != nil {
		t.Fatal(err)
	}
	claimed := make(chan error, 1)
	go func() { claimed <- s.PutNarInfo(ctx, p.hash, strings.NewReader(p.narinfo())) }()
	select {
	case err := <-claimed:
		t.Fatalf("narinfo committed before its NAR was durable: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	if _, err := s.PathInfo(ctx, p.hash); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("path visible before its NAR was durable: %v", err)
	}
	release <- struct{}{}
	if err := <-claimed; err != nil {
		t.Fatal(err)
	}
	if got, err := narOf(t, s, p.hash); err != nil || !bytes.Equal(got, p.nar) {
		t.Fatalf("after the fsync: %v", err)
	}

	fail.Store(true)
	q := newPath(t, "not-durable", []byte("not durable"))
	if _, err := s.PutNAR(ctx, q.fileName, bytes.NewReader(q.file)); err != nil {
		t.Fatal(err)
	}
	release <- struct{}{}
	if err := s.PutNarInfo(ctx, q.hash, strings.NewReader(q.narinfo())); !errors.Is(err, store.ErrNoSpace) {
		t.Fatalf("narinfo of a NAR whose fsync failed: %v, want ErrNoSpace", err)
	}
	// The failed blob's cleanup runs in the background.
	deadline := time.Now().Add(5 * time.Second)
	for slices.Contains(blobFiles(t, dir), q.fileName) {
		if time.Now().After(deadline) {
			t.Fatal("the file whose fsync failed was left behind")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if ok, _ := s.HasNAR(ctx, q.fileName); ok {
		t.Fatal("HasNAR true for a NAR whose fsync failed")
	}
	fail.Store(false)
	go func() { release <- struct{}{} }()
	if err := q.upload(ctx, s); err != nil {
		t.Fatalf("retry: %v", err)
	}
	if got, err := narOf(t, s, q.hash); err != nil || !bytes.Equal(got, q.nar) {
		t.Fatalf("after the retry: %v", err)
	}
}

// TestUnaccountedFileReplaced: a blob file that neither the index nor the
// pending set accounts for (put there behind the store's back, with wrong
// bytes) is not taken for a stored NAR: the upload replaces it.
func TestUnaccountedFileReplaced(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := openStore(t, dir, upload.Options{})
	p := newPath(t, "unaccounted", []byte("unaccounted"))
	writeBlob(t, dir, p.fileName, []byte("garbage"))
	info, err := s.PutNAR(ctx, p.fileName, bytes.NewReader(p.file))
	if err != nil {
		t.Fatal(err)
	}
	if info.Existed {
		t.Fatal("an unaccounted file was taken for the stored NAR")
	}
	if err := s.PutNarInfo(ctx, p.hash, strings.NewReader(p.narinfo())); err != nil {
		t.Fatal(err)
	}
	if got, err := narOf(t, s, p.hash); err != nil || !bytes.Equal(got, p.nar) {
		t.Fatalf("served %q, %v", got, err)
	}
}
