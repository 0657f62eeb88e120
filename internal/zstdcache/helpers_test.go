package zstdcache_test

import (
	"context"
	"io"
	"math/rand"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/nartest"

	"github.com/klauspost/compress/zstd"
)

func testData(n int, seed int64) []byte { return nartest.Mixed(n, seed) }

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
