package upload_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/store/upload"
)

// sizeBenchPaths is how many paths the web pages' benchmarks index: a
// busy CI cache's few days of uploads.
const sizeBenchPaths = 5000

// sizeBenchStore is an upload store of sizeBenchPaths paths, each
// referring to the one before, and a path in the middle.
func sizeBenchStore(b *testing.B) (*upload.Store, string) {
	b.Helper()
	ctx := context.Background()
	s := openStore(b, benchDir(b), upload.Options{})
	paths := make([]*fakePath, sizeBenchPaths)
	for i := range paths {
		var refs []string
		if i > 0 {
			refs = []string{paths[i-1].base}
		}
		paths[i] = newPath(b, fmt.Sprintf("size-%d", i), []byte(fmt.Sprint("contents ", i)), refs...)
	}
	// In dependency order, eight at a time within a level: each path
	// waits for its reference (the index refuses a narinfo whose
	// references are missing).
	done := make([]chan struct{}, len(paths))
	for i := range done {
		done[i] = make(chan struct{})
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i, p := range paths {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i > 0 {
				<-done[i-1]
			}
			sem <- struct{}{}
			defer func() { <-sem }()
			if err := p.upload(ctx, s); err != nil {
				b.Error(err)
			}
			close(done[i])
		}()
	}
	wg.Wait()
	return s, "/nix/store/" + paths[len(paths)/2].base
}

// BenchmarkStats is the reference: the scan GC and the metrics already
// make of the index.
func BenchmarkStats(b *testing.B) {
	s, _ := sizeBenchStore(b)
	ctx := context.Background()
	b.ResetTimer()
	for range b.N {
		if _, err := s.Stats(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSize is the landing page's count (kept for 10 s by the page).
func BenchmarkSize(b *testing.B) {
	s, _ := sizeBenchStore(b)
	ctx := context.Background()
	since := time.Now().Add(-24 * time.Hour)
	b.ResetTimer()
	for range b.N {
		if sz, err := s.Size(ctx, since); err != nil || sz.Paths != sizeBenchPaths {
			b.Fatal(sz, err)
		}
	}
}

// BenchmarkReferrers is a search page's referrers, one scan of every
// narinfo (no reverse index is kept).
func BenchmarkReferrers(b *testing.B) {
	s, mid := sizeBenchStore(b)
	ctx := context.Background()
	b.ResetTimer()
	for range b.N {
		if refs, _, err := s.Referrers(ctx, mid, 50); err != nil || len(refs) != 1 {
			b.Fatal(refs, err)
		}
	}
}
