package nartest

import (
	"bytes"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

// Mixed returns n deterministic bytes that look like a NAR's mix: runs
// of text (compressible) and of random bytes (incompressible).
func Mixed(n int, seed int64) []byte {
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

var benchNAR struct {
	once sync.Once
	dir  string
	path string
	data []byte
	err  error
}

// BenchNAR returns a realistic NAR for benchmarks, made once per test
// binary: $CONCORDIA_BENCH_NAR if set, else `nix-store --dump $(go env
// GOROOT)` (Go sources, binaries, test data: a few hundred MiB of mixed
// text and machine code), else 128 MiB of Mixed. A TestMain calls
// RemoveBenchNAR after the run.
func BenchNAR(tb testing.TB) (path string, data []byte) {
	benchNAR.once.Do(func() {
		if p := os.Getenv("CONCORDIA_BENCH_NAR"); p != "" {
			benchNAR.path = p
			benchNAR.data, benchNAR.err = os.ReadFile(p)
			return
		}
		benchNAR.dir, benchNAR.err = os.MkdirTemp("", "concordia-bench-nar-")
		if benchNAR.err != nil {
			return
		}
		benchNAR.path = filepath.Join(benchNAR.dir, "goroot.nar")
		if _, err := exec.LookPath("nix-store"); err == nil {
			f, err := os.Create(benchNAR.path)
			if err != nil {
				benchNAR.err = err
				return
			}
			cmd := exec.Command("nix-store", "--dump", runtime.GOROOT())
			cmd.Env = append(os.Environ(), "HOME="+benchNAR.dir, "XDG_CACHE_HOME="+benchNAR.dir)
			cmd.Stdout = f
			err = cmd.Run()
			f.Close()
			if err == nil {
				benchNAR.data, benchNAR.err = os.ReadFile(benchNAR.path)
				return
			}
		}
		benchNAR.data = Mixed(128<<20, 1)
		benchNAR.err = os.WriteFile(benchNAR.path, benchNAR.data, 0o600)
	})
	if benchNAR.err != nil {
		tb.Fatal(benchNAR.err)
	}
	return benchNAR.path, benchNAR.data
}

// RemoveBenchNAR removes the file BenchNAR made, if it made one.
func RemoveBenchNAR() {
	if benchNAR.dir != "" {
		os.RemoveAll(benchNAR.dir)
	}
}
