package upload_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/bos55/concordia/internal/store/upload"
	"github.com/bos55/concordia/pkg/nar"
)

// benchNAR is a ~100 MB NAR of many files, half random (incompressible)
// and half text, compressed with zstd: what a closure's biggest paths
// look like.
func benchNAR(b *testing.B) (narBytes, file []byte, name string) {
	b.Helper()
	r := rand.New(rand.NewPCG(1, 2))
	var buf bytes.Buffer
	w := nar.NewWriter(&buf)
	w.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeDirectory})
	chunk := make([]byte, 1<<20)
	text := bytes.Repeat([]byte("some library code with symbols and strings 0123456789\n"), 1<<20/54+1)[:1<<20]
	for i := range 100 {
		data := text
		if i%2 == 0 {
			for j := range chunk {
				chunk[j] = byte(r.Uint32())
			}
			data = chunk
		}
		h := &nar.Header{Path: "/f" + string(rune('a'+i/26)) + string(rune('a'+i%26)), Type: nar.TypeRegular, Size: int64(len(data))}
		if err := w.WriteHeader(h); err != nil {
			b.Fatal(err)
		}
		w.Write(data)
	}
	if err := w.Close(); err != nil {
		b.Fatal(err)
	}
	narBytes = buf.Bytes()
	file = zstdBytes(b, narBytes)
	fh := sha256.Sum256(file)
	return narBytes, file, nixbase32.EncodeToString(fh[:]) + ".nar.zst"
}

// BenchmarkPutNAR measures the whole verified upload path (hash the file,
// zstd-decode, validate and hash the NAR, write, rename, fsync of file and
// directory);
// BenchmarkPutNARBaseline only writes and fsyncs the same bytes, the least
// any durable upload costs. Bytes/s are of the uncompressed NAR.
func BenchmarkPutNAR(b *testing.B) {
	narBytes, file, name := benchNAR(b)
	ctx := context.Background()
	b.SetBytes(int64(len(narBytes)))
	b.ResetTimer()
	var cpu time.Duration
	for range b.N {
		b.StopTimer()
		s, err := upload.Open(ctx, benchDir(b), upload.Options{})
		if err != nil {
			b.Fatal(err)
		}
		runtime.GC() // the fixture's garbage is not the upload's cost
		c0 := cpuTime()
		b.StartTimer()
		if _, err := s.PutNAR(ctx, name, bytes.NewReader(file)); err != nil {
			b.Fatal(err)
		}
		s.WaitDurable(name) // the fsyncs run behind PutNAR; they are part of the cost
		b.StopTimer()
		cpu += cpuTime() - c0
		s.Close()
		b.StartTimer()
	}
	// CPU time is what verification costs, and unlike wall time it
	// holds up on a loaded machine.
	b.ReportMetric(float64(cpu.Microseconds())/1000/float64(b.N)/(float64(len(narBytes))/1e6), "cpu-ms/MB")
}

func BenchmarkPutNARBaseline(b *testing.B) {
	narBytes, file, _ := benchNAR(b)
	b.SetBytes(int64(len(narBytes)))
	b.ResetTimer()
	var cpu time.Duration
	for range b.N {
		f, err := os.Create(filepath.Join(benchDir(b), "blob"))
		if err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		c0 := cpuTime()
		io.Copy(f, bytes.NewReader(file))
		f.Sync()
		cpu += cpuTime() - c0
		f.Close()
	}
	b.ReportMetric(float64(cpu.Microseconds())/1000/float64(b.N)/(float64(len(narBytes))/1e6), "cpu-ms/MB")
}

// cpuTime is the process's user+system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchDir is a temp dir on $BENCH_DIR when set (e.g. /dev/shm, to take
// the disk out and see the CPU cost of verification alone).
func benchDir(b *testing.B) string {
	root := os.Getenv("BENCH_DIR")
	if root == "" {
		return b.TempDir()
	}
	d, err := os.MkdirTemp(root, "bench")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// BenchmarkUploadSmallPath is one path of a typical closure (a few KB):
// the NAR PUT and the narinfo PUT, as nix copy sends them one after the
// other. Small paths are latency-bound (fsyncs, commits), not CPU-bound.
func BenchmarkUploadSmallPath(b *testing.B) {
	s, err := upload.Open(context.Background(), benchDir(b), upload.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	paths := make([]*fakePath, b.N)
	for i := range paths {
		paths[i] = newPath(b, fmt.Sprintf("small-%d-%d", b.N, i), bytes.Repeat([]byte{byte(i)}, 4096+i))
	}
	ctx := context.Background()
	b.ResetTimer()
	for _, p := range paths {
		if err := p.upload(ctx, s); err != nil {
			b.Fatal(err)
		}
	}
}
