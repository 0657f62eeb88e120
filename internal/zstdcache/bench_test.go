package zstdcache_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/nartest"

	"github.com/bos55/concordia/internal/zstdcache"
)

func TestMain(m *testing.M) {
	code := m.Run()
	nartest.RemoveBenchNAR()
	os.Exit(code)
}

func benchInput(b *testing.B) (string, []byte) { return nartest.BenchNAR(b) }

// BenchmarkCacheCold is a miss end to end: produce, compress, write,
// fsync, rename, while the first reader streams the result.
func BenchmarkCacheCold(b *testing.B) {
	_, data := benchInput(b)
	c, err := zstdcache.Open(b.TempDir(), 8<<30, 0, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	p := &producer{data: data, chunk: 1 << 20}
	b.SetBytes(int64(len(data)))
	i := 0
	for b.Loop() {
		i++
		e, err := c.Get(context.Background(), fmt.Sprintf("cold%d", i), p.produce)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, e); err != nil {
			b.Fatal(err)
		}
		e.Close()
	}
}

// BenchmarkCacheHit serves a warm blob over HTTP with http.ServeContent,
// next to the same file served directly (the file-speed reference).
// MB/s are of compressed bytes.
func BenchmarkCacheHit(b *testing.B) {
	_, data := benchInput(b)
	dir := b.TempDir()
	c, err := zstdcache.Open(dir, 8<<30, 0, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	p := &producer{data: data, chunk: 1 << 20}
	e, err := c.Get(context.Background(), "warm", p.produce)
	if err != nil {
		b.Fatal(err)
	}
	size, _ := io.Copy(io.Discard, e)
	e.Close()
	blob := filepath.Join(dir, "warm.zst")

	handlers := map[string]http.HandlerFunc{
		"cache": func(w http.ResponseWriter, r *http.Request) {
			e, err := c.Get(r.Context(), "warm", p.produce)
			if err != nil {
				http.Error(w, err.Error(), 500)
				return
			}
			defer e.Close()
			w.Header().Set("Content-Type", "application/x-nix-nar")
			http.ServeContent(w, r, "", time.Time{}, e)
		},
		"file": func(w http.ResponseWriter, r *http.Request) {
			f, err := os.Open(blob)
			if err != nil {
				http.Error(w, err.Error(), 500)
				return
			}
			defer f.Close()
			w.Header().Set("Content-Type", "application/x-nix-nar")
			http.ServeContent(w, r, "", time.Time{}, f)
		},
	}
	for _, name := range []string{"file", "cache"} {
		b.Run("http/"+name, func(b *testing.B) {
			srv := httptest.NewServer(handlers[name])
			defer srv.Close()
			buf := make([]byte, 1<<20)
			b.SetBytes(size)
			for b.Loop() {
				resp, err := http.Get(srv.URL)
				if err != nil {
					b.Fatal(err)
				}
				n, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, struct{ io.Reader }{resp.Body}, buf)
				resp.Body.Close()
				if err != nil || n != size {
					b.Fatalf("got %d of %d bytes: %v", n, size, err)
				}
			}
		})
	}
	b.Run("direct", func(b *testing.B) {
		buf := make([]byte, 1<<20)
		b.SetBytes(size)
		for b.Loop() {
			e, err := c.Get(context.Background(), "warm", p.produce)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, struct{ io.Reader }{e}, buf); err != nil {
				b.Fatal(err)
			}
			e.Close()
		}
	})
}
