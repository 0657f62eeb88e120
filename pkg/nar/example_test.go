package nar_test

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/bos55/concordia/pkg/nar"
)

// Serialise a tree, hash it as Nix would for NarHash, and list it.
func Example() {
	dir, _ := os.MkdirTemp("", "nar-example-")
	defer os.RemoveAll(dir)
	os.WriteFile(filepath.Join(dir, "hello"), []byte("hello\n"), 0o755)
	os.Symlink("hello", filepath.Join(dir, "link"))

	var buf bytes.Buffer
	h := nar.NewHasher()
	if _, err := nar.DumpPath(io.MultiWriter(&buf, h), dir); err != nil {
		panic(err)
	}
	digest, size := h.Sum()
	fmt.Println(hex.EncodeToString(digest)[:16], size) // as nix-store --dump | sha256sum, wc -c

	nr := nar.NewReader(bytes.NewReader(buf.Bytes()))
	for {
		hdr, err := nr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			panic(err)
		}
		fmt.Printf("%s %s size=%d exec=%v target=%q\n", hdr.Path, hdr.Type, hdr.Size, hdr.Executable, hdr.LinkTarget)
	}

	l, _ := nar.ListingFromReader(bytes.NewReader(buf.Bytes()))
	js, _ := l.MarshalJSON()
	fmt.Println(string(js))
	// Output:
	// b3d77d9b50e68253 512
	// / directory size=0 exec=false target=""
	// /hello regular size=6 exec=true target=""
	// /link symlink size=0 exec=false target="hello"
	// {"version":1,"root":{"type":"directory","entries":{"hello":{"type":"regular","size":6,"executable":true,"narOffset":264},"link":{"type":"symlink","target":"hello"}}}}
}
