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

// TestAgainstNixStore adds a varied tree to a private Nix store and copies
// it to a file:// binary cache with write-nar-listing=1, then checks that
// Hasher gives the NarHash/NarSize Nix registered, that the cache's NAR is
// our dump, and that our listing is byte-identical to Nix's .ls file.
func TestAgainstNixStore(t *testing.T) {
	needNix(t)
	tmp := t.TempDir()
	src := filepath.Join(tmp, "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	variedTree().build(t, src)
	store := filepath.Join(tmp, "store")
	cache := filepath.Join(tmp, "cache")
	t.Cleanup(func() { makeWritable(store) })

	storePath := strings.TrimSpace(string(nixOutput(t, "nix-store", "--store", store, "--add", src)))
	nixOutput(t, "nix", "--extra-experimental-features", "nix-command", "copy", "--store", store,
		"--to", "file://"+cache+"?write-nar-listing=1&compression=none", storePath)
	info := nixOutput(t, "nix", "--extra-experimental-features", "nix-command", "path-info", "--store", store, "--json", storePath)

	var ours bytes.Buffer
	h := nar.NewHasher()
	if _, err := nar.DumpPath(io.MultiWriter(&ours, h), src); err != nil {
		t.Fatal(err)
	}

	t.Run("hash", func(t *testing.T) {
		var infos []struct {
			NarHash string `json:"narHash"`
			NarSize uint64 `json:"narSize"`
		}
		if err := json.Unmarshal(info, &infos); err != nil || len(infos) != 1 {
			t.Fatalf("path-info: %v: %s", err, info)
		}
		digest, size := h.Sum()
		want := decodeHash(t, infos[0].NarHash)
		if !bytes.Equal(digest, want) || size != infos[0].NarSize {
			t.Fatalf("Hasher: %x, %d bytes; nix registered %x (%s), %d", digest, size, want, infos[0].NarHash, infos[0].NarSize)
		}
	})

	hashPart := filepath.Base(storePath)[:32]
	t.Run("nar", func(t *testing.T) {
		narinfo, err := os.ReadFile(filepath.Join(cache, hashPart+".narinfo"))
		if err != nil {
			t.Fatal(err)
		}
		url := field(string(narinfo), "URL")
		theirs, err := os.ReadFile(filepath.Join(cache, url))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(theirs, ours.Bytes()) {
			t.Fatal("NAR in the binary cache differs from DumpPath")
		}
	})

	t.Run("listing", func(t *testing.T) {
		want, err := os.ReadFile(filepath.Join(cache, hashPart+".ls"))
		if err != nil {
			t.Fatal(err)
		}
		l, err := nar.ListingFromReader(bytes.NewReader(ours.Bytes()))
		if err != nil {
			t.Fatal(err)
		}
		got, err := l.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			i := firstDiff(got, want)
			t.Fatalf("listing differs at byte %d:\n got %q\nwant %q", i, snippet(got, i), snippet(want, i))
		}
		checkNarOffsets(t, l, ours.Bytes(), src)
	})
}

// checkNarOffsets reads each regular file's contents at its narOffset in the
// NAR and compares them with the file on disk.
func checkNarOffsets(t *testing.T, l *nar.Listing, narBytes []byte, root string) {
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
			if n.NarOffset <= 0 || n.NarOffset+n.Size > int64(len(narBytes)) {
				t.Fatalf("%s: narOffset %d size %d outside the NAR", p, n.NarOffset, n.Size)
			}
			if got := narBytes[n.NarOffset : n.NarOffset+n.Size]; !bytes.Equal(got, want) {
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
