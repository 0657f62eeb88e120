package compress_test

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sort"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/nartest"

	"github.com/ulikunitz/xz"

	"github.com/bos55/concordia/internal/compress"
)

func TestMain(m *testing.M) {
	code := m.Run()
	nartest.RemoveBenchNAR()
	os.Exit(code)
}

func benchInput(b *testing.B) (string, []byte) { return nartest.BenchNAR(b) }

type countWriter struct{ n int64 }

func (w *countWriter) Write(p []byte) (int, error) { w.n += int64(len(p)); return len(p), nil }

// compressGo is what the server does per stream: read the NAR in 1 MiB
// chunks (here from the page cache, like the CLI) into a pooled encoder at
// the default level.
func compressGo(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var out countWriter
	w, err := compress.NewWriter(&out, 0)
	if err != nil {
		return 0, err
	}
	buf := make([]byte, 1<<20)
	if _, err := io.CopyBuffer(struct{ io.Writer }{w}, struct{ io.Reader }{f}, buf); err != nil {
		return 0, err
	}
	err = w.Close()
	return out.n, err
}

// compressCLI is the reference, `zstd -1 -T1 -c file > /dev/null`; it
// returns the CPU time (user+system) the CLI used.
func compressCLI(path string) (time.Duration, error) {
	cmd := exec.Command("zstd", "-q", "-1", "-T1", "-c", path)
	if err := cmd.Run(); err != nil {
		return 0, err
	}
	return cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime(), nil
}

// selfCPU is the CPU time this process has used so far.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func parallel(n int, f func() error) error {
	errs := make(chan error, n)
	for range n {
		go func() { errs <- f() }()
	}
	var first error
	for range n {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// BenchmarkCompressCold measures cold compression throughput (MB/s of
// uncompressed NAR) for our encoder and for the zstd CLI on the same bytes,
// with one and two concurrent streams. Run with -count 5 so the variants
// interleave and take medians; BenchmarkCompressVsCLI gives the ratio.
func BenchmarkCompressCold(b *testing.B) {
	path, data := benchInput(b)
	haveCLI := exec.Command("zstd", "--version").Run() == nil
	for _, streams := range []int{1, 2} {
		b.Run(fmt.Sprintf("go/streams=%d", streams), func(b *testing.B) {
			b.SetBytes(int64(streams * len(data)))
			var size int64
			for b.Loop() {
				if err := parallel(streams, func() error {
					n, err := compressGo(path)
					size = n
					return err
				}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(size)/float64(len(data)), "ratio")
		})
		b.Run(fmt.Sprintf("zstd-cli/streams=%d", streams), func(b *testing.B) {
			if !haveCLI {
				b.Skip("zstd CLI not installed")
			}
			b.SetBytes(int64(streams * len(data)))
			for b.Loop() {
				if err := parallel(streams, func() error { _, err := compressCLI(path); return err }); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkCompressVsCLI alternates one CLI run and one Go run per
// iteration, so both see the same machine load, and reports medians of
// wall-clock MB/s, CPU MB/s (MB per CPU-second: robust when other work
// shares the cores) and the ratios go/cli (the issue asks for >= 0.9).
// Use -benchtime 5x.
func BenchmarkCompressVsCLI(b *testing.B) {
	if exec.Command("zstd", "--version").Run() != nil {
		b.Skip("zstd CLI not installed")
	}
	path, data := benchInput(b)
	for _, streams := range []int{1, 2} {
		b.Run(fmt.Sprintf("streams=%d", streams), func(b *testing.B) {
			var goMBs, cliMBs, ratios, goCPU, cliCPU, cpuRatios []float64
			mb := float64(streams*len(data)) / 1e6
			i := 0
			for b.Loop() {
				var mu sync.Mutex
				var cli, cliUsed, gd, goUsed time.Duration
				runCLI := func() {
					t := time.Now()
					if err := parallel(streams, func() error {
						d, err := compressCLI(path)
						mu.Lock()
						cliUsed += d
						mu.Unlock()
						return err
					}); err != nil {
						b.Fatal(err)
					}
					cli = time.Since(t)
				}
				runGo := func() {
					t, cpu0 := time.Now(), selfCPU()
					if err := parallel(streams, func() error { _, err := compressGo(path); return err }); err != nil {
						b.Fatal(err)
					}
					gd, goUsed = time.Since(t), selfCPU()-cpu0
				}
				// Alternate who goes first, so neither always runs in
				// the wake of the other.
				if i++; i%2 == 0 {
					runCLI()
					runGo()
				} else {
					runGo()
					runCLI()
				}
				goMBs = append(goMBs, mb/gd.Seconds())
				cliMBs = append(cliMBs, mb/cli.Seconds())
				ratios = append(ratios, cli.Seconds()/gd.Seconds())
				goCPU = append(goCPU, mb/goUsed.Seconds())
				cliCPU = append(cliCPU, mb/cliUsed.Seconds())
				cpuRatios = append(cpuRatios, cliUsed.Seconds()/goUsed.Seconds())
			}
			b.ReportMetric(median(goMBs), "go-MB/s")
			b.ReportMetric(median(cliMBs), "cli-MB/s")
			b.ReportMetric(median(ratios), "go/cli")
			b.ReportMetric(median(goCPU), "go-MB/cpus")
			b.ReportMetric(median(cliCPU), "cli-MB/cpus")
			b.ReportMetric(median(cpuRatios), "go/cli-cpu")
		})
	}
}

func median(v []float64) float64 {
	sort.Float64s(v)
	return v[len(v)/2]
}

// BenchmarkXZDecode compares this package's xz container reader with
// ulikunitz/xz's own, over the same LZMA2 decoder: the container must not
// cost throughput for the dictionary check it adds.
func BenchmarkXZDecode(b *testing.B) {
	data := testData(8<<20, 5)
	var z bytes.Buffer
	w, _ := xz.NewWriter(&z)
	w.Write(data)
	w.Close()
	for _, impl := range []string{"compress", "ulikunitz"} {
		b.Run(impl, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for i := 0; i < b.N; i++ {
				var r io.Reader
				if impl == "compress" {
					d, err := compress.NewReader(bytes.NewReader(z.Bytes()), "xz")
					if err != nil {
						b.Fatal(err)
					}
					r = d
				} else {
					d, err := xz.NewReader(bytes.NewReader(z.Bytes()))
					if err != nil {
						b.Fatal(err)
					}
					r = d
				}
				if n, err := io.Copy(io.Discard, r); err != nil || n != int64(len(data)) {
					b.Fatal(n, err)
				}
			}
		})
	}
}
