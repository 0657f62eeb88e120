package nar_test

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	gonix "github.com/nix-community/go-nix/pkg/nar"

	"github.com/bos55/concordia/pkg/nar"
)

// Run side by side with
//
//	go test -run '^$' -bench 'Goroot|ManyFiles' -count 5 ./pkg/nar
//
// The NixStoreDump benchmarks time the real `nix-store --dump` writing to
// /dev/null (process start included, a few ms), the reference the dump is
// held to; GoNixDump is the go-nix implementation this package replaces.

var (
	manyOnce sync.Once
	manyDir  string
	manyErr  error
)

// manyFiles is a tree of 150,000 small files in 1,000 directories, ten
// times the file count of the Go toolchain, built once per test binary.
func manyFiles(b *testing.B) string {
	manyOnce.Do(func() {
		manyDir, manyErr = os.MkdirTemp("", "nar-bench-many-")
		if manyErr != nil {
			return
		}
		data := make([]byte, 100)
		for d := 0; d < 1000 && manyErr == nil; d++ {
			dir := filepath.Join(manyDir, fmt.Sprintf("d%03d", d))
			if manyErr = os.Mkdir(dir, 0o755); manyErr != nil {
				return
			}
			for f := 0; f < 150; f++ {
				if manyErr = os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%03d", f)), data, 0o644); manyErr != nil {
					return
				}
			}
		}
	})
	if manyErr != nil {
		b.Fatal(manyErr)
	}
	return manyDir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if manyDir != "" {
		os.RemoveAll(manyDir)
	}
	os.Exit(code)
}

func narSize(b *testing.B, p string) int64 {
	n, err := nar.DumpPath(io.Discard, p)
	if err != nil {
		b.Fatal(err)
	}
	return n
}

func benchDump(b *testing.B, p string) {
	b.SetBytes(narSize(b, p))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := nar.DumpPath(io.Discard, p); err != nil {
			b.Fatal(err)
		}
	}
}

// benchDumpDevNull writes to /dev/null as nix-store --dump > /dev/null
// does, so the comparison pays the same write syscalls.
func benchDumpDevNull(b *testing.B, p string) {
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer null.Close()
	b.SetBytes(narSize(b, p))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := nar.DumpPath(null, p); err != nil {
			b.Fatal(err)
		}
	}
}

func benchNixStoreDump(b *testing.B, p string) {
	if _, err := exec.LookPath("nix-store"); err != nil {
		b.Skip("nix-store not installed")
	}
	b.SetBytes(narSize(b, p))
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer null.Close()
	home := b.TempDir()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		cmd := exec.Command("nix-store", "--dump", p)
		cmd.Env = append(os.Environ(), "HOME="+home, "XDG_CACHE_HOME="+home)
		cmd.Stdout = null
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			b.Fatalf("nix-store --dump: %v\n%s", err, stderr.String())
		}
	}
}

func benchGoNixDump(b *testing.B, p string) {
	b.SetBytes(narSize(b, p))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := gonix.DumpPath(io.Discard, p); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDumpGoroot(b *testing.B)         { benchDump(b, goroot(b)) }
func BenchmarkDumpGorootDevNull(b *testing.B)  { benchDumpDevNull(b, goroot(b)) }
func BenchmarkNixStoreDumpGoroot(b *testing.B) { benchNixStoreDump(b, goroot(b)) }
func BenchmarkGoNixDumpGoroot(b *testing.B)    { benchGoNixDump(b, goroot(b)) }

func BenchmarkDumpManyFiles(b *testing.B)         { benchDump(b, manyFiles(b)) }
func BenchmarkNixStoreDumpManyFiles(b *testing.B) { benchNixStoreDump(b, manyFiles(b)) }

// BenchmarkValidateGoroot reads the Go toolchain's NAR from memory, as the
// upload path checks an incoming NAR.
func BenchmarkValidateGoroot(b *testing.B) {
	var buf bytes.Buffer
	if _, err := nar.DumpPath(&buf, goroot(b)); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(buf.Len()))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := nar.Validate(bytes.NewReader(buf.Bytes())); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkListingGoroot builds the .ls listing of the Go toolchain's NAR.
func BenchmarkListingGoroot(b *testing.B) {
	var buf bytes.Buffer
	if _, err := nar.DumpPath(&buf, goroot(b)); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(buf.Len()))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		l, err := nar.ListingFromReader(bytes.NewReader(buf.Bytes()))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := l.MarshalJSON(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReaderGoroot reads the Go toolchain's NAR through Reader with
// the default options, every header with its Path and every file's
// contents, as a consumer of the package would.
func BenchmarkReaderGoroot(b *testing.B) {
	var buf bytes.Buffer
	if _, err := nar.DumpPath(&buf, goroot(b)); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(buf.Len()))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		nr := nar.NewReader(bytes.NewReader(buf.Bytes()))
		for {
			h, err := nr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
			if h.Type == nar.TypeRegular {
				if _, err := io.Copy(io.Discard, nr); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
}
