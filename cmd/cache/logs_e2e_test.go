package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/bos55/concordia/internal/nartest"
)

// dirSize is the bytes of the files below dir.
func dirSize(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

// indexWritten is the bytes of the upload store's index on disk: of
// index.db, bbolt's file, the blocks written (bbolt grows it ahead of its
// data, sparse); of index/, pebble's, the files' sizes (it preallocates
// its log past them, keeping their size).
func indexWritten(t *testing.T, upDir string) int64 {
	t.Helper()
	fi, err := os.Stat(filepath.Join(upDir, "index.db"))
	if errors.Is(err, fs.ErrNotExist) {
		if _, err := os.Stat(filepath.Join(upDir, "index")); err != nil {
			t.Fatal(err)
		}
		return dirSize(t, filepath.Join(upDir, "index"))
	}
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Blocks * 512
}

// buildLogText is a build log of about n bytes: compiler lines with
// counters and words, compressible like a real one.
func buildLogText(n int) []byte {
	r := rand.New(rand.NewPCG(5, 6))
	words := []string{"gcc", "-O2", "-fPIC", "-Wall", "src/", "lib", "main", "util", "parse", ".c", ".o", "-I", "include", "CC", "LD", "warning:", "unused", "variable"}
	var b bytes.Buffer
	for i := 0; b.Len() < n; i++ {
		fmt.Fprintf(&b, "[%6d/%d] ", i, n/60)
		for range 3 + r.IntN(8) {
			b.WriteString(words[r.IntN(len(words))])
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%x\n", r.Uint64())
	}
	return b.Bytes()[:n]
}

// idleReader opens a GET of path and never reads the answer.
func idleReader(t *testing.T, addr, path, acceptEncoding string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	req := "GET " + path + " HTTP/1.1\r\nHost: " + addr + "\r\nConnection: close\r\n"
	if acceptEncoding != "" {
		req += "Accept-Encoding: " + acceptEncoding + "\r\n"
	}
	if _, err := io.WriteString(c, req+"\r\n"); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestServeSurvivesLogBombs runs `cache serve` (max_log_size = 32M,
// write_progress = 3s) and plays a write token uploading five build logs
// of 64 MiB of zeros, each a ~2 KB zstd body sent with Content-Encoding:
// every one is refused 413 naming limits.max_log_size while it streams,
// nothing is stored, the upload dir and the index stay small, and another
// client is served throughout. A 10 MiB log then uploads and reads back
// byte-exact, plain and as zstd. Twenty clients that open its GET (plain:
// the server decodes for them) and twenty more (zstd: the file as it is)
// and never read cost the server little memory, measured on the process's
// VmRSS/VmHWM, and are dropped by the progress deadline.
func TestServeSurvivesLogBombs(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	dir := t.TempDir()
	cfg, tok := writeCacheConfig(t, dir, "[limits]\nmax_log_size = \"32M\"\n[timeouts]\nwrite_progress = \"3s\"\n")
	p := startServe(t, "--config", cfg)
	pid := p.cmd.Process.Pid
	c := &cacheClient{t: t, url: strings.TrimSuffix(p.url, "/"), user: "ci", tok: tok}
	anon := &cacheClient{t: t, url: c.url}
	addr := strings.TrimPrefix(c.url, "http://")
	upDir := filepath.Join(dir, "upload")

	legit := newHostile(t, "log-legit", bytes.NewReader(nartest.File([]byte("stays served\n"))), zstdOf(t, bytes.NewReader(nartest.File([]byte("stays served\n")))), "zstd", ".nar.zst")
	if code, msg := c.upload(legit); code != 200 {
		t.Fatalf("legit upload: %d %s", code, msg)
	}
	by := startBystander(c.url, "/nix-cache-info", "/"+legit.hash()+".narinfo", "/"+legit.info.URL)

	bomb := zstdOf(t, nartest.Zeros(64<<20))
	for i := range 5 {
		drv := fmt.Sprintf("%s-bomb-%d.drv", legit.hash(), i)
		resetPeak(pid)
		start := time.Now()
		code, msg := c.do("PUT", "/log/"+drv, bomb, "Content-Encoding", "zstd")
		st := procStatus(t, pid)
		t.Logf("log bomb %d (%d bytes of zstd, 64 MiB of zeros): %d in %v, server RSS peak %d MiB: %.200s", i, len(bomb), code, time.Since(start), st["VmHWM"]>>20, msg)
		if code != 413 || !strings.Contains(string(msg), "limits.max_log_size") || strings.Contains(string(msg), dir) {
			t.Fatalf("log bomb %d: %d %q, want 413 naming limits.max_log_size", i, code, msg)
		}
		if code, _ := anon.do("GET", "/log/"+drv, nil); code != 404 {
			t.Fatalf("log bomb %d is served: %d", i, code)
		}
	}
	idx := indexWritten(t, upDir)
	logs, _ := os.ReadDir(filepath.Join(upDir, "logs"))
	t.Logf("after the bombs: index %d KiB, upload dir %d KiB, %d log files", idx>>10, dirSize(t, upDir)>>10, len(logs))
	if idx > 4<<20 || dirSize(t, upDir) > 8<<20 || len(logs) != 0 {
		t.Fatalf("the bombs left %d bytes of index, %d in the upload dir, log files %v", idx, dirSize(t, upDir), logs)
	}

	// A real 10 MiB log: stored, read back exactly as the client asks.
	text := buildLogText(10 << 20)
	drv := legit.hash() + "-big-build.drv"
	if code, msg := c.do("PUT", "/log/"+drv, text); code != 200 {
		t.Fatalf("10 MiB log: %d %s", code, msg)
	}
	if code, got := anon.do("GET", "/log/"+drv, nil); code != 200 || !bytes.Equal(got, text) {
		t.Fatalf("plain GET of the log: %d, %d bytes, equal %v", code, len(got), bytes.Equal(got, text))
	}
	code, packed := anon.do("GET", "/log/"+drv, nil, "Accept-Encoding", "zstd, gzip")
	dec, _ := zstd.NewReader(bytes.NewReader(packed))
	got, err := io.ReadAll(dec)
	if code != 200 || err != nil || !bytes.Equal(got, text) {
		t.Fatalf("zstd GET of the log: %d %v, %d bytes", code, err, len(got))
	}
	idx = indexWritten(t, upDir)
	t.Logf("10 MiB log stored as %d KiB of zstd; index %d KiB", dirSize(t, filepath.Join(upDir, "logs"))>>10, idx>>10)
	if idx > 4<<20 {
		t.Fatalf("the index is %d bytes with one 10 MiB log", idx)
	}

	// Clients that open the log and never read.
	for _, tc := range []struct{ name, ae string }{{"plain (decoded by the server)", ""}, {"zstd (the file as it is)", "zstd"}} {
		time.Sleep(500 * time.Millisecond)
		before := procStatus(t, pid)
		resetPeak(pid)
		var conns []net.Conn
		for range 20 {
			conns = append(conns, idleReader(t, addr, "/log/"+drv, tc.ae))
		}
		// Let every handler write until its connection's buffers are full.
		var during int64
		for range 10 {
			time.Sleep(100 * time.Millisecond)
			during = max(during, procStatus(t, pid)["VmRSS"])
		}
		st := procStatus(t, pid)
		extra := max(during, st["VmHWM"]) - before["VmRSS"]
		t.Logf("20 idle readers, %s: server VmRSS %d MiB before, %d MiB during (VmHWM %d MiB): %+d KiB", tc.name,
			before["VmRSS"]>>20, during>>20, st["VmHWM"]>>20, extra>>10)
		if extra > 64<<20 {
			t.Errorf("20 idle readers of one log (%s) cost the server %d MiB", tc.name, extra>>20)
		}
		// The write progress deadline (3s) drops them: reading now, each
		// gets what the kernel buffered, not the whole 10 MiB log.
		time.Sleep(5 * time.Second)
		dropped := 0
		readStart := time.Now()
		for _, conn := range conns {
			conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			n, _ := io.Copy(io.Discard, bufio.NewReader(conn))
			if n < int64(len(text))/2 || tc.ae != "" && n < int64(len(packed)) {
				dropped++
			}
			conn.Close()
		}
		t.Logf("%d of 20 idle readers dropped by the progress deadline (read what was left in %v); VmRSS now %d MiB", dropped, time.Since(readStart), procStatus(t, pid)["VmRSS"]>>20)
		if tc.ae == "" && dropped != len(conns) {
			t.Errorf("only %d of %d idle plain readers were dropped", dropped, len(conns))
		}
	}
	by.finish(t)
	if code, got := anon.do("GET", "/"+legit.info.URL, nil); code != 200 || !bytes.Equal(got, legit.file) {
		t.Fatalf("legit NAR after the attack: %d", code)
	}
	if code, got := anon.do("GET", "/log/"+drv, nil); code != 200 || sha256.Sum256(got) != sha256.Sum256(text) {
		t.Fatalf("the log after the idle readers: %d", code)
	}
}
