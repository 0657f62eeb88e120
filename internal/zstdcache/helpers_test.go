package zstdcache_test

import (
	"bytes"
	"context"
	"io"
	"math/rand"
	"sync/atomic"
	"testing"
	"time"

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

// incompressible returns n random bytes: their zstd size is n plus a few
// bytes of framing, which makes eviction arithmetic predictable.
func incompressible(n int, seed int64) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

// producer writes data in chunks, pausing between them so concurrent
// readers really overlap with the production, and counts its calls.
type producer struct {
	data  []byte
	chunk int
	pause time.Duration
	calls atomic.Int32
}

func (p *producer) produce(ctx context.Context, w io.Writer) error {
	p.calls.Add(1)
	chunk := p.chunk
	if chunk == 0 {
		chunk = 64 << 10
	}
	for off := 0; off < len(p.data); off += chunk {
		if err := ctx.Err(); err != nil {
			return err
		}
		if _, err := w.Write(p.data[off:min(off+chunk, len(p.data))]); err != nil {
			return err
		}
		if p.pause > 0 {
			time.Sleep(p.pause)
		}
	}
	return nil
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
