package server_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	nethttp "net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestNixCopySpeed compares `nix copy --to` Concordia with `nix copy --to
// file://` of the same closure (the same client work, without HTTP or
// server-side verification), median of 3 interleaved runs each. It
// measures, never asserts: set CONCORDIA_BENCH=1 to run it.
func TestNixCopySpeed(t *testing.T) {
	if os.Getenv("CONCORDIA_BENCH") == "" {
		t.Skip("set CONCORDIA_BENCH=1 to measure")
	}
	n := newNixClient(t)
	tagb := make([]byte, 4)
	rand.Read(tagb)
	tag := hex.EncodeToString(tagb)
	// Four paths of ~20 MB, half random, half text, chained by references.
	expr := fmt.Sprintf(`
let
  tag = "%s";
  mk = name: deps: derivation { inherit name; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "/bin/mkdir $out; echo ${toString deps} > $out/deps; /bin/head -c 10000000 /dev/urandom > $out/r; /usr/bin/yes 'text line ${name}' | /bin/head -c 10000000 > $out/t" ]; };
  p1 = mk "speed-1-${tag}" [];
  p2 = mk "speed-2-${tag}" [ p1 ];
  p3 = mk "speed-3-${tag}" [ p2 ];
in mk "speed-4-${tag}" [ p3 p1 ]
`, tag)
	f := filepath.Join(t.TempDir(), "speed.nix")
	os.WriteFile(f, []byte(expr), 0o644)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	out, err := n.run(ctx, "nix-build", "--no-out-link", f)
	if err != nil {
		t.Fatal(err)
	}
	top := strings.TrimSpace(out)

	var http, file, dumb []time.Duration
	for i := range 3 {
		// A dumb HTTP cache: stores PUT bodies in memory, no checks, no
		// disk. What nix copy costs over HTTP with a free server.
		d := newDumbCache(t)
		c0 := newNixClient(t)
		start0 := time.Now()
		if _, err := c0.run(ctx, "nix", "copy", "--to", d+"?compression=zstd", top); err != nil {
			t.Fatal(err)
		}
		dumb = append(dumb, time.Since(start0))

		// Concordia: a fresh store and client cache each run.
		dir := t.TempDir()
		if d := os.Getenv("BENCH_DIR"); d != "" {
			dir, _ = os.MkdirTemp(d, "up")
			defer os.RemoveAll(dir)
		}
		e := newUpEnv(t, dir, false)
		netrc := writeNetrc(t, "ci", e.writeTok)
		c := newNixClient(t)
		start, srv0 := time.Now(), selfCPU()
		if _, err := c.run(ctx, "nix", "copy", "--option", "netrc-file", netrc, "--to", e.url+"?compression=zstd", top); err != nil {
			t.Fatal(err)
		}
		http = append(http, time.Since(start))
		srvCPU, cliCPU := selfCPU()-srv0, c.cpu
		e.up.Close()

		c = newNixClient(t)
		dst := t.TempDir()
		start = time.Now()
		if _, err := c.run(ctx, "nix", "copy", "--to", "file://"+dst+"?compression=zstd", top); err != nil {
			t.Fatal(err)
		}
		file = append(file, time.Since(start))
		t.Logf("run %d: concordia %v (CPU: client %v + server %v), file:// %v (CPU %v), dumb HTTP %v",
			i, http[i], cliCPU, srvCPU, file[i], c.cpu, dumb[i])
	}
	slices.Sort(http)
	slices.Sort(file)
	slices.Sort(dumb)
	t.Logf("median: concordia %v, file:// %v, dumb HTTP %v; concordia/file %.2f, dumb/file %.2f, concordia/dumb %.2f",
		http[1], file[1], dumb[1], http[1].Seconds()/file[1].Seconds(), dumb[1].Seconds()/file[1].Seconds(),
		http[1].Seconds()/dumb[1].Seconds())
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// newDumbCache serves a minimal writable binary cache from memory.
func newDumbCache(t *testing.T) string {
	var mu sync.Mutex
	files := map[string][]byte{"/nix-cache-info": []byte("StoreDir: /nix/store\n")}
	hs := httptest.NewServer(nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		if r.Method == nethttp.MethodPut {
			b, _ := io.ReadAll(r.Body)
			mu.Lock()
			files[r.URL.Path] = b
			mu.Unlock()
			return
		}
		mu.Lock()
		b, ok := files[r.URL.Path]
		mu.Unlock()
		if !ok {
			nethttp.NotFound(w, r)
			return
		}
		w.Write(b)
	}))
	t.Cleanup(hs.Close)
	return hs.URL
}
