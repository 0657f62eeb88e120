package cacheapi_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/auth"
	"github.com/bos55/concordia/internal/cacheapi"
	"github.com/bos55/concordia/internal/server"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/upload"
)

// realCache is a server with an empty upload store and an admin and a
// write token.
func realCache(t *testing.T) (url, admin, write string) {
	t.Helper()
	up, err := upload.Open(context.Background(), t.TempDir(), upload.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	admin, al, _ := auth.Generate("ops", auth.Admin)
	write, wl, _ := auth.Generate("ci", auth.Write)
	path := filepath.Join(t.TempDir(), "tokens")
	os.WriteFile(path, []byte(al+"\n"+wl+"\n"), 0o600)
	toks, err := auth.Load(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Options{Stores: []store.Store{up}, Upload: &server.Uploads{Store: up, Tokens: toks}})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	return hs.URL, admin, write
}

// TestAdminAgainstTheServer: GC, verify, the pin list and forget through
// the real server's API, and its refusals by type.
func TestAdminAgainstTheServer(t *testing.T) {
	url, admin, write := realCache(t)
	ctx := context.Background()
	c := &cacheapi.Client{URL: url, Token: admin}
	rep, err := c.GC(ctx, store.Policy{MaxSize: 1, MaxAge: time.Hour}, true)
	if err != nil || !rep.DryRun || len(rep.Deleted) != 0 {
		t.Errorf("GC dry run: %+v %v", rep, err)
	}
	var lines []string
	damaged, err := c.Verify(ctx, false, nil, func(l string) { lines = append(lines, l) })
	if err != nil || damaged || len(lines) == 0 || !strings.HasPrefix(lines[len(lines)-1], "checked 0 NAR files") {
		t.Errorf("Verify: %t %v %q", damaged, err, lines)
	}
	if pins, err := c.Pins(ctx); err != nil || len(pins) != 0 {
		t.Errorf("Pins: %v %v", pins, err)
	}
	hash := strings.Repeat("0", 32)
	if err := c.Forget(ctx, "/nix/store/"+hash+"-x"); !errors.Is(err, cacheapi.ErrNotFound) || errors.Is(err, cacheapi.ErrNoAPI) {
		t.Errorf("Forget with no tombstone: %v", err)
	}
	w := &cacheapi.Client{URL: url, Token: write}
	if _, err := w.GC(ctx, store.Policy{}, true); !errors.Is(err, cacheapi.ErrForbidden) {
		t.Errorf("GC with a write token: %v", err)
	}
	if _, err := w.Verify(ctx, false, nil, func(string) {}); !errors.Is(err, cacheapi.ErrForbidden) {
		t.Errorf("Verify with a write token: %v", err)
	}
	if err := w.Forget(ctx, hash); !errors.Is(err, cacheapi.ErrForbidden) {
		t.Errorf("Forget with a write token: %v", err)
	}
	anon := &cacheapi.Client{URL: url}
	if _, err := anon.Pins(ctx); !errors.Is(err, cacheapi.ErrAuth) {
		t.Errorf("Pins without a token: %v", err)
	}
}

// TestGCQuery: the policy and dry run reach the server as its query
// parameters, zero fields left out.
func TestGCQuery(t *testing.T) {
	var got []string
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = append(got, r.Method+" "+r.URL.RequestURI())
		fmt.Fprint(w, `{"DryRun":true,"Deleted":["/nix/store/x"]}`)
	}))
	defer hs.Close()
	c := &cacheapi.Client{URL: hs.URL + "/"}
	rep, err := c.GC(context.Background(), store.Policy{MaxSize: 50, MaxAge: 90 * time.Minute}, true)
	if err != nil || !rep.DryRun || len(rep.Deleted) != 1 {
		t.Fatalf("GC: %+v %v", rep, err)
	}
	c.GC(context.Background(), store.Policy{}, false)
	want := []string{"POST /api/gc?dry-run=true&max-size=50&max-age=1h30m0s", "POST /api/gc?dry-run=false"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("requests %q, want %q", got, want)
	}
}

// TestVerifyStream: progress lines go to progress, the others to line in
// order; DAMAGED is reported, ERROR is ErrVerifyFailed after every line.
func TestVerifyStream(t *testing.T) {
	answer := "progress 1 4\n"
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.RequestURI() != "/api/verify?repair=true" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprint(w, answer)
	}))
	defer hs.Close()
	c := &cacheapi.Client{URL: hs.URL}
	for _, tc := range []struct {
		body          string
		damaged       bool
		failed        bool
		lines, events int
	}{
		{"progress 1 4\nprogress 4 4\nchecked 2 NAR files (4 bytes): 0 damaged\n", false, false, 1, 2},
		{"progress 4 4\nDAMAGED x.nar: bad\n  dropped /nix/store/y\nchecked 1 NAR files (4 bytes): 1 damaged\n", true, false, 3, 1},
		{"progress 1 4\nERROR disk on fire (details in the server log, request r)\n", false, true, 1, 1},
	} {
		answer = tc.body
		var lines []string
		events := 0
		damaged, err := c.Verify(context.Background(), true, func(done, total int64) { events++ }, func(l string) { lines = append(lines, l) })
		if damaged != tc.damaged || errors.Is(err, cacheapi.ErrVerifyFailed) != tc.failed || (err != nil) != tc.failed {
			t.Errorf("%q: damaged %t, err %v", tc.body, damaged, err)
		}
		if len(lines) != tc.lines || events != tc.events {
			t.Errorf("%q: lines %q, %d progress events", tc.body, lines, events)
		}
	}
	if _, err := c.Verify(context.Background(), false, nil, func(string) {}); !errors.Is(err, cacheapi.ErrNoAPI) {
		t.Errorf("a server without the route: %v", err)
	}
}
