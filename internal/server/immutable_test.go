package server_test

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/syncbuf"

	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/bos55/concordia/internal/server"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/pkg/narinfo"
)

// These tests play a CI runner whose write token leaked: through the real
// router, they try to change what the cache already serves.

// upPathOfNAR is an upload of narBytes as the path storePath, whatever
// the cache already has there.
func upPathOfNAR(t testing.TB, storePath string, narBytes []byte, refs ...string) *upPath {
	t.Helper()
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	defer enc.Close()
	p := &upPath{nar: narBytes, file: enc.EncodeAll(narBytes, nil), base: filepath.Base(storePath)}
	p.hash = p.base[:32]
	fh, nh := sha256.Sum256(p.file), sha256.Sum256(p.nar)
	p.fileName = nixbase32.EncodeToString(fh[:]) + ".nar.zst"
	fhash := narinfo.SHA256(fh[:])
	p.info = &narinfo.NarInfo{
		StorePath: storePath, URL: "nar/" + p.fileName, Compression: "zstd",
		FileHash: &fhash, FileSize: uint64(len(p.file)),
		NarHash: narinfo.SHA256(nh[:]), NarSize: uint64(len(p.nar)), References: refs,
	}
	return p
}

// twinOf is another NAR (a file with contents) for the path storePath.
func twinOf(t testing.TB, storePath string, contents []byte) *upPath {
	t.Helper()
	return upPathOfNAR(t, storePath, newUpPath(t, "twin", contents).nar)
}

// bareNAR is p as an uncompressed .nar upload: the same NAR, another file.
func bareNAR(p *upPath) *upPath {
	q := *p
	q.file = p.nar
	q.fileName = nameOf(p.nar)
	info := *p.info
	fh := sha256.Sum256(p.nar)
	fhash := narinfo.SHA256(fh[:])
	info.URL, info.Compression, info.FileHash, info.FileSize = "nar/"+q.fileName, "none", &fhash, uint64(len(p.nar))
	q.info = &info
	return &q
}

// served is what an anonymous client gets for a hash part: the narinfo
// as sent, and the bytes of the NAR URL it names.
type served struct {
	narinfo string
	ni      *narinfo.NarInfo
	file    []byte
}

func (e *upEnv) served(t *testing.T, hash string) served {
	t.Helper()
	code, body := e.do(t, "GET", "/"+hash+".narinfo", "", nil)
	if code != 200 {
		t.Fatalf("GET narinfo %s: %d %s", hash, code, body)
	}
	ni, err := narinfo.Parse(strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	code, file := e.do(t, "GET", "/"+ni.URL, "", nil)
	if code != 200 {
		t.Fatalf("GET %s: %d", ni.URL, code)
	}
	return served{narinfo: body, ni: ni, file: []byte(file)}
}

// putPath uploads p (NAR, then narinfo) and returns the narinfo PUT's
// status and body.
func (e *upEnv) putPath(t *testing.T, p *upPath) (int, string) {
	t.Helper()
	if code, msg := e.do(t, "PUT", "/nar/"+p.fileName, e.writeTok, p.file); code != 200 {
		t.Fatalf("PUT NAR %s: %d %s (a NAR alone publishes nothing and is accepted)", p.base, code, msg)
	}
	return e.do(t, "PUT", "/"+p.hash+".narinfo", e.writeTok, []byte(p.info.String()))
}

// freshReads makes every narinfo GET ask the stores again, so what a test
// reads after an attack is the stores' answer, not a cached one.
func freshReads(o *server.Options) { o.NarInfoTTL = time.Nanosecond }

// TestPutCannotReplaceServedPath: a different NAR with a narinfo naming a
// path the cache serves, from its local store or its upload store, with
// either store preferred, is 409 naming both NAR hashes, and the narinfo
// and NAR clients get afterwards are byte for byte the ones before.
func TestPutCannotReplaceServedPath(t *testing.T) {
	for _, prefer := range []string{"upload", "local"} {
		for _, where := range []string{"local", "upload"} {
			t.Run("prefer "+prefer+", path in the "+where+" store", func(t *testing.T) {
				local := newFakeStore()
				logs := &syncbuf.Buffer{}
				e := newUpEnvWith(t, t.TempDir(), false, []store.Store{local}, prefer == "upload", func(o *server.Options) {
					freshReads(o)
					o.Logger = slog.New(slog.NewTextHandler(logs, nil))
				})
				var storePath, origHash string
				if where == "local" {
					lp := local.addTree(t, hashOf("immut-"+prefer), "leaf", map[string]string{"f": "the real leaf"})
					storePath, origHash = lp.info.StorePath, narinfo.SHA256(lp.info.NarHash).String()
				} else {
					p := newUpPath(t, "immut-leaf-"+prefer, []byte("the real leaf"))
					e.upload(t, p)
					storePath, origHash = p.info.StorePath, p.info.NarHash.String()
				}
				hash := filepath.Base(storePath)[:32]
				before := e.served(t, hash)
				var writerBefore string
				if where == "upload" {
					_, writerBefore = e.do(t, "GET", "/"+hash+".narinfo", e.writeTok, nil)
				}

				evil := twinOf(t, storePath, []byte("a swapped leaf"))
				code, msg := e.putPath(t, evil)
				if code != http.StatusConflict || !strings.Contains(msg, origHash) || !strings.Contains(msg, evil.info.NarHash.String()) {
					t.Fatalf("narinfo PUT for a served path with another NAR: %d %q, want 409 naming %s and %s",
						code, msg, origHash, evil.info.NarHash)
				}
				after := e.served(t, hash)
				if after.narinfo != before.narinfo || !bytes.Equal(after.file, before.file) {
					t.Fatalf("what clients get changed:\n%s\nwas\n%s", after.narinfo, before.narinfo)
				}
				// The uploader's view (the upload store alone) is unchanged too.
				code, writerAfter := e.do(t, "GET", "/"+hash+".narinfo", e.writeTok, nil)
				if where == "local" && code != 404 || where == "upload" && writerAfter != writerBefore {
					t.Fatalf("upload store changed: %d\n%s", code, writerAfter)
				}
				if code, _ := e.do(t, "GET", "/nar/"+evil.fileName, "", nil); code != 404 {
					t.Fatalf("the refused NAR is served: %d", code)
				}
				if !strings.Contains(logs.String(), `level=WARN msg="upload refused"`) || !strings.Contains(logs.String(), "token=ci") {
					t.Fatalf("the attempt is not logged as a warning naming the token:\n%s", logs)
				}
			})
		}
	}
}

// TestPutSameNarHashIsNoOp: the same NAR for an uploaded path again, even
// uncompressed, is 200 and only adds the uploader's signature; for a path
// only the local store has, the same NAR is accepted and served the same.
func TestPutSameNarHashIsNoOp(t *testing.T) {
	local := newFakeStore()
	e := newUpEnvWith(t, t.TempDir(), false, []store.Store{local}, true, freshReads)
	upk, upub, _ := narinfo.GenerateKey("uploader-1")
	p := newUpPath(t, "noop-http", []byte("no-op"))
	e.upload(t, p)
	before := e.served(t, p.hash)

	again := bareNAR(p)
	again.info.Sign(upk)
	if code, msg := e.putPath(t, again); code != 200 {
		t.Fatalf("same NAR again: %d %s", code, msg)
	}
	after := e.served(t, p.hash)
	if after.ni.URL != before.ni.URL || after.ni.Compression != before.ni.Compression ||
		after.ni.FileHash.String() != before.ni.FileHash.String() || !bytes.Equal(after.file, before.file) {
		t.Fatalf("the stored file changed:\n%s\nwas\n%s", after.narinfo, before.narinfo)
	}
	want := append(before.ni.Sigs, again.info.Sigs...)
	if len(after.ni.Sigs) != 2 || !sameStrings(after.ni.Sigs, want) {
		t.Fatalf("signatures %v, want %v merged", after.ni.Sigs, want)
	}
	if _, ok := after.ni.Verify([]narinfo.PublicKey{upub}); !ok {
		t.Fatal("uploader's signature does not verify")
	}
	if _, ok := after.ni.Verify([]narinfo.PublicKey{e.key.Public()}); !ok {
		t.Fatal("cache's signature does not verify")
	}
	if code, _ := e.do(t, "GET", "/nar/"+again.fileName, "", nil); code != 404 {
		t.Fatalf("the no-op upload's file is served: %d", code)
	}

	lp := local.addTree(t, hashOf("noop-local"), "local", map[string]string{"f": "local"})
	beforeLocal := e.served(t, hashOf("noop-local"))
	if code, msg := e.putPath(t, upPathOfNAR(t, lp.info.StorePath, lp.nar)); code != 200 {
		t.Fatalf("same NAR as the local store's: %d %s", code, msg)
	}
	afterLocal := e.served(t, hashOf("noop-local"))
	if afterLocal.ni.NarHash.String() != beforeLocal.ni.NarHash.String() || afterLocal.ni.StorePath != beforeLocal.ni.StorePath ||
		!bytes.Equal(unzstd(t, afterLocal.file), lp.nar) {
		t.Fatalf("served path changed:\n%s\nwas\n%s", afterLocal.narinfo, beforeLocal.narinfo)
	}
}

func sameStrings(a, b []string) bool {
	seen := map[string]bool{}
	for _, s := range a {
		seen[s] = true
	}
	for _, s := range b {
		if !seen[s] {
			return false
		}
	}
	return len(seen) == len(a)
}

// TestPutConcurrentConflictingUploads: several tokens racing to publish
// one path with different NARs: exactly one 200, the others 409, and the
// winner's NAR is served.
func TestPutConcurrentConflictingUploads(t *testing.T) {
	e := newUpEnv(t, t.TempDir(), false)
	const n = 6
	sp := newUpPath(t, "contested-http", nil).info.StorePath
	var rivals []*upPath
	for i := range n {
		p := twinOf(t, sp, []byte(fmt.Sprintf("version %d", i)))
		if code, msg := e.do(t, "PUT", "/nar/"+p.fileName, e.writeTok, p.file); code != 200 {
			t.Fatal(code, msg)
		}
		rivals = append(rivals, p)
	}
	codes := make([]int, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, p := range rivals {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("PUT", e.url+"/"+p.hash+".narinfo", strings.NewReader(p.info.String()))
			req.SetBasicAuth("ci", e.writeTok)
			<-start
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return
			}
			resp.Body.Close()
			codes[i] = resp.StatusCode
		}()
	}
	close(start)
	wg.Wait()
	winner := -1
	for i, code := range codes {
		switch {
		case code == 200 && winner >= 0:
			t.Fatalf("uploads %d and %d both accepted: %v", winner, i, codes)
		case code == 200:
			winner = i
		case code != http.StatusConflict:
			t.Fatalf("upload %d: %d, want 409 (all: %v)", i, code, codes)
		}
	}
	if winner < 0 {
		t.Fatalf("none accepted: %v", codes)
	}
	if got := e.served(t, rivals[winner].hash); !bytes.Equal(got.file, rivals[winner].file) {
		t.Fatal("the served NAR is not the accepted upload's")
	}
}

// TestPutNARFileCannotBeReplaced: NAR files are named by the hash of their
// bytes: other bytes under a stored name are 400, the same bytes 200, and
// the file served never changes.
func TestPutNARFileCannotBeReplaced(t *testing.T) {
	e := newUpEnv(t, t.TempDir(), false)
	p := newUpPath(t, "nar-file-http", []byte("original"))
	other := newUpPath(t, "nar-file-http-other", []byte("other"))
	e.upload(t, p)
	before := e.served(t, p.hash)
	if code, msg := e.do(t, "PUT", "/nar/"+p.fileName, e.writeTok, other.file); code != 400 || !strings.Contains(msg, "file hash mismatch") {
		t.Fatalf("other bytes under a stored NAR name: %d %s", code, msg)
	}
	if code, msg := e.do(t, "PUT", "/nar/"+p.fileName, e.writeTok, p.file); code != 200 {
		t.Fatalf("the same bytes again: %d %s", code, msg)
	}
	if code, body := e.do(t, "GET", "/nar/"+p.fileName, "", nil); code != 200 || body != string(p.file) {
		t.Fatalf("GET /nar/%s: %d, changed", p.fileName, code)
	}
	if after := e.served(t, p.hash); after.narinfo != before.narinfo || !bytes.Equal(after.file, before.file) {
		t.Fatal("served path changed")
	}
}

// TestPutDocumentsCannotChange: a listing of a published path, a build log
// and a realisation or build-trace entry the cache serves (uploaded, or
// the local store's, which an upload would shadow with prefer = "upload")
// are 409 when another version is PUT, and 200 (no-op) when the same one
// is; what GET answers stays the first version.
func TestPutDocumentsCannotChange(t *testing.T) {
	drv := hashOf("doc-drv") + "-doc.drv"
	localDrv := hashOf("doc-local-drv") + "-local.drv"
	id := "sha256:" + strings.Repeat("ab", 32) + "!out"
	localID := "sha256:" + strings.Repeat("cd", 32) + "!out"
	traceDrv := hashOf("doc-trace") + "-t.drv"
	const real = `{"dependentRealisations":{},"id":"x","outPath":"p","signatures":[]}`
	const evilReal = `{"dependentRealisations":{},"id":"x","outPath":"evil","signatures":[]}`
	p := newUpPath(t, "doc-path", []byte("x"))
	const ls = `{"version":1,"root":{"type":"regular","size":1,"narOffset":96}}`
	tests := []struct {
		name, put, get string
		first          string // PUT before the attack ("" when the local store has it)
		served         string // what GET answers, before and after
		other, same    string
	}{
		{"build log", "/log/" + drv, "/log/" + drv, "building\n", "building\n", "all fine, nothing built\n", "building\n"},
		{"local build log", "/log/" + localDrv, "/log/" + localDrv, "", "built on the cache host\n", "built elsewhere\n", "built on the cache host\n"},
		{"realisation", "/realisations/" + id + ".doi", "/realisations/" + id + ".doi", real, real, evilReal, strings.ReplaceAll(real, ",", ",\n  ")},
		{"local realisation", "/realisations/" + localID + ".doi", "/realisations/" + localID + ".doi", "", real, evilReal, real},
		{"build trace entry", "/build-trace-v2/" + traceDrv + "/out.doi", "/build-trace-v2/" + traceDrv + "/out.doi", real, real, evilReal, real},
	}
	local := &realStore{fakeStore: newFakeStore(), docs: map[string][]byte{localID: []byte(real)}}
	local.logs[localDrv] = []byte("built on the cache host\n")
	e := newUpEnvWith(t, t.TempDir(), false, []store.Store{local}, true, nil)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.first != "" {
				if code, msg := e.do(t, "PUT", tc.put, e.writeTok, []byte(tc.first)); code != 200 {
					t.Fatalf("first PUT: %d %s", code, msg)
				}
			}
			if code, msg := e.do(t, "PUT", tc.put, e.writeTok, []byte(tc.other)); code != http.StatusConflict || strings.Count(msg, "sha256:") < 2 {
				t.Fatalf("another version: %d %q, want 409 naming both hashes", code, msg)
			}
			if code, body := e.do(t, "GET", tc.get, "", nil); code != 200 || body != tc.served {
				t.Fatalf("GET after the attempt: %d %q, want %q", code, body, tc.served)
			}
			if code, msg := e.do(t, "PUT", tc.put, e.writeTok, []byte(tc.same)); code != 200 {
				t.Fatalf("the same document again: %d %s", code, msg)
			}
			if code, body := e.do(t, "GET", tc.get, "", nil); code != 200 || body != tc.served {
				t.Fatalf("GET after the no-op: %d %q, want %q", code, body, tc.served)
			}
		})
	}
	t.Run("bzip2 local build log", func(t *testing.T) {
		packed := hashOf("doc-bz2-drv") + "-packed.drv"
		local.logs[packed+".bz2"] = bz2(t, "packed log\n")
		if code, msg := e.do(t, "PUT", "/log/"+packed, e.writeTok, []byte("other log\n")); code != http.StatusConflict {
			t.Fatalf("another log than the local bz2 one: %d %s", code, msg)
		}
		if code, msg := e.do(t, "PUT", "/log/"+packed, e.writeTok, []byte("packed log\n")); code != 200 {
			t.Fatalf("the local log's text: %d %s", code, msg)
		}
	})
	t.Run("listing of a published path", func(t *testing.T) {
		if code, msg := e.do(t, "PUT", "/"+p.hash+".ls", e.writeTok, []byte(ls)); code != 200 {
			t.Fatal(code, msg)
		}
		e.upload(t, p)
		_, servedLs := e.do(t, "GET", "/"+p.hash+".ls", "", nil)
		evilLs := `{"version":1,"root":{"type":"regular","size":1,"executable":true,"narOffset":96}}`
		if code, msg := e.do(t, "PUT", "/"+p.hash+".ls", e.writeTok, []byte(evilLs)); code != http.StatusConflict {
			t.Fatalf("another listing: %d %s", code, msg)
		}
		if got, err := e.up.Listing(t.Context(), p.hash); err != nil || string(got) != ls {
			t.Fatalf("stored listing %q %v", got, err)
		}
		if code, msg := e.do(t, "PUT", "/"+p.hash+".ls", e.writeTok, []byte(ls)); code != 200 {
			t.Fatalf("the same listing again: %d %s", code, msg)
		}
		// What clients get is computed from the NAR in any case.
		if code, body := e.do(t, "GET", "/"+p.hash+".ls", "", nil); code != 200 || body != servedLs || strings.Contains(body, "executable") {
			t.Fatalf("GET .ls: %d %s", code, body)
		}
	})
}

// TestUploadDoesNotShadowLocalPath: an upload record that differs from the
// local store's path (accepted before uploads were checked, or the host
// built the path itself afterwards) is never served over the local one:
// with either preference clients get the local NAR, and with prefer =
// "upload" a warning is logged, once.
func TestUploadDoesNotShadowLocalPath(t *testing.T) {
	for _, prefer := range []string{"upload", "local"} {
		t.Run("prefer "+prefer, func(t *testing.T) {
			local := newFakeStore()
			logs := &syncbuf.Buffer{}
			e := newUpEnvWith(t, t.TempDir(), false, []store.Store{local}, prefer == "upload", func(o *server.Options) {
				freshReads(o)
				o.Logger = slog.New(slog.NewTextHandler(logs, nil))
			})
			p := newUpPath(t, "shadow-"+prefer, []byte("uploaded build"))
			e.upload(t, p)
			lp := local.addTree(t, p.hash, "shadow-"+prefer, map[string]string{"f": "the host's own build"})
			if lp.info.StorePath != p.info.StorePath {
				t.Fatal("test paths must share the store path")
			}
			for range 3 {
				got := e.served(t, p.hash)
				if !bytes.Equal(got.ni.NarHash.Digest, lp.info.NarHash) || !bytes.Equal(unzstd(t, got.file), lp.nar) {
					t.Fatalf("served the upload over the local path:\n%s", got.narinfo)
				}
			}
			warned := strings.Count(logs.String(), "an uploaded path has another NAR")
			if prefer == "upload" && warned != 1 || prefer == "local" && warned != 0 {
				t.Fatalf("%d warnings, logs:\n%s", warned, logs)
			}
		})
	}
}
