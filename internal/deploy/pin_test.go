package deploy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/bos55/concordia/internal/auth"
	"github.com/bos55/concordia/internal/deploy"
	"github.com/bos55/concordia/internal/server"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/upload"
)

func TestHTTPPinner(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	var body map[string]string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if r.Header.Get("Authorization") != "Bearer tok" {
			http.Error(w, "no", http.StatusUnauthorized)
			return
		}
		seen = append(seen, r.Method+" "+r.URL.Path)
		if r.Method == http.MethodPost {
			json.NewDecoder(r.Body).Decode(&body)
		}
	}))
	defer srv.Close()
	p := &deploy.HTTPPinner{Cache: srv.URL + "/", Token: "tok", Note: "deploy d-1"}
	ctx := context.Background()
	if err := p.Pin(ctx, sys1); err != nil {
		t.Fatal(err)
	}
	if err := p.Unpin(ctx, sys2); err != nil {
		t.Fatal(err)
	}
	want := []string{"POST /api/pins/" + sys1[11:43], "DELETE /api/pins/" + sys2[11:43]}
	if len(seen) != 2 || seen[0] != want[0] || seen[1] != want[1] {
		t.Fatalf("requests %v, want %v", seen, want)
	}
	if body["storePath"] != sys1 || body["note"] != "deploy d-1" {
		t.Fatalf("body %v", body)
	}
	if err := (&deploy.HTTPPinner{Cache: srv.URL}).Pin(ctx, sys1); err == nil {
		t.Fatal("unauthorized pin: want error")
	}
}

func TestHTTPPinnerNoAPI(t *testing.T) {
	var n int
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		n++
		mu.Unlock()
		http.Error(w, "nope", http.StatusMethodNotAllowed)
	}))
	defer srv.Close()
	p := &deploy.HTTPPinner{Cache: srv.URL}
	for i := 0; i < 3; i++ {
		if err := p.Pin(context.Background(), sys1); err != nil {
			t.Fatalf("no pin API must not fail the deploy: %v", err)
		}
	}
	if n != 1 {
		t.Fatalf("asked a cache without pin API %d times, want 1", n)
	}
}

// TestHTTPPinnerAgainstCache: the deployer's pinner with a pin token
// against the real cache handler. It pins and unpins its own pins; a pin
// another token made is refused by the cache and left in place, which the
// pinner reports as a warning, not an error (the deploy goes on); a
// write-only token (the CI upload token) cannot pin at all.
func TestHTTPPinnerAgainstCache(t *testing.T) {
	ctx := context.Background()
	up, err := upload.Open(ctx, t.TempDir(), upload.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	tokPath := filepath.Join(t.TempDir(), "tokens")
	pinTok, pinLine, _ := auth.Generate("deploy", auth.Pin)
	writeTok, writeLine, _ := auth.Generate("ci", auth.Read|auth.Write)
	os.WriteFile(tokPath, []byte(pinLine+"\n"+writeLine+"\n"), 0o600)
	toks, err := auth.Load(tokPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Options{Stores: []store.Store{up}, Upload: &server.Uploads{Store: up, Tokens: toks}})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	defer hs.Close()
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	p := &deploy.HTTPPinner{Cache: hs.URL, Token: pinTok, Note: "deployer push d-1", Logger: log}
	owners := func() map[string]string {
		pins, err := up.Pins(ctx)
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]string{}
		for _, pn := range pins {
			m[pn.StorePath] = pn.Owner
		}
		return m
	}
	// An admin (on the store directly here) pinned sys2 before.
	if err := up.Pin(ctx, sys2, "by hand"); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{sys1, sys2} {
		if err := p.Pin(ctx, s); err != nil {
			t.Fatalf("pin %s: %v", s, err)
		}
	}
	if got := owners(); got[sys1] != "deploy" || got[sys2] != "" {
		t.Fatalf("owners %v: sys2 must stay the admin's", got)
	}
	if err := p.Unpin(ctx, sys2); err != nil {
		t.Fatalf("unpinning another's pin must not fail the deploy: %v", err)
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), sys2) {
		t.Fatalf("no warning for the refused unpin:\n%s", logs.String())
	}
	if err := p.Unpin(ctx, sys1); err != nil {
		t.Fatal(err)
	}
	if got := owners(); len(got) != 1 || got[sys2] != "" {
		t.Fatalf("after unpinning: %v", got)
	}
	ci := &deploy.HTTPPinner{Cache: hs.URL, Token: writeTok}
	if err := ci.Pin(ctx, sys1); err == nil || !strings.Contains(err.Error(), "pin permission") {
		t.Fatalf("pin with the upload token: %v", err)
	}
	if _, ok := owners()[sys1]; ok {
		t.Fatal("the upload token pinned")
	}
}
