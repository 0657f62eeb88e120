package main

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/bos55/concordia/pkg/nar"
	"github.com/bos55/concordia/pkg/narinfo"
)

// TestServeUploadSurvivesSIGKILL: the real `cache serve` binary is killed
// with SIGKILL in the middle of a NAR upload; after a restart nothing
// partial is served (HEAD says 404, no temp file is left) and the
// client's retry succeeds.
func TestServeUploadSurvivesSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	dir := t.TempDir()
	cfg, tok := writeCacheConfig(t, dir, "")
	upDir := filepath.Join(dir, "upload")

	p := startServe(t, "--config", cfg)

	// A 4 MiB incompressible NAR, so the upload is in flight for a while.
	up := newRandomUpload(4<<20, "e2e-crash")
	file, name, base, ni := up.file, up.name, up.base, up.ni

	addr := strings.TrimPrefix(strings.TrimSuffix(p.url, "/"), "http://")
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "PUT /nar/%s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n",
		name, addr, tok, len(file))
	conn.Write(file[:len(file)/2])
	blobs := filepath.Join(upDir, "blobs")
	temps := func() (n int, size int64) {
		ents, _ := os.ReadDir(blobs)
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), ".tmp-") {
				n++
				if fi, err := e.Info(); err == nil {
					size += fi.Size()
				}
			}
		}
		return n, size
	}
	for deadline := time.Now().Add(20 * time.Second); ; {
		if n, size := temps(); n == 1 && size > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the upload never reached the disk")
		}
		time.Sleep(10 * time.Millisecond)
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited

	p = startServe(t, "--config", cfg)
	if n, _ := temps(); n != 0 {
		t.Fatalf("%d temp files after restart", n)
	}
	do := func(method, path string, body []byte) (int, []byte) {
		req, _ := http.NewRequest(method, strings.TrimSuffix(p.url, "/")+path, bytes.NewReader(body))
		req.SetBasicAuth("ci", tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	if code, _ := do("HEAD", "/nar/"+name, nil); code != 404 {
		t.Fatalf("HEAD of the interrupted NAR: %d", code)
	}
	if code, msg := do("PUT", "/nar/"+name, file); code != 200 {
		t.Fatalf("retry: %d %s", code, msg)
	}
	if code, msg := do("PUT", "/"+base[:32]+".narinfo", []byte(ni.String())); code != 200 {
		t.Fatalf("narinfo: %d %s", code, msg)
	}
	code, body := do("GET", "/"+base[:32]+".narinfo", nil)
	if code != 200 || !strings.Contains(string(body), "StorePath: "+ni.StorePath) {
		t.Fatalf("narinfo after retry: %d %s", code, body)
	}
	if code, got := do("GET", "/nar/"+name, nil); code != 200 || !bytes.Equal(got, file) {
		t.Fatalf("NAR after retry: %d", code)
	}
}

// randomUpload is an upload of one path whose NAR is a single file of n
// random (incompressible) bytes, zstd-compressed as nix copy sends it:
// the file, its name, and the narinfo that claims it.
type randomUpload struct {
	file []byte
	name string // <filehash>.nar.zst
	base string // <hash>-<tag>
	ni   *narinfo.NarInfo
}

func newRandomUpload(n int, tag string) *randomUpload {
	random := make([]byte, n)
	rand.Read(random)
	var buf bytes.Buffer
	w := nar.NewWriter(&buf)
	w.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeRegular, Size: int64(len(random))})
	w.Write(random)
	w.Close()
	enc, _ := zstd.NewWriter(nil)
	file := enc.EncodeAll(buf.Bytes(), nil)
	fh, nh := sha256.Sum256(file), sha256.Sum256(buf.Bytes())
	name := nixbase32.EncodeToString(fh[:]) + ".nar.zst"
	hs := sha256.Sum256([]byte(tag))
	base := nixbase32.EncodeToString(hs[:20]) + "-" + tag
	fhash := narinfo.SHA256(fh[:])
	ni := &narinfo.NarInfo{StorePath: "/nix/store/" + base, URL: "nar/" + name, Compression: "zstd",
		FileHash: &fhash, FileSize: uint64(len(file)), NarHash: narinfo.SHA256(nh[:]), NarSize: uint64(buf.Len())}
	return &randomUpload{file: file, name: name, base: base, ni: ni}
}
