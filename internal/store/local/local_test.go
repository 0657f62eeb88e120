package local_test

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/base64"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/local"
	"github.com/bos55/concordia/internal/store/storetest"
	"github.com/bos55/concordia/pkg/narinfo"
)

// openChroot opens a Store on a chroot store, closed at the end of the test.
func openChroot(t testing.TB, n *nixStore, logDir string) *local.Store {
	t.Helper()
	if logDir == "" {
		logDir = filepath.Join(n.root, "nix/var/log/nix/drvs")
	}
	s, err := local.Open(context.Background(), local.Options{
		DBPath: n.dbPath(), StoreDir: "/nix/store", RealStoreDir: n.realDir(), LogDir: logDir,
		Logger: testLogger(t),
	})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// TestCompliance runs the shared suite on a private store built by Nix,
// with signatures, a CA path, realisations and build logs.
func TestCompliance(t *testing.T) {
	n := newChrootStore(t)
	b := n.build(t, "a", "b", "c", "big", "ca-a", "ca-b")
	signAll(t, n, b.out["c"], b.out["a"])
	added := addFile(t, n)
	paths := []string{b.out["a"], b.out["b"], b.out["c"], b.out["big"], b.out["ca-a"], b.out["ca-b"], added}
	fx := n.fixture(t, paths...)
	fx.Realisations = n.realisations(t, b, "ca-a", "ca-b")
	logDir, logs := writeLogs(t)
	fx.Logs = logs
	storetest.Run(t, func(t *testing.T) (store.Store, storetest.Fixture) {
		return openChroot(t, n, logDir), fx
	})
}

// TestSystemStore runs the suite on the machine's own /nix with default
// options, on paths freshly built there.
func TestSystemStore(t *testing.T) {
	n := systemStore(t)
	b := n.build(t, "a", "b", "c")
	fx := n.fixture(t, b.out["a"], b.out["b"], b.out["c"])
	storetest.Run(t, func(t *testing.T) (store.Store, storetest.Fixture) {
		s, err := local.Open(context.Background(), local.Options{LogDir: t.TempDir()})
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		t.Cleanup(func() { s.Close() })
		return s, fx
	})
}

func signAll(t *testing.T, n *nixStore, paths ...string) {
	t.Helper()
	dir := t.TempDir()
	sk, pk := filepath.Join(dir, "sk"), filepath.Join(dir, "pk")
	n.run(t, "nix-store", "--generate-binary-cache-key", "test-key-1", sk, pk)
	n.run(t, "nix", append([]string{"store", "sign", "-k", sk}, paths...)...)
}

// addFile adds a content-addressed path ("fixed:r:sha256:...").
func addFile(t *testing.T, n *nixStore) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "added-"+hashPart(t, "/nix/store/"+rand32(t)+"-x")[:8])
	if err := os.WriteFile(f, randBytes(t, 100), 0o644); err != nil {
		t.Fatal(err)
	}
	return string(bytes.TrimSpace(n.run(t, "nix-store", "--add", f)))
}

func rand32(t testing.TB) string {
	const alphabet = "0123456789abcdfghijklmnpqrsvwxyz"
	b := randBytes(t, 32)
	for i := range b {
		b[i] = alphabet[int(b[i])%32]
	}
	return string(b)
}

// TestPathInfoMatchesNix compares every field with `nix path-info --json`.
func TestPathInfoMatchesNix(t *testing.T) {
	n := newChrootStore(t)
	b := n.build(t, "a", "b", "c", "ca-b")
	signAll(t, n, b.out["c"])
	paths := []string{b.out["a"], b.out["b"], b.out["c"], b.out["ca-b"]}
	want := n.pathInfo(t, paths...)
	s := openChroot(t, n, "")
	for _, p := range paths {
		t.Run(filepath.Base(p), func(t *testing.T) {
			w := want[p]
			got, err := s.PathInfo(context.Background(), hashPart(t, p))
			if err != nil {
				t.Fatal(err)
			}
			h, err := narinfo.ParseHash(w.NarHash)
			if err != nil {
				t.Fatal(err)
			}
			wantRefs := slices.Sorted(slices.Values(w.References))
			if wantRefs == nil {
				wantRefs = []string{}
			}
			if got.StorePath != p || !bytes.Equal(got.NarHash, h.Digest) || got.NarSize != w.NarSize ||
				!slices.Equal(got.References, wantRefs) || got.Deriver != w.Deriver ||
				!slices.Equal(got.Sigs, w.Signatures) || got.CA != w.CA || got.Registered.Unix() != w.RegistrationTime {
				t.Errorf("PathInfo = %+v\nnix path-info = %+v", got, w)
			}
		})
	}
	if len(want[b.out["c"]].Signatures) != 1 || len(want[b.out["c"]].References) != 2 || want[b.out["ca-b"]].CA == "" {
		t.Errorf("fixture lost its point: %+v", want)
	}
}

// TestSeesNewPaths: a path Nix registers while the store is open is found
// at once, through the WAL, and a miss is not remembered.
func TestSeesNewPaths(t *testing.T) {
	n := newChrootStore(t)
	b := n.build(t, "a")
	s := openChroot(t, n, "")
	if _, err := s.PathInfo(context.Background(), hashPart(t, b.out["a"])); err != nil {
		t.Fatal(err)
	}
	drv := string(bytes.TrimSpace(n.run(t, "nix-instantiate", b.expr, "--argstr", "tag", b.tag, "-A", "fresh")))
	out := string(bytes.TrimSpace(n.run(t, "nix-store", "--query", "--outputs", drv)))
	if _, err := s.PathInfo(context.Background(), hashPart(t, out)); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("before the build: %v, want ErrNotFound", err)
	}
	n.buildMore(t, b, "fresh")
	if b.out["fresh"] != out {
		t.Fatalf("built %s, expected %s", b.out["fresh"], out)
	}
	info, err := s.PathInfo(context.Background(), hashPart(t, out))
	if err != nil {
		t.Fatalf("after the build: %v", err)
	}
	if info.StorePath != out || info.Deriver != drv {
		t.Errorf("PathInfo = %+v", info)
	}
}

// TestGarbageCollected: a path deleted between PathInfo and NAR is
// ErrNotFound with nothing written, and then gone from PathInfo too.
func TestGarbageCollected(t *testing.T) {
	n := newChrootStore(t)
	b := n.build(t, "a")
	s := openChroot(t, n, "")
	info, err := s.PathInfo(context.Background(), hashPart(t, b.out["a"]))
	if err != nil {
		t.Fatal(err)
	}
	must(t, os.Remove(b.link["a"]))
	n.run(t, "nix-store", "--delete", b.out["a"])
	var buf bytes.Buffer
	if err := s.NAR(context.Background(), info, &buf); !errors.Is(err, store.ErrNotFound) || buf.Len() != 0 {
		t.Errorf("NAR after GC = %v, %d bytes written; want ErrNotFound, 0", err, buf.Len())
	}
	if _, err := s.PathInfo(context.Background(), hashPart(t, b.out["a"])); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("PathInfo after GC = %v, want ErrNotFound", err)
	}
}

// TestVanishesMidStream: a path removed after the first bytes went out is
// an error that is not ErrNotFound, so the server aborts the connection
// and the client sees a truncated transfer, never a short clean body.
func TestVanishesMidStream(t *testing.T) {
	n := newChrootStore(t)
	b := n.build(t, "big")
	s := openChroot(t, n, "")
	info, err := s.PathInfo(context.Background(), hashPart(t, b.out["big"]))
	if err != nil {
		t.Fatal(err)
	}
	real := n.real(b.out["big"])
	w := &hookWriter{hook: func() {
		// Store paths are read-only; make it removable like the GC does.
		for _, p := range []string{n.realDir(), real} {
			os.Chmod(p, 0o755)
		}
		if err := os.RemoveAll(real); err != nil {
			t.Error(err)
		}
	}}
	err = s.NAR(context.Background(), info, w)
	if err == nil || errors.Is(err, store.ErrNotFound) || w.n == 0 || uint64(w.n) >= info.NarSize {
		t.Errorf("NAR with the path removed mid-stream = %v after %d of %d bytes; want a non-NotFound error after a partial write",
			err, w.n, info.NarSize)
	}
}

type hookWriter struct {
	n    int
	once sync.Once
	hook func()
}

func (w *hookWriter) Write(p []byte) (int, error) {
	w.once.Do(w.hook)
	w.n += len(p)
	return len(p), nil
}

// TestNARCanceled stops streaming when the request context ends.
func TestNARCanceled(t *testing.T) {
	n := newChrootStore(t)
	b := n.build(t, "big")
	s := openChroot(t, n, "")
	info, err := s.PathInfo(context.Background(), hashPart(t, b.out["big"]))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &hookWriter{hook: cancel}
	if err := s.NAR(ctx, info, w); !errors.Is(err, context.Canceled) {
		t.Errorf("NAR after cancel = %v, want context.Canceled", err)
	}
}

// writeLogs makes a log directory in Nix's layout: plain, bzip2 and flat
// logs that must be served, and traps that must not be.
func writeLogs(t *testing.T) (string, map[string]string) {
	t.Helper()
	dir := t.TempDir()
	drv := func(name string) string { return rand32(t) + "-" + name + ".drv" }
	put := func(rel string, data []byte) {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	logs := map[string]string{}
	plain, bz, flat := drv("plain"), drv("bz"), drv("flat")
	logs[plain] = "building plain\n"
	put(plain[:2]+"/"+plain[2:], []byte(logs[plain]))
	logs[bz] = "building compressed\nline 2\n"
	put(bz[:2]+"/"+bz[2:]+".bz2", bzip2(t, logs[bz]))
	logs[flat] = "flat layout\n"
	put(flat, []byte(logs[flat]))
	// A relative symlink that stays in the tree is fine (os.Root refuses
	// absolute ones, wherever they point).
	linked := drv("linked")
	logs[linked] = logs[plain]
	os.MkdirAll(filepath.Join(dir, linked[:2]), 0o755)
	if err := os.Symlink("../"+plain[:2]+"/"+plain[2:], filepath.Join(dir, linked[:2], linked[2:])); err != nil {
		t.Fatal(err)
	}
	return dir, logs
}

func bzip2(t *testing.T, s string) []byte {
	t.Helper()
	if _, err := exec.LookPath("bzip2"); err != nil {
		t.Skip("bzip2 not installed")
	}
	cmd := exec.Command("bzip2", "-c")
	cmd.Stdin = bytes.NewReader([]byte(s))
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestBuildLogRefusesEscapes: symlinks leaving the log directory, fifos
// and directories are not served, and nothing hangs.
func TestBuildLogRefusesEscapes(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("secret\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	outside := filepath.Join(t.TempDir(), "outside")
	os.MkdirAll(outside, 0o755)
	os.WriteFile(filepath.Join(outside, "x.drv"), []byte("secret\n"), 0o644)
	traps := map[string]func(name string){
		"symlink-abs": func(name string) { must(t, os.Symlink(secret, filepath.Join(dir, name[:2], name[2:]))) },
		"symlink-rel": func(name string) {
			rel, _ := filepath.Rel(filepath.Join(dir, name[:2]), secret)
			must(t, os.Symlink(rel, filepath.Join(dir, name[:2], name[2:])))
		},
		"symlink-bz2":  func(name string) { must(t, os.Symlink(secret, filepath.Join(dir, name[:2], name[2:]+".bz2"))) },
		"fifo":         func(name string) { must(t, syscall.Mkfifo(filepath.Join(dir, name[:2], name[2:]), 0o644)) },
		"directory":    func(name string) { must(t, os.Mkdir(filepath.Join(dir, name[:2], name[2:]), 0o755)) },
		"flat-symlink": func(name string) { must(t, os.Symlink(secret, filepath.Join(dir, name))) },
	}
	names := map[string]string{}
	for trap, mk := range traps {
		name := rand32(t) + "-" + trap + ".drv"
		must(t, os.MkdirAll(filepath.Join(dir, name[:2]), 0o755))
		mk(name)
		names[trap] = name
	}
	// A two-character directory that is itself a symlink out of the tree.
	// Its prefix must differ from the traps' directories made above.
	dirLink := rand32(t) + "-x.drv"
	for _, err := os.Lstat(filepath.Join(dir, dirLink[:2])); err == nil; _, err = os.Lstat(filepath.Join(dir, dirLink[:2])) {
		dirLink = rand32(t) + "-x.drv"
	}
	must(t, os.Symlink(outside, filepath.Join(dir, dirLink[:2])))
	os.Rename(filepath.Join(outside, "x.drv"), filepath.Join(outside, dirLink[2:]))
	names["dir-symlink"] = dirLink

	s := openChroot(t, newChrootStore(t), dir)
	for trap, name := range names {
		t.Run(trap, func(t *testing.T) {
			r, _, err := s.BuildLog(context.Background(), name)
			if r != nil {
				data, _ := io.ReadAll(r)
				r.Close()
				t.Errorf("served %q", data)
			}
			if !errors.Is(err, store.ErrNotFound) {
				t.Errorf("BuildLog = %v, want ErrNotFound", err)
			}
		})
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestOpenErrors: a missing database or one that is not Nix's fails Open.
func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	notNix := filepath.Join(dir, "other.sqlite")
	db, err := sql.Open("sqlite3", notNix)
	must(t, err)
	_, err = db.Exec("create table t(x)")
	must(t, err)
	must(t, db.Close())
	for name, opts := range map[string]local.Options{
		"missing":    {DBPath: filepath.Join(dir, "nope.sqlite")},
		"not-nix":    {DBPath: notNix},
		"relative":   {DBPath: notNix, StoreDir: "nix/store"},
		"root-store": {DBPath: notNix, StoreDir: "/"},
	} {
		t.Run(name, func(t *testing.T) {
			if s, err := local.Open(context.Background(), opts); err == nil {
				s.Close()
				t.Error("Open succeeded")
			}
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "nope.sqlite")); err == nil {
		t.Error("Open created the missing database")
	}
}

// testLogger sends the store's log lines to the test's output.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), nil))
}

// TestRealisationHashForms: the drv hash may come in any encoding Nix
// accepts; the document always names it in base16, as Nix does.
func TestRealisationHashForms(t *testing.T) {
	n := newChrootStore(t)
	b := n.build(t, "ca-b")
	docs := n.realisations(t, b, "ca-b")
	s := openChroot(t, n, "")
	for id, want := range docs {
		hashStr, out, _ := strings.Cut(id, "!")
		h, err := narinfo.ParseHash(hashStr)
		must(t, err)
		for _, form := range []string{id, h.String() + "!" + out, "sha256-" + base64.StdEncoding.EncodeToString(h.Digest) + "!" + out} {
			got, err := s.Realisation(context.Background(), form)
			if err != nil || string(got) != want {
				t.Errorf("Realisation(%s) = %s, %v; want %s", form, got, err, want)
			}
		}
		if !strings.Contains(want, `"dependentRealisations":{"sha256:`) {
			t.Errorf("ca-b's realisation has no dependency: %s", want)
		}
	}
}
