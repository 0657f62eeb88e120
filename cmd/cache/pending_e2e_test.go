package main

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/bos55/concordia/pkg/nar"
	"github.com/bos55/concordia/pkg/narinfo"
)

// TestServePendingNARsSurviveSIGKILL: the real `cache serve` binary
// takes every NAR of a closure first, as Nix 2.35 sends them (largest
// first), and is killed with SIGKILL before any narinfo; after a restart
// HEAD still finds each NAR (the client does not send it again) and every
// narinfo, in dependency order, is accepted and served with its NAR.
func TestServePendingNARsSurviveSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	dir := t.TempDir()
	cfg, tok := writeCacheConfig(t, dir, "")

	type path struct {
		name string // of the NAR file
		file []byte
		ni   *narinfo.NarInfo
	}
	enc, _ := zstd.NewWriter(nil)
	mk := func(tag string, size int, refs ...*path) *path {
		contents := make([]byte, size)
		rand.Read(contents)
		var buf bytes.Buffer
		w := nar.NewWriter(&buf)
		w.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeRegular, Size: int64(len(contents))})
		w.Write(contents)
		w.Close()
		file := enc.EncodeAll(buf.Bytes(), nil)
		fh, nh := sha256.Sum256(file), sha256.Sum256(buf.Bytes())
		hs := sha256.Sum256([]byte("e2e-pending-" + tag))
		fhash := narinfo.SHA256(fh[:])
		p := &path{name: nixbase32.EncodeToString(fh[:]) + ".nar.zst", file: file}
		p.ni = &narinfo.NarInfo{StorePath: "/nix/store/" + nixbase32.EncodeToString(hs[:20]) + "-" + tag, URL: "nar/" + p.name,
			Compression: "zstd", FileHash: &fhash, FileSize: uint64(len(file)), NarHash: narinfo.SHA256(nh[:]), NarSize: uint64(buf.Len())}
		for _, r := range refs {
			p.ni.References = append(p.ni.References, filepath.Base(r.ni.StorePath))
		}
		return p
	}
	leaf := mk("leaf", 1000)
	mid := mk("mid", 300<<10, leaf)
	top := mk("top", 2<<20, mid, leaf)

	p := startServe(t, "--config", cfg)
	do := func(method, path string, body []byte) (int, []byte) {
		t.Helper()
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
	for _, q := range []*path{top, mid, leaf} { // largest first
		if code, msg := do("PUT", "/nar/"+q.name, q.file); code != 200 {
			t.Fatalf("PUT NAR %s: %d %s", q.ni.StorePath, code, msg)
		}
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited

	p = startServe(t, "--config", cfg)
	for _, q := range []*path{top, mid, leaf} {
		if code, _ := do("HEAD", "/nar/"+q.name, nil); code != 200 {
			t.Fatalf("HEAD of the NAR of %s after SIGKILL: %d (the client would send it again)", q.ni.StorePath, code)
		}
	}
	for _, q := range []*path{leaf, mid, top} {
		hash := filepath.Base(q.ni.StorePath)[:32]
		if code, msg := do("PUT", "/"+hash+".narinfo", []byte(q.ni.String())); code != 200 {
			t.Fatalf("narinfo of %s after SIGKILL: %d %s", q.ni.StorePath, code, msg)
		}
		if code, body := do("GET", "/"+hash+".narinfo", nil); code != 200 || !strings.Contains(string(body), "StorePath: "+q.ni.StorePath) {
			t.Fatalf("narinfo of %s: %d %s", q.ni.StorePath, code, body)
		}
		if code, got := do("GET", "/nar/"+q.name, nil); code != 200 || !bytes.Equal(got, q.file) {
			t.Fatalf("NAR of %s: %d", q.ni.StorePath, code)
		}
	}
}
