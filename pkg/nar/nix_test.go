package nar_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/bos55/concordia/pkg/nar"
)

// TestAgainstNixStore adds a tree to a private Nix store and copies it to
// a file:// binary cache with write-nar-listing=1, then checks that Hasher
// gives the NarHash/NarSize Nix registered, that the cache's NAR is our
// dump, and that our listing is byte-identical to Nix's .ls file with every
// narOffset pointing at the file's contents in Nix's NAR.
func TestAgainstNixStore(t *testing.T) {
	needNix(t)
	t.Parallel() // mostly waiting for nix; the allocation tests stay serial
	t.Run("varied", func(t *testing.T) {
		src := filepath.Join(t.TempDir(), "src")
		if err := os.Mkdir(src, 0o755); err != nil {
			t.Fatal(err)
		}
		variedTree().build(t, src)
		checkAgainstNixStore(t, src)
	})
	// $GOROOT/test: 3,800 real files, names like "Þfoo.go". The whole
	// toolchain passes too (NAR_TEST_WHOLE_GOROOT=1) but takes a minute.
	t.Run("goroot-test", func(t *testing.T) {
		if testing.Short() {
			t.Skip("copies 21 MB through a Nix store; skipped in -short")
		}
		checkAgainstNixStore(t, filepath.Join(goroot(t), "test"))
	})
	t.Run("goroot", func(t *testing.T) {
		if os.Getenv("NAR_TEST_WHOLE_GOROOT") == "" {
			t.Skip("set NAR_TEST_WHOLE_GOROOT=1 to copy the whole Go toolchain through a Nix store")
		}
		checkAgainstNixStore(t, goroot(t))
	})
}

func checkAgainstNixStore(t *testing.T, src string) {
	tmp := t.TempDir()
	store := filepath.Join(tmp, "store")
	cache := filepath.Join(tmp, "cache")
	t.Cleanup(func() { makeWritable(store) })

	storePath := strings.TrimSpace(string(nixOutput(t, "nix-store", "--store", store, "--add", src)))
	nixOutput(t, "nix", "--extra-experimental-features", "nix-command", "copy", "--store", store,
		"--to", "file://"+cache+"?write-nar-listing=1&compression=none", storePath)
	info := nixOutput(t, "nix", "--extra-experimental-features", "nix-command", "path-info", "--store", store, "--json", storePath)

	// Our side streams: dump -> hasher and listing, nothing held.
	h := nar.NewHasher()
	pr, pw := io.Pipe()
	go func() {
		_, err := nar.DumpPath(io.MultiWriter(pw, h), src)
		pw.CloseWithError(err)
	}()
	l, err := nar.ListingFromReader(pr)
	if err != nil {
		t.Fatal(err)
	}
	digest, size := h.Sum()

	var infos []struct {
		NarHash string `json:"narHash"`
		NarSize uint64 `json:"narSize"`
	}
	if err := json.Unmarshal(info, &infos); err != nil || len(infos) != 1 {
		t.Fatalf("path-info: %v: %s", err, info)
	}
	want := decodeHash(t, infos[0].NarHash)
	if !bytes.Equal(digest, want) || size != infos[0].NarSize {
		t.Fatalf("Hasher: %x, %d bytes; nix registered %x (%s), %d", digest, size, want, infos[0].NarHash, infos[0].NarSize)
	}

	hashPart := filepath.Base(storePath)[:32]
	narinfo, err := os.ReadFile(filepath.Join(cache, hashPart+".narinfo"))
	if err != nil {
		t.Fatal(err)
	}
	narFile := filepath.Join(cache, field(string(narinfo), "URL"))
	if got := fileSum(t, narFile); !bytes.Equal(got, digest) {
		t.Fatal("NAR in the binary cache differs from DumpPath")
	}

	wantLs, err := os.ReadFile(filepath.Join(cache, hashPart+".ls"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := l.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, wantLs) {
		i := firstDiff(got, wantLs)
		t.Fatalf("listing differs at byte %d:\n got %q\nwant %q", i, snippet(got, i), snippet(wantLs, i))
	}
	f, err := os.Open(narFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	checkNarOffsets(t, l, f, src)
}

// checkNarOffsets reads each regular file's contents at its narOffset in the
// NAR and compares them with the file on disk.
func checkNarOffsets(t *testing.T, l *nar.Listing, narFile io.ReaderAt, root string) {
	t.Helper()
	files := 0
	var walk func(p string, n *nar.Node)
	walk = func(p string, n *nar.Node) {
		switch n.Type {
		case nar.TypeDirectory:
			for _, e := range n.Entries {
				walk(p+"/"+e.Name, e.Node)
			}
		case nar.TypeRegular:
			files++
			want, err := os.ReadFile(filepath.Join(root, p))
			if err != nil {
				t.Fatal(err)
			}
			got := make([]byte, n.Size)
			if _, err := narFile.ReadAt(got, n.NarOffset); err != nil && !(err == io.EOF && n.Size == 0) {
				t.Fatalf("%s: reading %d bytes at narOffset %d: %v", p, n.Size, n.NarOffset, err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s: bytes at narOffset %d are not the file's contents", p, n.NarOffset)
			}
			if l.Lookup(p) != n {
				t.Errorf("Lookup(%q) did not find the node", p)
			}
		}
	}
	walk("", l.Root)
	if files < 10 {
		t.Fatalf("only %d files checked", files)
	}
}

// TestListingSingleNodes checks roots that are not directories, against
// .ls files Nix 2.8 wrote (captured from nix copy --to file://...).
func TestListingSingleNodes(t *testing.T) {
	for _, tc := range []struct {
		name string
		tr   tree
		want string
	}{
		{"file", tree{{path: "x", kind: 'f', data: "abc"}},
			`{"version":1,"root":{"type":"regular","size":3,"narOffset":96}}`},
		{"empty-exec", tree{{path: "x", kind: 'f', mode: 0o755}},
			`{"version":1,"root":{"type":"regular","size":0,"executable":true,"narOffset":128}}`},
		{"symlink", tree{{path: "x", kind: 'l', data: `tgt"x`}},
			`{"version":1,"root":{"type":"symlink","target":"tgt\"x"}}`},
		{"escapes", tree{{path: "x", kind: 'd'}, {path: "x/a\x1b\x08\x0c\x1f\r\xff\xfeb", kind: 'f', data: "z"}, {path: "x/l", kind: 'l', data: "x\x1b\xff/\x7f"}},
			"{\"version\":1,\"root\":{\"type\":\"directory\",\"entries\":{\"a\\u001b\\u0008\\u000c\\u001f\\r\xff\xfeb\":{\"type\":\"regular\",\"size\":1,\"narOffset\":240},\"l\":{\"type\":\"symlink\",\"target\":\"x\\u001b\xff/\x7f\"}}}}"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			tc.tr.build(t, dir)
			var buf bytes.Buffer
			if _, err := nar.DumpPath(&buf, filepath.Join(dir, "x")); err != nil {
				t.Fatal(err)
			}
			l, err := nar.ListingFromReader(&buf)
			if err != nil {
				t.Fatal(err)
			}
			got, err := l.MarshalJSON()
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Fatalf("got  %q\nwant %q", got, tc.want)
			}
		})
	}
}

// decodeHash accepts the forms Nix prints: SRI, sha256:<nix32|base16|base64>.
func decodeHash(t *testing.T, s string) []byte {
	t.Helper()
	var enc string
	switch {
	case strings.HasPrefix(s, "sha256-"):
		enc = s[len("sha256-"):]
	case strings.HasPrefix(s, "sha256:"):
		enc = s[len("sha256:"):]
	default:
		t.Fatalf("hash %q: unknown form", s)
	}
	var b []byte
	var err error
	switch len(enc) {
	case 52:
		b, err = nixbase32.DecodeString(enc)
	case 64:
		b, err = hex.DecodeString(enc)
	default:
		b, err = base64.StdEncoding.DecodeString(enc)
	}
	if err != nil || len(b) != sha256.Size {
		t.Fatalf("hash %q: %v", s, err)
	}
	return b
}

func field(doc, key string) string {
	for _, line := range strings.Split(doc, "\n") {
		if v, ok := strings.CutPrefix(line, key+": "); ok {
			return v
		}
	}
	return ""
}

func snippet(b []byte, i int) []byte {
	lo, hi := max(i-40, 0), min(i+40, len(b))
	return b[lo:hi]
}

// makeWritable lets t.TempDir's cleanup remove a store, whose paths Nix
// makes read-only.
func makeWritable(root string) {
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.IsDir() {
			os.Chmod(p, 0o755)
		}
		return nil
	})
}
