package upload_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/upload"
	"github.com/bos55/concordia/pkg/narinfo"
)

// servedStore is another store (the machine's /nix/store) with full path
// infos, or failing with err.
type servedStore struct {
	infos map[string]*store.PathInfo
	err   error
}

func (m *servedStore) StoreDir() string { return "/nix/store" }
func (m *servedStore) PathInfo(ctx context.Context, hp string) (*store.PathInfo, error) {
	if m.err != nil {
		return nil, m.err
	}
	if info, ok := m.infos[hp]; ok {
		return info, nil
	}
	return nil, store.ErrNotFound
}
func (m *servedStore) NAR(ctx context.Context, info *store.PathInfo, w io.Writer) error {
	return store.ErrNotFound
}

// localInfo is what the machine's own store would say about p.
func localInfo(p *fakePath) *store.PathInfo {
	var refs []string
	for _, r := range p.info.References {
		refs = append(refs, "/nix/store/"+r)
	}
	return &store.PathInfo{StorePath: p.info.StorePath, NarHash: p.info.NarHash.Digest, NarSize: p.info.NarSize, References: refs}
}

// uncompressed is p uploaded as a bare .nar: the same NAR (NarHash), another
// file and URL.
func uncompressed(p *fakePath) *fakePath {
	q := *p
	q.file = p.nar
	fh := sha256.Sum256(q.file)
	q.fileName = nixbase32.EncodeToString(fh[:]) + ".nar"
	info := *p.info
	fileHash := narinfo.SHA256(fh[:])
	info.URL, info.Compression, info.FileHash, info.FileSize = "nar/"+q.fileName, "none", &fileHash, uint64(len(q.file))
	q.info = &info
	return &q
}

// servedState is everything a client could get for a hash part.
type servedState struct {
	narinfo string
	nar     []byte
	err     error
}

func stateOf(t *testing.T, s *upload.Store, hp string) servedState {
	t.Helper()
	ni, err := s.NarInfo(context.Background(), hp)
	if err != nil {
		return servedState{err: err}
	}
	nar, err := narOf(t, s, hp)
	return servedState{narinfo: ni.String(), nar: nar, err: err}
}

func (a servedState) equal(b servedState) bool {
	return a.narinfo == b.narinfo && bytes.Equal(a.nar, b.nar) && errors.Is(a.err, b.err) && errors.Is(b.err, a.err)
}

// TestUploadCannotChangeServedPath plays a holder of a write token who
// tries to replace a path the cache serves: from its own index or from the
// machine's store. Every attempt is ErrConflict naming both NAR hashes, and
// what the cache serves stays byte for byte the same.
func TestUploadCannotChangeServedPath(t *testing.T) {
	ctx := context.Background()
	orig := newPath(t, "immut-leaf", []byte("the real leaf"))
	evil := newPath(t, "immut-leaf", []byte("a swapped leaf")) // same store path
	if orig.info.StorePath != evil.info.StorePath || orig.info.NarHash.String() == evil.info.NarHash.String() {
		t.Fatal("the test paths must share a store path and differ in content")
	}
	dep := newPath(t, "immut-dep", []byte("dep"))
	moreRefs := newPath(t, "immut-leaf", []byte("the real leaf"), dep.base) // same NAR, other references
	renamed := newPath(t, "immut-leaf", []byte("the real leaf"))
	renamed.info.StorePath = "/nix/store/" + orig.hash + "-immut-other-name"

	tests := []struct {
		name   string
		local  bool // orig is in the other store, not uploaded
		attack *fakePath
		say    []string
	}{
		{"other NAR, path uploaded", false, evil, []string{orig.info.NarHash.String(), evil.info.NarHash.String()}},
		{"other NAR, path in the local store", true, evil, []string{orig.info.NarHash.String(), evil.info.NarHash.String()}},
		{"same NAR, other references, uploaded", false, moreRefs, []string{dep.base}},
		{"same NAR, other references, local", true, moreRefs, []string{dep.base}},
		{"same hash part, other name, uploaded", false, renamed, []string{orig.info.StorePath, renamed.info.StorePath}},
		{"same hash part, other name, local", true, renamed, []string{orig.info.StorePath, renamed.info.StorePath}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			local := &servedStore{infos: map[string]*store.PathInfo{dep.hash: localInfo(dep)}}
			sk, _, _ := narinfo.GenerateKey("cache-1")
			s := openStore(t, t.TempDir(), upload.Options{SignKeys: []narinfo.SecretKey{sk}, Others: []store.Store{local}})
			if tc.local {
				local.infos[orig.hash] = localInfo(orig)
			} else if err := orig.upload(ctx, s); err != nil {
				t.Fatal(err)
			}
			before := stateOf(t, s, orig.hash)
			paths, _ := s.Paths(ctx)
			err := tc.attack.upload(ctx, s)
			if !errors.Is(err, store.ErrConflict) {
				t.Fatalf("err = %v, want ErrConflict", err)
			}
			for _, want := range tc.say {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not name %q", err, want)
				}
			}
			if after := stateOf(t, s, orig.hash); !after.equal(before) {
				t.Fatalf("served path changed:\n%+v\nwas\n%+v", after, before)
			}
			if now, _ := s.Paths(ctx); strings.Join(now, " ") != strings.Join(paths, " ") {
				t.Fatalf("index changed: %v, was %v", now, paths)
			}
			if _, _, err := s.OpenBlob(ctx, tc.attack.fileName); tc.attack == evil && !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("the refused NAR is served: %v", err)
			}
		})
	}
}

// TestSameUploadIsNoOp: the same NAR for a path again, even as another
// file (other compression), changes nothing but adds signatures; for a
// path only the local store has, it is accepted into the upload store.
func TestSameUploadIsNoOp(t *testing.T) {
	ctx := context.Background()
	sk, pk, _ := narinfo.GenerateKey("cache-1")
	upk, upub, _ := narinfo.GenerateKey("uploader-1")
	local := &servedStore{infos: map[string]*store.PathInfo{}}
	dir := t.TempDir()
	s := openStore(t, dir, upload.Options{SignKeys: []narinfo.SecretKey{sk}, Others: []store.Store{local}})
	p := newPath(t, "noop", []byte("no-op"), "self")
	if err := p.upload(ctx, s); err != nil {
		t.Fatal(err)
	}
	before, _ := s.NarInfo(ctx, p.hash)
	again := uncompressed(p)
	again.info.Sign(upk)
	again.info.Deriver = hashPart("other-drv") + "-noop.drv" // not covered by signatures: ignored
	if err := again.upload(ctx, s); err != nil {
		t.Fatalf("same NAR again: %v", err)
	}
	after, _ := s.NarInfo(ctx, p.hash)
	if after.URL != before.URL || after.Compression != "zstd" || after.FileHash.String() != before.FileHash.String() || after.Deriver != before.Deriver {
		t.Fatalf("the stored record changed:\n%s\nwas\n%s", after, before)
	}
	if _, ok := after.Verify([]narinfo.PublicKey{pk}); !ok {
		t.Fatalf("cache signature lost: %v", after.Sigs)
	}
	if _, ok := after.Verify([]narinfo.PublicKey{upub}); !ok || len(after.Sigs) != 2 {
		t.Fatalf("uploader's signature not merged once: %v", after.Sigs)
	}
	if err := again.upload(ctx, s); err != nil {
		t.Fatal(err)
	}
	if third, _ := s.NarInfo(ctx, p.hash); third.String() != after.String() {
		t.Fatalf("a third identical upload changed the narinfo:\n%s", third)
	}
	if got, err := narOf(t, s, p.hash); err != nil || !bytes.Equal(got, p.nar) {
		t.Fatalf("NAR after no-op uploads: %v", err)
	}
	// The unclaimed copy is pending, not served, and swept like any.
	if st, _ := s.Stats(ctx); st.Paths != 1 || st.Pending != 1 {
		t.Fatalf("stats %+v, want the one path and the other file pending", st)
	}
	if _, _, err := s.OpenBlob(ctx, again.fileName); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the no-op upload's file is served: %v", err)
	}

	// A path the local store has, with the same NAR: accepted (the
	// host's Nix may collect its copy); served the same either way.
	l := newPath(t, "noop-local", []byte("local"))
	local.infos[l.hash] = localInfo(l)
	if err := l.upload(ctx, s); err != nil {
		t.Fatalf("local path with the same NAR: %v", err)
	}
	if got, err := narOf(t, s, l.hash); err != nil || !bytes.Equal(got, l.nar) {
		t.Fatalf("accepted local path: %v", err)
	}
}

// TestOtherStoreErrorRefusesUpload: when the local store cannot say
// whether it has the path, the upload is refused, not taken on trust.
func TestOtherStoreErrorRefusesUpload(t *testing.T) {
	ctx := context.Background()
	local := &servedStore{err: errors.New("database is locked")}
	s := openStore(t, t.TempDir(), upload.Options{Others: []store.Store{local}})
	p := newPath(t, "other-error", []byte("x"))
	err := p.upload(ctx, s)
	if err == nil || !strings.Contains(err.Error(), "database is locked") || errors.Is(err, store.ErrInvalid) {
		t.Fatalf("upload while the local store fails: %v", err)
	}
	if _, err := s.PathInfo(ctx, p.hash); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("stored anyway: %v", err)
	}
}

// TestConcurrentConflictingUploads: uploads of one store path with
// different NARs at once: exactly one is accepted, every other one is
// ErrConflict, and the winner's NAR is what is served.
func TestConcurrentConflictingUploads(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir(), upload.Options{})
	const n = 8
	var rivals []*fakePath
	for i := range n {
		rivals = append(rivals, newPath(t, "contested", []byte(fmt.Sprintf("version %d", i))))
	}
	// NARs first, so the narinfos really race in the commit.
	for _, p := range rivals {
		if _, err := s.PutNAR(ctx, p.fileName, bytes.NewReader(p.file)); err != nil {
			t.Fatal(err)
		}
		s.WaitDurable(p.fileName)
	}
	errs := atOnce(len(rivals), func(i int) error {
		return s.PutNarInfo(ctx, rivals[i].hash, strings.NewReader(rivals[i].narinfo()))
	})
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner >= 0:
			t.Fatalf("uploads %d and %d both accepted", winner, i)
		case err == nil:
			winner = i
		case !errors.Is(err, store.ErrConflict):
			t.Fatalf("upload %d: %v, want ErrConflict", i, err)
		}
	}
	if winner < 0 {
		t.Fatal("no upload accepted")
	}
	if got, err := narOf(t, s, rivals[winner].hash); err != nil || !bytes.Equal(got, rivals[winner].nar) {
		t.Fatalf("served NAR is not the winner's: %v", err)
	}
	if st, _ := s.Stats(ctx); st.Paths != 1 || st.Pending != n-1 {
		t.Fatalf("stats %+v", st)
	}
}

// TestNARFileCannotBeReplaced: a NAR file is named by the hash of its
// bytes, so other bytes under a stored name are refused as invalid and
// the same bytes again change nothing.
func TestNARFileCannotBeReplaced(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir(), upload.Options{})
	p := newPath(t, "nar-file", []byte("original"))
	other := newPath(t, "nar-file-other", []byte("other"))
	if err := p.upload(ctx, s); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutNAR(ctx, p.fileName, bytes.NewReader(other.file)); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("other bytes under a stored name: %v", err)
	}
	info, err := s.PutNAR(ctx, p.fileName, bytes.NewReader(p.file))
	if err != nil || !info.Existed {
		t.Fatalf("the same bytes again: %+v %v", info, err)
	}
	f, _, err := s.OpenBlob(ctx, p.fileName)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(f)
	f.Close()
	if !bytes.Equal(got, p.file) {
		t.Fatal("stored NAR file changed")
	}
}

// docStore is another store with build logs and realisations.
type docStore struct {
	servedStore
	logs, docs map[string]string
}

func (d *docStore) BuildLog(ctx context.Context, drv string) (io.ReadCloser, string, error) {
	if l, ok := d.logs[drv]; ok {
		return io.NopCloser(strings.NewReader(l)), "", nil
	}
	return nil, "", store.ErrNotFound
}

func (d *docStore) Realisation(ctx context.Context, id string) ([]byte, error) {
	if doc, ok := d.docs[id]; ok {
		return []byte(doc), nil
	}
	return nil, store.ErrNotFound
}

// TestDocumentsWriteOnce: a listing of a published path, a build log and a
// realisation, once the cache has them (here or in the other store), may
// be uploaded again only unchanged (JSON compared by value); another
// version is ErrConflict and the cache keeps the first.
func TestDocumentsWriteOnce(t *testing.T) {
	ctx := context.Background()
	p := newPath(t, "docs-once", []byte("x"))
	drv := hashPart("docs-once-drv") + "-docs-once.drv"
	localDrv := hashPart("docs-once-local-drv") + "-local.drv"
	id := "sha256:" + strings.Repeat("ab", 32) + "!out"
	localID := "sha256:" + strings.Repeat("cd", 32) + "!out"
	trace := hashPart("docs-once-trace") + "-t.drv"
	const ls = `{"version":1,"root":{"type":"regular","size":1,"narOffset":96}}`
	const real = `{"dependentRealisations":{},"id":"x","outPath":"p","signatures":[]}`
	type doc struct {
		put func(s *upload.Store, body string) error
		get func(s *upload.Store) (string, error)
	}
	listing := doc{
		put: func(s *upload.Store, b string) error { return s.PutListing(ctx, p.hash, strings.NewReader(b)) },
		get: func(s *upload.Store) (string, error) { d, err := s.Listing(ctx, p.hash); return string(d), err },
	}
	logOf := func(drv string) doc {
		return doc{
			put: func(s *upload.Store, b string) error { return s.PutLog(ctx, drv, strings.NewReader(b)) },
			get: func(s *upload.Store) (string, error) {
				r, _, err := s.BuildLog(ctx, drv)
				if err != nil {
					return "", err
				}
				d, err := io.ReadAll(r)
				return string(d), err
			},
		}
	}
	realisationOf := func(id string) doc {
		return doc{
			put: func(s *upload.Store, b string) error { return s.PutRealisation(ctx, id, strings.NewReader(b)) },
			get: func(s *upload.Store) (string, error) { d, err := s.Realisation(ctx, id); return string(d), err },
		}
	}
	buildTrace := doc{
		put: func(s *upload.Store, b string) error { return s.PutBuildTrace(ctx, trace, "out", strings.NewReader(b)) },
		get: func(s *upload.Store) (string, error) {
			d, err := s.Realisation(ctx, trace+"!out")
			return string(d), err
		},
	}
	tests := []struct {
		name        string
		doc         doc
		first       string // uploaded first ("" when only the other store has it)
		same, other string
	}{
		{"listing", listing, ls, " {\"root\":{\"narOffset\":96,\"size\":1,\"type\":\"regular\"},\"version\":1}\n",
			`{"version":1,"root":{"type":"regular","size":9999,"narOffset":96}}`},
		{"build log", logOf(drv), "building\n", "building\n", "nothing to see here\n"},
		{"build log of the local store", logOf(localDrv), "", "built locally\n", "built elsewhere\n"},
		{"realisation", realisationOf(id), real, strings.ReplaceAll(real, ",", ", "), strings.Replace(real, `"p"`, `"q"`, 1)},
		{"realisation of the local store", realisationOf(localID), "", real, strings.Replace(real, `"p"`, `"q"`, 1)},
		{"build trace entry", buildTrace, real, real, strings.Replace(real, `"p"`, `"q"`, 1)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			local := &docStore{logs: map[string]string{localDrv: "built locally\n"}, docs: map[string]string{localID: real}}
			s := openStore(t, t.TempDir(), upload.Options{Others: []store.Store{local}})
			if err := p.upload(ctx, s); err != nil {
				t.Fatal(err)
			}
			if tc.first != "" {
				if err := tc.doc.put(s, tc.first); err != nil {
					t.Fatal(err)
				}
			}
			before, _ := tc.doc.get(s)
			err := tc.doc.put(s, tc.other)
			if !errors.Is(err, store.ErrConflict) || !strings.Contains(err.Error(), "sha256:") {
				t.Fatalf("another version: %v, want ErrConflict naming both hashes", err)
			}
			if got, _ := tc.doc.get(s); got != before {
				t.Fatalf("document changed to %q, was %q", got, before)
			}
			if err := tc.doc.put(s, tc.same); err != nil {
				t.Fatalf("the same document again: %v", err)
			}
			if got, _ := tc.doc.get(s); tc.first != "" && got != tc.first {
				t.Fatalf("the no-op re-upload changed the document to %q", got)
			}
		})
	}
}

// TestListingOfUnpublishedPathReplaced: before its narinfo, a listing is
// nobody's: a retry may send another rendering.
func TestListingOfUnpublishedPathReplaced(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir(), upload.Options{})
	p := newPath(t, "ls-unpublished", []byte("x"))
	for _, ls := range []string{`{"version":1,"root":{"type":"regular","size":1}}`, `{"version":1,"root":{"type":"regular","size":1,"narOffset":96}}`} {
		if err := s.PutListing(ctx, p.hash, strings.NewReader(ls)); err != nil {
			t.Fatalf("listing %s: %v", ls, err)
		}
	}
	if err := p.upload(ctx, s); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Listing(ctx, p.hash); err != nil || !strings.Contains(string(got), "narOffset") {
		t.Fatalf("listing %q %v: want the last one sent", got, err)
	}
}
