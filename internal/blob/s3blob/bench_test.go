package s3blob

import (
	"context"
	"io"
	"testing"

	"github.com/bos55/concordia/internal/blob"
	"github.com/bos55/concordia/internal/blob/diskblob"
	"github.com/bos55/concordia/internal/testminio"
)

// BenchmarkRead64MiB reads a 64 MiB blob from S3 (MinIO on loopback) and
// from disk, for the throughput an S3 store costs.
func BenchmarkRead64MiB(b *testing.B) {
	s := testminio.Shared(b)
	dirs := map[string]func() blob.Dir{
		"s3": func() blob.Dir {
			cfg := config(s, s.Bucket(b))
			cfg.PartSize = DefaultPartSize
			return open(b, cfg)
		},
		"disk": func() blob.Dir {
			d, err := diskblob.Open(b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			return d
		},
	}
	for _, name := range []string{"s3", "disk"} {
		b.Run(name, func(b *testing.B) {
			d := dirs[name]()
			ctx := context.Background()
			w, err := blob.CreateFor(ctx, d, "big")
			if err != nil {
				b.Fatal(err)
			}
			buf := make([]byte, 1<<20)
			for range 64 {
				w.Write(buf)
			}
			if err := w.Publish("big"); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(64 << 20)
			b.ResetTimer()
			for b.Loop() {
				r, err := d.Open(ctx, "big")
				if err != nil {
					b.Fatal(err)
				}
				n, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{r}, buf)
				r.Close()
				if err != nil || n != 64<<20 {
					b.Fatalf("read %d: %v", n, err)
				}
			}
		})
	}
}
