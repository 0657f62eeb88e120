package storetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"path"
	"slices"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/pkg/nar"
	"github.com/bos55/concordia/pkg/narinfo"
)

// UploaderFixture is what RunUploader may do to the store under test
// besides calling its methods.
type UploaderFixture struct {
	// Damage, when set, changes the stored bytes of the claimed NAR file
	// name (as rot on a disk would), so the suite can check that
	// Verify finds it. Without it that check is skipped.
	Damage func(name string) error
}

// RunUploader holds a store that takes uploads to the contract of
// store.Uploader, and of store.Pinner, store.Collector, store.Verifier,
// store.Forgetter and store.Adopter where the store implements them: every backend
// behind the server's upload routes must refuse and accept the same
// uploads, since the server answers a client from what they return.
// newStore is called once per subtest with an empty store and must
// arrange its own cleanup with t.Cleanup.
func RunUploader(t *testing.T, newStore func(t *testing.T) (store.Uploader, UploaderFixture)) {
	t.Helper()
	t.Run("PutNAR", func(t *testing.T) {
		u, _ := newStore(t)
		checkPutNAR(t, u)
	})
	t.Run("PutNARRefusesBadBytes", func(t *testing.T) {
		u, _ := newStore(t)
		checkPutNARRefuses(t, u)
	})
	t.Run("PutNarInfo", func(t *testing.T) {
		u, _ := newStore(t)
		checkPublish(t, u)
	})
	t.Run("PutNarInfoRefusesMismatches", func(t *testing.T) {
		u, _ := newStore(t)
		checkNarInfoRefuses(t, u)
	})
	t.Run("PutNarInfoImmutable", func(t *testing.T) {
		u, _ := newStore(t)
		checkImmutable(t, u)
	})
	t.Run("Documents", func(t *testing.T) {
		u, _ := newStore(t)
		checkDocuments(t, u)
	})
	t.Run("Pinner", func(t *testing.T) {
		u, _ := newStore(t)
		p := optional[store.Pinner](t, u, "store does not pin")
		checkPins(t, u, p)
	})
	t.Run("Collector", func(t *testing.T) {
		u, _ := newStore(t)
		c, ok := u.(store.Collector)
		p, pins := u.(store.Pinner)
		if !ok || !pins {
			t.Skip("store does not collect garbage around pins")
		}
		checkGC(t, u, c, p)
	})
	t.Run("Adopter", func(t *testing.T) {
		u, _ := newStore(t)
		a := optional[store.Adopter](t, u, "store does not keep pulled paths")
		checkAdopt(t, a)
	})
	t.Run("Verifier", func(t *testing.T) {
		u, fx := newStore(t)
		v := optional[store.Verifier](t, u, "store does not verify")
		checkVerify(t, u, v, fx)
	})
}

// upPath is one store path to upload: its NAR, the file sent (the NAR
// itself, or zstd) and the narinfo that claims it.
type upPath struct {
	storePath, hash, base string
	nar, file             []byte
	name                  string // <file hash>.nar[.zst]
	info                  *narinfo.NarInfo
}

// newUpPath makes a consistent path under u's store directory, holding
// contents, that refers to refs.
func newUpPath(t *testing.T, u store.Uploader, name, contents string, zst bool, refs ...*upPath) *upPath {
	t.Helper()
	p := &upPath{hash: randomHashPart(t)}
	p.base = p.hash + "-" + name
	p.storePath = u.StoreDir() + "/" + p.base
	p.nar = makeNAR(t, contents)
	p.file, p.name = p.nar, ""
	comp := "none"
	if zst {
		enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
		if err != nil {
			t.Fatal(err)
		}
		p.file = enc.EncodeAll(p.nar, nil)
		enc.Close()
		comp = "zstd"
	}
	fh, nh := sha256.Sum256(p.file), sha256.Sum256(p.nar)
	p.name = nixbase32.EncodeToString(fh[:]) + ".nar"
	if zst {
		p.name += ".zst"
	}
	fileHash := narinfo.SHA256(fh[:])
	p.info = &narinfo.NarInfo{
		StorePath: p.storePath, URL: "nar/" + p.name, Compression: comp,
		FileHash: &fileHash, FileSize: uint64(len(p.file)),
		NarHash: narinfo.SHA256(nh[:]), NarSize: uint64(len(p.nar)),
	}
	for _, r := range refs {
		p.info.References = append(p.info.References, r.base)
	}
	slices.Sort(p.info.References)
	return p
}

func makeNAR(t *testing.T, contents string) []byte {
	t.Helper()
	var b bytes.Buffer
	w := nar.NewWriter(&b)
	if err := w.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeRegular, Size: int64(len(contents))}); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(w, contents); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func putNAR(t *testing.T, u store.Uploader, p *upPath) *store.BlobInfo {
	t.Helper()
	bi, err := u.PutNAR(context.Background(), p.name, bytes.NewReader(p.file))
	if err != nil {
		t.Fatalf("PutNAR(%s): %v", p.name, err)
	}
	return bi
}

func publish(t *testing.T, u store.Uploader, p *upPath) {
	t.Helper()
	putNAR(t, u, p)
	if err := u.PutNarInfo(context.Background(), p.hash, strings.NewReader(p.info.String())); err != nil {
		t.Fatalf("PutNarInfo(%s): %v", p.storePath, err)
	}
}

// absent checks that the path of hash is not served.
func absent(t *testing.T, u store.Uploader, hash, why string) {
	t.Helper()
	if info, err := u.PathInfo(context.Background(), hash); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("%s: PathInfo(%s) = %+v, %v; want ErrNotFound", why, hash, info, err)
	}
}

func checkPutNAR(t *testing.T, u store.Uploader) {
	ctx := context.Background()
	for _, zst := range []bool{false, true} {
		p := newUpPath(t, u, "put-nar", "contents of put-nar", zst)
		if ok, err := u.HasNAR(ctx, p.name); ok || err != nil {
			t.Errorf("HasNAR(%s) before the upload = %t, %v", p.name, ok, err)
		}
		bi := putNAR(t, u, p)
		fh, nh := sha256.Sum256(p.file), sha256.Sum256(p.nar)
		if bi.Name != p.name || bi.Compression != p.info.Compression || !bytes.Equal(bi.FileHash, fh[:]) ||
			bi.FileSize != int64(len(p.file)) || !bytes.Equal(bi.NarHash, nh[:]) || bi.NarSize != uint64(len(p.nar)) || bi.Existed {
			t.Errorf("PutNAR(%s) = %+v; want what the bytes hash to (compression %s, %d file bytes, %d NAR bytes)",
				p.name, bi, p.info.Compression, len(p.file), len(p.nar))
		}
		if ok, err := u.HasNAR(ctx, p.name); !ok || err != nil {
			t.Errorf("HasNAR(%s) after the upload = %t, %v", p.name, ok, err)
		}
		// Pending: received, not served until a narinfo claims it.
		if f, _, err := u.OpenBlob(ctx, p.name); !errors.Is(err, store.ErrNotFound) {
			if f != nil {
				f.Close()
			}
			t.Errorf("OpenBlob(%s) of a pending NAR = %v; want ErrNotFound", p.name, err)
		}
		absent(t, u, p.hash, "a NAR without its narinfo")
		again, err := u.PutNAR(ctx, p.name, bytes.NewReader(p.file))
		if err != nil || !again.Existed {
			t.Errorf("PutNAR(%s) again = %+v, %v; want Existed", p.name, again, err)
		}
	}
}

func checkPutNARRefuses(t *testing.T, u store.Uploader) {
	ctx := context.Background()
	good := newUpPath(t, u, "good", "the right bytes", false)
	other := newUpPath(t, u, "other", "other bytes", false)
	junk := []byte("this is not a NAR at all, though its name hashes right")
	junkHash := sha256.Sum256(junk)
	junkName := nixbase32.EncodeToString(junkHash[:]) + ".nar"
	truncated := good.nar[:len(good.nar)-8]
	truncHash := sha256.Sum256(truncated)
	for _, tc := range []struct {
		why, name string
		body      []byte
	}{
		{"bytes that do not hash to the name", good.name, other.file},
		{"bytes that are not a NAR", junkName, junk},
		{"a truncated NAR", nixbase32.EncodeToString(truncHash[:]) + ".nar", truncated},
		{"a name that is no NAR file name", "x.nar", good.file},
		{"a name with a path in it", "../" + good.name, good.file},
		{"an unknown extension", strings.TrimSuffix(good.name, ".nar") + ".nar.rar", good.file},
	} {
		if _, err := u.PutNAR(ctx, tc.name, bytes.NewReader(tc.body)); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("PutNAR of %s = %v; want ErrInvalid", tc.why, err)
		}
		if ok, _ := u.HasNAR(ctx, tc.name); ok {
			t.Errorf("PutNAR of %s: HasNAR(%s) is true; nothing of a refused upload may be kept", tc.why, tc.name)
		}
	}
}

func checkPublish(t *testing.T, u store.Uploader) {
	ctx := context.Background()
	dep := newUpPath(t, u, "dep", "a dependency", true)
	top := newUpPath(t, u, "top", "refers to dep", false, dep)
	top.info.References = append(top.info.References, top.base) // and to itself
	slices.Sort(top.info.References)
	publish(t, u, dep)
	publish(t, u, top)
	for _, p := range []*upPath{dep, top} {
		info, err := u.PathInfo(ctx, p.hash)
		if err != nil {
			t.Fatalf("PathInfo(%s) after PutNarInfo: %v", p.storePath, err)
		}
		var refs []string
		for _, r := range p.info.References {
			refs = append(refs, u.StoreDir()+"/"+r)
		}
		checkInfo(t, u, info)
		checkAgainstFixture(t, info, Path{StorePath: p.storePath, NAR: p.nar, References: refs})
		var b bytes.Buffer
		if err := u.NAR(ctx, info, &b); err != nil || !bytes.Equal(b.Bytes(), p.nar) {
			t.Errorf("NAR(%s) = %d bytes, %v; want the uploaded NAR", p.storePath, b.Len(), err)
		}
		f, size, err := u.OpenBlob(ctx, p.name)
		if err != nil {
			t.Errorf("OpenBlob(%s) of a claimed NAR: %v", p.name, err)
			continue
		}
		got, err := io.ReadAll(f)
		f.Close()
		if err != nil || !bytes.Equal(got, p.file) || size != int64(len(p.file)) {
			t.Errorf("OpenBlob(%s) = %d bytes (size %d), %v; want the uploaded file", p.name, len(got), size, err)
		}
	}
}

func checkNarInfoRefuses(t *testing.T, u store.Uploader) {
	ctx := context.Background()
	dep := newUpPath(t, u, "dep", "never uploaded", false)
	for _, tc := range []struct {
		why    string
		change func(p *upPath) (hash string)
		putNAR bool
	}{
		{"a narinfo whose NAR was never uploaded", func(p *upPath) string { return p.hash }, false},
		{"the hash of another path in the URL", func(p *upPath) string { return randomHashPart(t) }, true},
		{"a wrong NarHash", func(p *upPath) string {
			p.info.NarHash = narinfo.SHA256(make([]byte, 32))
			return p.hash
		}, true},
		{"a wrong NarSize", func(p *upPath) string { p.info.NarSize++; return p.hash }, true},
		{"a wrong Compression", func(p *upPath) string { p.info.Compression = "xz"; return p.hash }, true},
		{"a URL outside nar/", func(p *upPath) string { p.info.URL = "../" + p.name; return p.hash }, true},
		{"a missing reference", func(p *upPath) string {
			p.info.References = []string{dep.base}
			return p.hash
		}, true},
		{"another store directory", func(p *upPath) string {
			p.info.StorePath = "/elsewhere/store/" + p.base
			return p.hash
		}, true},
		{"a malformed body", func(p *upPath) string { p.info = nil; return p.hash }, true},
	} {
		p := newUpPath(t, u, "refused", "refused: "+tc.why, false)
		if tc.putNAR {
			putNAR(t, u, p)
		}
		hash := tc.change(p)
		body := "StorePath: nonsense\n"
		if p.info != nil {
			body = p.info.String()
		}
		if err := u.PutNarInfo(ctx, hash, strings.NewReader(body)); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("PutNarInfo with %s = %v; want ErrInvalid", tc.why, err)
		}
		absent(t, u, p.hash, "PutNarInfo with "+tc.why)
		if tc.putNAR {
			if f, _, err := u.OpenBlob(ctx, p.name); err == nil {
				f.Close()
				t.Errorf("PutNarInfo with %s: its NAR is served", tc.why)
			}
		}
	}
}

func checkImmutable(t *testing.T, u store.Uploader) {
	ctx := context.Background()
	p := newUpPath(t, u, "fixed", "the first contents", false)
	publish(t, u, p)
	if err := u.PutNarInfo(ctx, p.hash, strings.NewReader(p.info.String())); err != nil {
		t.Errorf("an identical narinfo again = %v; want it accepted (nix copy retries)", err)
	}
	changed := newUpPath(t, u, "fixed", "other contents", false)
	changed.hash, changed.base, changed.storePath = p.hash, p.base, p.storePath
	changed.info.StorePath = p.storePath
	putNAR(t, u, changed)
	if err := u.PutNarInfo(ctx, p.hash, strings.NewReader(changed.info.String())); !errors.Is(err, store.ErrConflict) {
		t.Errorf("a narinfo giving a served path another NAR = %v; want ErrConflict", err)
	}
	dep := newUpPath(t, u, "dep", "a new reference", false)
	publish(t, u, dep)
	moreRefs := *p.info
	moreRefs.References = []string{dep.base}
	if err := u.PutNarInfo(ctx, p.hash, strings.NewReader(moreRefs.String())); !errors.Is(err, store.ErrConflict) {
		t.Errorf("a narinfo giving a served path other references = %v; want ErrConflict", err)
	}
	info, err := u.PathInfo(ctx, p.hash)
	sum := sha256.Sum256(p.nar)
	if err != nil || !bytes.Equal(info.NarHash, sum[:]) || len(info.References) != 0 {
		t.Errorf("after refused changes PathInfo = %+v, %v; want the first upload unchanged", info, err)
	}
}

func checkDocuments(t *testing.T, u store.Uploader) {
	ctx := context.Background()
	p := newUpPath(t, u, "documents", "a path with a listing", false)
	listing := `{"version":1,"root":{"type":"regular","size":1}}`
	other := `{"version":1,"root":{"type":"regular","size":2}}`
	if err := u.PutListing(ctx, p.hash, strings.NewReader(listing)); err != nil {
		t.Fatalf("PutListing before the narinfo: %v", err)
	}
	publish(t, u, p)
	if err := u.PutListing(ctx, p.hash, strings.NewReader(listing)); err != nil {
		t.Errorf("the same listing again = %v; want it accepted", err)
	}
	if err := u.PutListing(ctx, p.hash, strings.NewReader(other)); !errors.Is(err, store.ErrConflict) {
		t.Errorf("another listing of a published path = %v; want ErrConflict", err)
	}
	if err := u.PutListing(ctx, p.hash, strings.NewReader("not json")); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("a listing that is not one = %v; want ErrInvalid", err)
	}

	drv := randomHashPart(t) + "-documents.drv"
	if err := u.PutLog(ctx, drv, strings.NewReader("building\n")); err != nil {
		t.Fatalf("PutLog: %v", err)
	}
	if err := u.PutLog(ctx, drv, strings.NewReader("building\n")); err != nil {
		t.Errorf("the same log again = %v; want it accepted", err)
	}
	if err := u.PutLog(ctx, drv, strings.NewReader("other text\n")); !errors.Is(err, store.ErrConflict) {
		t.Errorf("another log of a derivation = %v; want ErrConflict", err)
	}
	for _, bad := range []string{"../../etc/passwd", "x.drv", randomHashPart(t) + "-no-drv"} {
		if err := u.PutLog(ctx, bad, strings.NewReader("x")); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("PutLog(%q) = %v; want ErrInvalid", bad, err)
		}
	}
	if l, ok := u.(store.Logger); ok {
		checkLogs(t, l, Fixture{Logs: map[string]string{drv: "building\n"}})
	}

	id := "sha256:" + strings.Repeat("1", 64) + "!out"
	doc := `{"id":"` + id + `","outPath":"` + p.base + `","signatures":[]}`
	if err := u.PutRealisation(ctx, id, strings.NewReader(doc)); err != nil {
		t.Fatalf("PutRealisation: %v", err)
	}
	if err := u.PutRealisation(ctx, id, strings.NewReader(doc)); err != nil {
		t.Errorf("the same realisation again = %v; want it accepted", err)
	}
	changed := strings.Replace(doc, p.base, randomHashPart(t)+"-elsewhere", 1)
	if err := u.PutRealisation(ctx, id, strings.NewReader(changed)); !errors.Is(err, store.ErrConflict) {
		t.Errorf("another realisation for an id = %v; want ErrConflict", err)
	}
	if err := u.PutRealisation(ctx, "sha256:"+strings.Repeat("2", 64)+"!out", strings.NewReader("{")); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("a realisation that is not JSON = %v; want ErrInvalid", err)
	}
	if r, ok := u.(store.Realisations); ok {
		if got, err := r.Realisation(ctx, id); err != nil || string(got) != doc {
			t.Errorf("Realisation(%s) = %s, %v; want the first document", id, got, err)
		}
	}
}

func checkPins(t *testing.T, u store.Uploader, p store.Pinner) {
	ctx := context.Background()
	a, b := newUpPath(t, u, "pin-a", "a", false), newUpPath(t, u, "pin-b", "b", false)
	publish(t, u, a)
	if existing, err := p.PinWith(ctx, a.storePath, "host1", "deployer", 1); err != nil || existing != nil {
		t.Fatalf("PinWith(%s) = %+v, %v", a.storePath, existing, err)
	}
	// A path not uploaded yet may be pinned, within the owner's bound.
	if _, err := p.PinWith(ctx, b.hash, "host2", "deployer", 1); !errors.Is(err, store.ErrTooManyPins) {
		t.Errorf("a second pin past maxPins 1 = %v; want ErrTooManyPins", err)
	}
	if _, err := p.PinWith(ctx, b.hash, "host2", "deployer", 0); err != nil {
		t.Errorf("PinWith of a path not uploaded yet: %v", err)
	}
	existing, err := p.PinWith(ctx, a.storePath, "mine", "other", 0)
	if err != nil || existing == nil || existing.Owner != "deployer" {
		t.Errorf("pinning another owner's pin = %+v, %v; want it reported, unchanged", existing, err)
	}
	pins, err := p.Pins(ctx)
	if err != nil || len(pins) != 2 || !slices.IsSortedFunc(pins, func(x, y store.Pin) int { return strings.Compare(x.StorePath, y.StorePath) }) {
		t.Fatalf("Pins = %+v, %v; want 2, sorted by store path", pins, err)
	}
	for _, pin := range pins {
		if pin.StorePath == a.storePath && (pin.Owner != "deployer" || pin.Note != "host1" || pin.Created.IsZero()) {
			t.Errorf("pin of %s = %+v", a.storePath, pin)
		}
	}
	if err := p.UnpinAs(ctx, a.storePath, "other", false); !errors.Is(err, store.ErrNotOwner) {
		t.Errorf("UnpinAs by another owner = %v; want ErrNotOwner", err)
	}
	if err := p.UnpinAs(ctx, a.storePath, "deployer", false); err != nil {
		t.Errorf("UnpinAs by its owner: %v", err)
	}
	if err := p.UnpinAs(ctx, a.storePath, "deployer", false); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("UnpinAs of no pin = %v; want ErrNotFound", err)
	}
	if err := p.UnpinAs(ctx, b.hash, "admin", true); err != nil {
		t.Errorf("UnpinAs by an admin: %v", err)
	}
	if pins, err := p.Pins(ctx); err != nil || len(pins) != 0 {
		t.Errorf("Pins after unpinning all = %+v, %v", pins, err)
	}
}

// checkGC collects everything it may and checks that a pinned closure
// and what it needs stay, the rest goes, and then the tombstones.
func checkGC(t *testing.T, u store.Uploader, c store.Collector, p store.Pinner) {
	ctx := context.Background()
	lib := newUpPath(t, u, "gc-lib", "library", false)
	app := newUpPath(t, u, "gc-app", "application", false, lib)
	loose := newUpPath(t, u, "gc-loose", "nobody needs this", false)
	for _, x := range []*upPath{lib, app, loose} {
		publish(t, u, x)
	}
	if _, err := p.PinWith(ctx, app.storePath, "", "test", 0); err != nil {
		t.Fatal(err)
	}
	dry, err := c.GCWith(ctx, store.Policy{MaxSize: 1}, true)
	if err != nil || !dry.DryRun || !slices.Equal(dry.Deleted, []string{loose.storePath}) {
		t.Fatalf("dry GC = %+v, %v; want only %s", dry, err, loose.storePath)
	}
	if _, err := u.PathInfo(ctx, loose.hash); err != nil {
		t.Errorf("a dry run deleted %s: %v", loose.storePath, err)
	}
	rep, err := c.GCWith(ctx, store.Policy{MaxSize: 1}, false)
	if err != nil || !slices.Equal(rep.Deleted, []string{loose.storePath}) {
		t.Fatalf("GC = %+v, %v; want only %s deleted", rep, err, loose.storePath)
	}
	for _, kept := range []*upPath{lib, app} {
		if _, err := u.PathInfo(ctx, kept.hash); err != nil {
			t.Errorf("GC broke a pinned closure: %s: %v", kept.storePath, err)
		}
	}
	absent(t, u, loose.hash, "after GC")
	if f, _, err := u.OpenBlob(ctx, loose.name); err == nil {
		f.Close()
		t.Errorf("the NAR of collected %s is still served", loose.storePath)
	}

	f, ok := u.(store.Forgetter)
	if !ok {
		return
	}
	// A collected path is remembered: it may not come back with
	// another NAR until it is forgotten.
	changed := newUpPath(t, u, "gc-loose", "other contents", false)
	changed.hash, changed.base, changed.storePath = loose.hash, loose.base, loose.storePath
	changed.info.StorePath = loose.storePath
	putNAR(t, u, changed)
	if err := u.PutNarInfo(ctx, loose.hash, strings.NewReader(changed.info.String())); !errors.Is(err, store.ErrConflict) {
		t.Errorf("a collected path uploaded with another NAR = %v; want ErrConflict", err)
	}
	if _, err := f.Forget(ctx, app.storePath); !errors.Is(err, store.ErrConflict) {
		t.Errorf("Forget of a served path = %v; want ErrConflict", err)
	}
	if got, err := f.Forget(ctx, loose.hash); err != nil || got != loose.storePath {
		t.Errorf("Forget(%s) = %q, %v; want %s", loose.hash, got, err, loose.storePath)
	}
	if _, err := f.Forget(ctx, loose.hash); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Forget twice = %v; want ErrNotFound", err)
	}
	if err := u.PutNarInfo(ctx, loose.hash, strings.NewReader(changed.info.String())); err != nil {
		t.Errorf("the forgotten path with another NAR: %v", err)
	}
}

// checkAdopt adopts a path pulled from an upstream, whose reference is
// not here, and checks that a narinfo not describing the NAR received,
// or another NAR for a path the store has, adopts nothing.
func checkAdopt(t *testing.T, a store.Adopter) {
	ctx := context.Background()
	const origin = "https://upstream.example"
	dep := newUpPath(t, a, "adopt-dep", "only the upstream has it", false)
	p := newUpPath(t, a, "adopted", "pulled from the upstream", true, dep)
	putNAR(t, a, p)
	ni := *p.info
	ni.URL = "nar/the-upstreams-own-name.nar.zst"
	if err := a.Adopt(ctx, p.name, &ni, origin); err != nil {
		t.Fatalf("Adopt(%s) of a matching NAR: %v", p.storePath, err)
	}
	info, err := a.PathInfo(ctx, p.hash)
	if err != nil || info.Origin != origin {
		t.Fatalf("PathInfo(%s) of the adopted path = %+v, %v; want Origin %s", p.storePath, info, err, origin)
	}
	checkInfo(t, a, info)
	checkAgainstFixture(t, info, Path{StorePath: p.storePath, NAR: p.nar, References: []string{dep.storePath}})

	q := newUpPath(t, a, "adopt-mismatch", "the upstream lied", false)
	putNAR(t, a, q)
	wrong := *q.info
	wrong.NarSize++
	if err := a.Adopt(ctx, q.name, &wrong, origin); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("Adopt of a narinfo not matching its NAR = %v; want ErrInvalid", err)
	}
	absent(t, a, q.hash, "a refused adoption")

	r := newUpPath(t, a, "adopt-uploaded", "the upload", false)
	publish(t, a, r)
	if err := a.Adopt(ctx, r.name, r.info, origin); err != nil {
		t.Errorf("Adopt of a path uploaded with the same NAR = %v; want a no-op", err)
	}
	other := newUpPath(t, a, "adopt-uploaded", "the upstream's other build", false)
	other.info.StorePath = r.storePath
	putNAR(t, a, other)
	if err := a.Adopt(ctx, other.name, other.info, origin); !errors.Is(err, store.ErrConflict) {
		t.Errorf("Adopt of another NAR for an uploaded path = %v; want ErrConflict", err)
	}
	sum := sha256.Sum256(r.nar)
	if info, err := a.PathInfo(ctx, r.hash); err != nil || !bytes.Equal(info.NarHash, sum[:]) || info.Origin != "" {
		t.Errorf("the uploaded path after adoptions = %+v, %v; want it as uploaded", info, err)
	}
}

func checkVerify(t *testing.T, u store.Uploader, v store.Verifier, fx UploaderFixture) {
	ctx := context.Background()
	a, b := newUpPath(t, u, "verify-a", "intact", false), newUpPath(t, u, "verify-b", "will rot", true)
	publish(t, u, a)
	publish(t, u, b)
	var last, total int64
	rep, err := v.Verify(ctx, false, func(done, all int64) { last, total = done, all })
	if err != nil || len(rep.Bad) != 0 || rep.Checked != 2 || rep.Repaired {
		t.Fatalf("Verify of an intact store = %+v, %v; want 2 checked, none bad", rep, err)
	}
	if want := int64(len(a.file) + len(b.file)); rep.Bytes != want || last != total {
		t.Errorf("Verify read %d bytes (progress %d of %d); want %d", rep.Bytes, last, total, want)
	}
	if fx.Damage == nil {
		t.Skip("the fixture cannot damage a stored NAR")
	}
	if err := fx.Damage(b.name); err != nil {
		t.Fatal(err)
	}
	rep, err = v.Verify(ctx, false, nil)
	if err != nil || len(rep.Bad) != 1 || rep.Bad[0].Name != b.name || !slices.Contains(rep.Bad[0].Paths, b.storePath) {
		t.Fatalf("Verify after damage to %s = %+v, %v; want it found, naming %s", b.name, rep, err, path.Base(b.storePath))
	}
	if _, err := u.PathInfo(ctx, b.hash); err != nil {
		t.Errorf("Verify without repair dropped %s: %v", b.storePath, err)
	}
	rep, err = v.Verify(ctx, true, nil)
	if err != nil || len(rep.Bad) != 1 || !rep.Repaired {
		t.Fatalf("Verify --repair = %+v, %v", rep, err)
	}
	absent(t, u, b.hash, "after repair of its NAR")
	if _, err := u.PathInfo(ctx, a.hash); err != nil {
		t.Errorf("repair dropped the intact %s: %v", a.storePath, err)
	}
}
