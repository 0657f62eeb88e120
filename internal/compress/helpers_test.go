package compress_test

import (
	"bytes"
	"math/rand"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// testData returns n deterministic bytes that look like a NAR's mix:
// runs of text (compressible) and of random bytes (incompressible).
func testData(n int, seed int64) []byte {
	rng := rand.New(rand.NewSource(seed))
	words := []string{"nix-archive-1", "(", ")", "type", "regular", "contents", "directory", "entry", "name", "node",
		"func main() {\n", "return nil\n", "#!/bin/sh\n", "export PATH=/nix/store/", "lib", ".so", "\n\t"}
	var b bytes.Buffer
	for b.Len() < n {
		if rng.Intn(4) == 0 {
			chunk := make([]byte, 1+rng.Intn(4096))
			rng.Read(chunk)
			b.Write(chunk)
			continue
		}
		for i := rng.Intn(512); i >= 0; i-- {
			b.WriteString(words[rng.Intn(len(words))])
			b.WriteByte(' ')
		}
	}
	return b.Bytes()[:n]
}

func unzstd(t testing.TB, b []byte) []byte {
	t.Helper()
	d, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	out, err := d.DecodeAll(b, nil)
	if err != nil {
		t.Fatalf("decode zstd: %v", err)
	}
	return out
}
