// Package storetest is the compliance suite every store.Store backend runs,
// so the server can treat them alike: a backend's test builds a store and
// a Fixture describing what it must hold (ideally produced by real Nix),
// and calls Run. A backend that takes uploads also calls RunUploader,
// which fills an empty store through store.Uploader and checks what it
// accepts, refuses, pins, collects and verifies.
package storetest

import (
	"bytes"
	"compress/bzip2"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"path"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/pkg/narinfo"
)

// Fixture is what the store under test is expected to hold.
type Fixture struct {
	// Paths must all be present. At least one is required.
	Paths []Path
	// Logs maps drv base names to their uncompressed log text; checked
	// when the store implements store.Logger.
	Logs map[string]string
	// Realisations maps ids to the exact JSON document; checked when the
	// store implements store.Realisations.
	Realisations map[string]string
}

// Path is one store path the store must have.
type Path struct {
	// StorePath is the full path.
	StorePath string
	// NAR is the exact serialisation, as `nix-store --dump` writes it.
	NAR []byte
	// References, full paths in any order, are checked when not nil.
	References []string
	// Deriver, a full path, is checked when not empty.
	Deriver string
	// Sigs are checked (as a set) when not nil.
	Sigs []string
	// CA is checked when not empty.
	CA string
}

// optional is s as the optional interface T, or skips the test with lacks:
// a store need not serve every part of the protocol.
func optional[T any](t *testing.T, s any, lacks string) T {
	t.Helper()
	v, ok := s.(T)
	if !ok {
		t.Skip(lacks)
	}
	return v
}

// Run checks newStore's store against its fixture. newStore is called once
// per subtest and must arrange its own cleanup with t.Cleanup.
func Run(t *testing.T, newStore func(t *testing.T) (store.Store, Fixture)) {
	t.Helper()
	t.Run("StoreDir", func(t *testing.T) {
		s, _ := newStore(t)
		d := s.StoreDir()
		if d == "" || d[0] != '/' || path.Clean(d) != d || d == "/" {
			t.Fatalf("StoreDir() = %q, want a clean absolute directory", d)
		}
	})
	t.Run("PathInfo", func(t *testing.T) {
		s, fx := newStore(t)
		requirePaths(t, fx)
		for _, p := range fx.Paths {
			t.Run(path.Base(p.StorePath), func(t *testing.T) {
				info := lookup(t, s, p.StorePath)
				checkInfo(t, s, info)
				checkAgainstFixture(t, info, p)
			})
		}
	})
	t.Run("NAR", func(t *testing.T) {
		s, fx := newStore(t)
		requirePaths(t, fx)
		for _, p := range fx.Paths {
			t.Run(path.Base(p.StorePath), func(t *testing.T) {
				info := lookup(t, s, p.StorePath)
				var b bytes.Buffer
				if err := s.NAR(context.Background(), info, &b); err != nil {
					t.Fatalf("NAR(%s): %v", p.StorePath, err)
				}
				if sum := sha256.Sum256(b.Bytes()); !bytes.Equal(sum[:], info.NarHash) || uint64(b.Len()) != info.NarSize {
					t.Errorf("NAR(%s): %d bytes sha256 %x, PathInfo says %d bytes %x",
						p.StorePath, b.Len(), sum, info.NarSize, info.NarHash)
				}
				if p.NAR != nil && !bytes.Equal(b.Bytes(), p.NAR) {
					t.Errorf("NAR(%s) differs from the fixture (%d vs %d bytes)", p.StorePath, b.Len(), len(p.NAR))
				}
			})
		}
	})
	t.Run("RangeNAR", func(t *testing.T) {
		s, fx := newStore(t)
		rn := optional[store.RangeNAR](t, s, "store does not stream NARs from an offset")
		requirePaths(t, fx)
		for _, p := range fx.Paths {
			info := lookup(t, s, p.StorePath)
			var full bytes.Buffer
			if err := s.NAR(context.Background(), info, &full); err != nil {
				t.Fatal(err)
			}
			n := int64(full.Len())
			for _, off := range []int64{0, 1, 8, n / 3, n / 2, n - 9, n - 1, n} {
				off = max(0, min(off, n))
				var b bytes.Buffer
				err := rn.NARFrom(context.Background(), info, off, &b)
				if errors.Is(err, errors.ErrUnsupported) && b.Len() == 0 {
					continue
				}
				if err != nil || !bytes.Equal(b.Bytes(), full.Bytes()[off:]) {
					t.Errorf("NARFrom(%s, %d) = %d bytes, %v; want the last %d bytes of its NAR", p.StorePath, off, b.Len(), err, n-off)
				}
			}
			gone := *info
			gone.StorePath = s.StoreDir() + "/" + randomHashPart(t) + "-gone"
			var b bytes.Buffer
			if err := rn.NARFrom(context.Background(), &gone, 1, &b); !errors.Is(err, store.ErrNotFound) || b.Len() != 0 {
				t.Errorf("NARFrom of a missing path = %v after %d bytes; want ErrNotFound", err, b.Len())
			}
		}
	})
	t.Run("NotFound", func(t *testing.T) {
		s, fx := newStore(t)
		requirePaths(t, fx)
		for _, h := range missingHashParts(t, fx) {
			info, err := s.PathInfo(context.Background(), h)
			if !errors.Is(err, store.ErrNotFound) {
				t.Errorf("PathInfo(%q) = %+v, %v; want ErrNotFound", h, info, err)
			}
		}
	})
	t.Run("NARNotFound", func(t *testing.T) {
		s, fx := newStore(t)
		requirePaths(t, fx)
		// A path the store does not hold (as after garbage collection).
		info := lookup(t, s, fx.Paths[0].StorePath)
		gone := *info
		gone.StorePath = s.StoreDir() + "/" + randomHashPart(t) + "-gone"
		var b bytes.Buffer
		if err := s.NAR(context.Background(), &gone, &b); !errors.Is(err, store.ErrNotFound) || b.Len() != 0 {
			t.Errorf("NAR(%s) = %v after %d bytes; want ErrNotFound and nothing written", gone.StorePath, err, b.Len())
		}
	})
	t.Run("Concurrent", func(t *testing.T) {
		s, fx := newStore(t)
		requirePaths(t, fx)
		concurrent(t, s, fx)
	})
	t.Run("Logger", func(t *testing.T) {
		s, fx := newStore(t)
		l := optional[store.Logger](t, s, "store does not serve build logs")
		checkLogs(t, l, fx)
	})
	t.Run("Sizer", func(t *testing.T) {
		s, fx := newStore(t)
		requirePaths(t, fx)
		sz := optional[store.Sizer](t, s, "store does not count its paths")
		checkSize(t, sz, fx)
	})
	t.Run("Referrers", func(t *testing.T) {
		s, fx := newStore(t)
		requirePaths(t, fx)
		r := optional[store.Referrers](t, s, "store does not list referrers")
		checkReferrers(t, r, fx)
	})
	t.Run("Realisations", func(t *testing.T) {
		s, fx := newStore(t)
		r := optional[store.Realisations](t, s, "store does not serve realisations")
		for id, want := range fx.Realisations {
			got, err := r.Realisation(context.Background(), id)
			if err != nil || string(got) != want {
				t.Errorf("Realisation(%q) = %s, %v; want %s", id, got, err, want)
			}
		}
		unknown := "sha256:" + hex.EncodeToString(randomBytes(t, 32)) + "!out"
		for _, id := range []string{unknown, "", "!", "out", "sha256:xyz!out", "sha256:" + strings.Repeat("0", 64), "../../etc/passwd!out"} {
			if got, err := r.Realisation(context.Background(), id); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("Realisation(%q) = %s, %v; want ErrNotFound", id, got, err)
			}
		}
	})
}

func requirePaths(t *testing.T, fx Fixture) {
	t.Helper()
	if len(fx.Paths) == 0 {
		t.Fatal("fixture has no paths")
	}
}

func hashPart(t *testing.T, storePath string) string {
	t.Helper()
	_, h, _, err := narinfo.ParseStorePath(storePath)
	if err != nil {
		t.Fatalf("fixture: %v", err)
	}
	return h
}

func lookup(t *testing.T, s store.Store, storePath string) *store.PathInfo {
	t.Helper()
	info, err := s.PathInfo(context.Background(), hashPart(t, storePath))
	if err != nil {
		t.Fatalf("PathInfo(%s): %v", storePath, err)
	}
	if info.StorePath != storePath {
		t.Fatalf("PathInfo(%s).StorePath = %q", storePath, info.StorePath)
	}
	return info
}

// checkInfo checks what must hold for every path of every store.
func checkInfo(t *testing.T, s store.Store, info *store.PathInfo) {
	t.Helper()
	dir := s.StoreDir()
	if d, _, _, err := narinfo.ParseStorePath(info.StorePath); err != nil || d != dir {
		t.Errorf("StorePath %q not a valid path under %s: %v", info.StorePath, dir, err)
	}
	if len(info.NarHash) != sha256.Size {
		t.Errorf("NarHash is %d bytes, want %d", len(info.NarHash), sha256.Size)
	}
	if info.NarSize == 0 {
		t.Error("NarSize is 0")
	}
	if !slices.IsSorted(info.References) {
		t.Errorf("References not sorted: %q", info.References)
	}
	if len(slices.Compact(slices.Clone(info.References))) != len(info.References) {
		t.Errorf("References repeat: %q", info.References)
	}
	for _, r := range info.References {
		if d, _, _, err := narinfo.ParseStorePath(r); err != nil || d != dir {
			t.Errorf("reference %q not a full path under %s: %v", r, dir, err)
		}
	}
	if info.Deriver != "" {
		if d, _, name, err := narinfo.ParseStorePath(info.Deriver); err != nil || d != dir || !strings.HasSuffix(name, ".drv") {
			t.Errorf("Deriver %q not a .drv path under %s: %v", info.Deriver, dir, err)
		}
	}
	for _, sig := range info.Sigs {
		if name, _, ok := strings.Cut(sig, ":"); !ok || name == "" {
			t.Errorf("signature %q is not name:base64", sig)
		}
	}
	if info.Registered.IsZero() {
		t.Error("Registered is zero")
	}
}

func checkAgainstFixture(t *testing.T, info *store.PathInfo, p Path) {
	t.Helper()
	if p.NAR != nil {
		sum := sha256.Sum256(p.NAR)
		if !bytes.Equal(info.NarHash, sum[:]) {
			t.Errorf("NarHash %x, fixture NAR hashes to %x", info.NarHash, sum)
		}
		if info.NarSize != uint64(len(p.NAR)) {
			t.Errorf("NarSize %d, fixture NAR has %d bytes", info.NarSize, len(p.NAR))
		}
	}
	if p.References != nil {
		want := slices.Sorted(slices.Values(p.References))
		if !slices.Equal(info.References, want) {
			t.Errorf("References %q, want %q", info.References, want)
		}
	}
	if p.Deriver != "" && info.Deriver != p.Deriver {
		t.Errorf("Deriver %q, want %q", info.Deriver, p.Deriver)
	}
	if p.Sigs != nil {
		got, want := slices.Sorted(slices.Values(info.Sigs)), slices.Sorted(slices.Values(p.Sigs))
		if !slices.Equal(got, want) {
			t.Errorf("Sigs %q, want %q", got, want)
		}
	}
	if p.CA != "" && info.CA != p.CA {
		t.Errorf("CA %q, want %q", info.CA, p.CA)
	}
}

// missingHashParts are hash parts no store may answer: random ones, ones
// next to real ones (a "path >= x" lookup must check its prefix), and
// malformed ones, which must be ErrNotFound too (a 404, never a 400 or 500
// on the read path).
func missingHashParts(t *testing.T, fx Fixture) []string {
	t.Helper()
	real := hashPart(t, fx.Paths[0].StorePath)
	below := []byte(real)
	// The nix32 digit just below the last one, so the real path sorts
	// right after it.
	const alphabet = "0123456789abcdfghijklmnpqrsvwxyz"
	if i := strings.IndexByte(alphabet, below[31]); i > 0 {
		below[31] = alphabet[i-1]
	} else {
		below[31] = alphabet[1]
	}
	return []string{
		randomHashPart(t), randomHashPart(t), string(below),
		"", real[:31], real + "0", strings.ToUpper(real),
		"eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee", // 'e' is not a nix32 digit
		strings.Repeat("0", 31) + "/", "../../../../../../../etc/passwd",
		real[:31] + "\x00", real + "-", real + ".narinfo", " " + real[1:],
		"%", strings.Repeat("a", 4096),
	}
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func randomHashPart(t *testing.T) string {
	return nixbase32.EncodeToString(randomBytes(t, 20))
}

// concurrent looks every path up, and a missing one, from many goroutines
// at once (run with -race), and streams NARs alongside.
func concurrent(t *testing.T, s store.Store, fx Fixture) {
	t.Helper()
	const workers, rounds = 16, 40
	want := make(map[string]*store.PathInfo)
	hashes := make(map[string]string)
	for _, p := range fx.Paths {
		want[p.StorePath] = lookup(t, s, p.StorePath)
		hashes[p.StorePath] = hashPart(t, p.StorePath)
	}
	missing := randomHashPart(t)
	var wg sync.WaitGroup
	errs := make(chan error, workers*rounds)
	for w := range workers {
		wg.Go(func() {
			for i := range rounds {
				p := fx.Paths[(w+i)%len(fx.Paths)]
				info, err := s.PathInfo(context.Background(), hashes[p.StorePath])
				if err != nil {
					errs <- err
					continue
				}
				if info.StorePath != p.StorePath || !bytes.Equal(info.NarHash, want[p.StorePath].NarHash) {
					errs <- errors.New("concurrent PathInfo of " + p.StorePath + " gave " + info.StorePath)
				}
				if _, err := s.PathInfo(context.Background(), missing); !errors.Is(err, store.ErrNotFound) {
					errs <- errors.New("concurrent PathInfo of a missing path: not ErrNotFound")
				}
				if i%10 == 0 {
					h := sha256.New()
					if err := s.NAR(context.Background(), info, h); err != nil {
						errs <- err
					} else if !bytes.Equal(h.Sum(nil), info.NarHash) {
						errs <- errors.New("concurrent NAR of " + p.StorePath + " does not match its hash")
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func checkLogs(t *testing.T, l store.Logger, fx Fixture) {
	t.Helper()
	ctx := context.Background()
	for drv, want := range fx.Logs {
		r, comp, err := l.BuildLog(ctx, drv)
		if err != nil {
			t.Errorf("BuildLog(%s): %v", drv, err)
			continue
		}
		var src io.Reader = r
		switch comp {
		case "":
		case "bz2":
			src = bzip2.NewReader(r)
		default:
			t.Errorf("BuildLog(%s): unknown compression %q", drv, comp)
		}
		got, err := io.ReadAll(src)
		r.Close()
		if err != nil || string(got) != want {
			t.Errorf("BuildLog(%s) = %q, %v; want %q", drv, got, err, want)
		}
	}
	unknown := randomHashPart(t) + "-unknown.drv"
	for _, drv := range []string{unknown, "", "x.drv", "../../../../etc/passwd", randomHashPart(t) + "-x",
		randomHashPart(t) + "-a/../../b.drv", randomHashPart(t) + "-\x00.drv", "/" + unknown} {
		if r, _, err := l.BuildLog(ctx, drv); !errors.Is(err, store.ErrNotFound) {
			if r != nil {
				r.Close()
			}
			t.Errorf("BuildLog(%q) = %v; want ErrNotFound", drv, err)
		}
	}
}

// checkSize: every fixture path is counted, with at least its NAR bytes,
// and a since in the future counts nothing.
func checkSize(t *testing.T, s store.Sizer, fx Fixture) {
	ctx := context.Background()
	var narBytes int64
	for _, p := range fx.Paths {
		narBytes += int64(len(p.NAR))
	}
	got, err := s.Size(ctx, time.Time{})
	if err != nil {
		t.Fatalf("Size: %v", err)
	}
	if got.Paths < len(fx.Paths) || got.NarBytes < narBytes || got.Since != got.Paths {
		t.Errorf("Size(zero time) = %+v, want >= %d paths and %d NAR bytes, every path since the zero time", got, len(fx.Paths), narBytes)
	}
	later, err := s.Size(ctx, time.Now().Add(time.Hour))
	if err != nil || later.Since != 0 || later.Paths != got.Paths {
		t.Errorf("Size(an hour ahead) = %+v, %v; want the same paths and none since", later, err)
	}
}

// checkReferrers: every reference of a fixture path (but itself) lists
// that path as a referrer; an unknown path has none; the limit holds.
func checkReferrers(t *testing.T, s store.Referrers, fx Fixture) {
	ctx := context.Background()
	checked := 0
	for _, p := range fx.Paths {
		for _, ref := range p.References {
			if ref == p.StorePath {
				continue
			}
			got, more, err := s.Referrers(ctx, ref, 10000)
			if err != nil {
				t.Fatalf("Referrers(%s): %v", ref, err)
			}
			if more && !slices.Contains(got, p.StorePath) {
				continue // a huge store: the fixture's may be past the limit
			}
			if !slices.Contains(got, p.StorePath) {
				t.Errorf("Referrers(%s) = %v, lacks %s", ref, got, p.StorePath)
			}
			if slices.Contains(got, ref) {
				t.Errorf("Referrers(%s) lists the path itself", ref)
			}
			if !slices.IsSorted(got) {
				t.Errorf("Referrers(%s) = %v, not sorted", ref, got)
			}
			if one, more, err := s.Referrers(ctx, ref, 1); err != nil || len(one) != 1 || more != (len(got) > 1) {
				t.Errorf("Referrers(%s, 1) = %v, more %v, %v; want one of %v", ref, one, more, err, got)
			}
			checked++
		}
	}
	unknown := "/nix/store/" + randomHashPart(t) + "-unknown"
	if got, _, err := s.Referrers(ctx, unknown, 10); err != nil || len(got) != 0 {
		t.Errorf("Referrers(unknown) = %v, %v; want none", got, err)
	}
	if checked == 0 {
		t.Log("no fixture path refers to another: only the unknown path was checked")
	}
}
