package server_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/upload"
)

// TestPutNARsFirstAcrossRestart: Nix 2.35's order over HTTP (every NAR
// PUT first, largest first, then the narinfos in dependency order), with
// the server and its upload store restarted between the NARs and the
// narinfos: every narinfo is accepted (200) and served.
func TestPutNARsFirstAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	e := newUpEnv(t, dir, false)
	leaf := newUpPath(t, "nf-leaf", []byte("leaf"))
	mid := newUpPath(t, "nf-mid", bytes.Repeat([]byte("mid "), 5000), leaf.base)
	top := newUpPath(t, "nf-top", bytes.Repeat([]byte("top! "), 20000), mid.base, leaf.base)
	paths := []*upPath{leaf, mid, top} // dependency order
	bySize := slices.Clone(paths)
	slices.SortFunc(bySize, func(a, b *upPath) int { return len(b.nar) - len(a.nar) })
	for _, p := range bySize {
		if code, msg := e.do(t, "PUT", "/nar/"+p.fileName, e.writeTok, p.file); code != 200 {
			t.Fatalf("PUT NAR %s: %d %s", p.base, code, msg)
		}
	}
	if err := e.up.Close(); err != nil {
		t.Fatal(err)
	}
	e = newUpEnv(t, dir, false)
	for _, p := range bySize {
		if code, _ := e.do(t, "HEAD", "/nar/"+p.fileName, e.writeTok, nil); code != 200 {
			t.Fatalf("HEAD of NAR %s after the restart: %d (the client would send it again)", p.base, code)
		}
	}
	for _, p := range paths {
		if code, msg := e.do(t, "PUT", "/"+p.hash+".narinfo", e.writeTok, []byte(p.info.String())); code != 200 {
			t.Fatalf("PUT narinfo %s after the restart: %d %s", p.base, code, msg)
		}
		if code, _ := e.do(t, "GET", "/"+p.hash+".narinfo", "", nil); code != 200 {
			t.Fatalf("GET narinfo %s: %d", p.base, code)
		}
	}
}

// clock is a settable clock for upload.Options.Now.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// TestWriterLookupKeepsPathThroughGC: a narinfo a writer's lookup (GET or
// HEAD with a write token) was answered 200 for is kept by GC within
// writer_ttl, the report counting it; one only a reader looked up is
// collected. A later narinfo referencing the collected path is refused
// naming it and narinfo-cache-positive-ttl 0.
func TestWriterLookupKeepsPathThroughGC(t *testing.T) {
	clk := &clock{now: time.Now()}
	const ttl = 30 * 24 * time.Hour
	e := newUpEnvOpts(t, t.TempDir(), false, nil, true, freshReads,
		upload.Options{Now: clk.Now, WriterTTL: ttl, HardMaxSize: 1 << 40})
	byWriter := newUpPath(t, "told-writer", []byte("looked up by a writer"))
	byHead := newUpPath(t, "told-head", []byte("looked up by a writer's HEAD"))
	byReader := newUpPath(t, "told-reader", []byte("looked up by a reader"))
	for _, p := range []*upPath{byWriter, byHead, byReader} {
		e.upload(t, p)
	}
	clk.Advance(ttl + time.Hour) // the uploads' own stamps have expired
	for _, l := range []struct {
		method, token string
		p             *upPath
	}{{"GET", e.writeTok, byWriter}, {"HEAD", e.writeTok, byHead}, {"GET", e.readTok, byReader}} {
		if code, _ := e.do(t, l.method, "/"+l.p.hash+".narinfo", l.token, nil); code != 200 {
			t.Fatalf("%s narinfo %s: %d", l.method, l.p.base, code)
		}
	}
	clk.Advance(24 * time.Hour)
	code, body := e.do(t, "POST", "/api/gc?max-size=1", e.adminTok, nil)
	if code != 200 {
		t.Fatalf("GC: %d %s", code, body)
	}
	var rep store.GCReport
	if err := json.Unmarshal([]byte(body), &rep); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rep.Deleted, []string{byReader.info.StorePath}) || rep.KeptForWriters != 2 {
		t.Fatalf("GC: deleted %v, kept for writers %d; want only %s deleted, 2 kept", rep.Deleted, rep.KeptForWriters, byReader.base)
	}
	for _, p := range []*upPath{byWriter, byHead} {
		if code, _ := e.do(t, "GET", "/"+p.hash+".narinfo", "", nil); code != 200 {
			t.Fatalf("kept %s: %d", p.base, code)
		}
	}
	referrer := newUpPath(t, "told-referrer", []byte("refers"), byReader.base)
	if code, msg := e.do(t, "PUT", "/nar/"+referrer.fileName, e.writeTok, referrer.file); code != 200 {
		t.Fatalf("PUT NAR: %d %s", code, msg)
	}
	code, msg := e.do(t, "PUT", "/"+referrer.hash+".narinfo", e.writeTok, []byte(referrer.info.String()))
	want := fmt.Sprintf("references not in the cache (upload them first): %s;", byReader.info.StorePath)
	if code != 400 || !strings.Contains(msg, want) || !strings.Contains(msg, "--option narinfo-cache-positive-ttl 0") {
		t.Fatalf("narinfo referencing the collected path: %d %q", code, msg)
	}
}
