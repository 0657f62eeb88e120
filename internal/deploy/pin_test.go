package deploy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/bos55/concordia/internal/auth"
	"github.com/bos55/concordia/internal/cacheapi"
	"github.com/bos55/concordia/internal/deploy"
	"github.com/bos55/concordia/internal/limits"
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
	// The systems are in the cache (a pin token may pin only those).
	srv, err := server.New(server.Options{Stores: []store.Store{up, present{sys1, sys2}}, Upload: &server.Uploads{Store: up, Tokens: toks}})
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

// present is a store that has the given store paths (no NARs).
type present []string

func (p present) StoreDir() string { return "/nix/store" }

func (p present) PathInfo(ctx context.Context, hash string) (*store.PathInfo, error) {
	for _, sp := range p {
		if sp[len("/nix/store/"):][:32] == hash {
			return &store.PathInfo{StorePath: sp, NarHash: make([]byte, 32), NarSize: 1}, nil
		}
	}
	return nil, store.ErrNotFound
}

func (p present) NAR(ctx context.Context, info *store.PathInfo, w io.Writer) error {
	return store.ErrNotFound
}

// TestHTTPPinnerRefusals: a path the cache does not have (404, a pin token
// may pin only what the cache has) and a pin past the token's limit (403)
// are errors saying the cache's reason, and neither makes the pinner take
// the cache for one without a pin API: the next pin is still sent.
func TestHTTPPinnerRefusals(t *testing.T) {
	ctx := context.Background()
	up, err := upload.Open(ctx, t.TempDir(), upload.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	tokPath := filepath.Join(t.TempDir(), "tokens")
	pinTok, pinLine, _ := auth.Generate("deploy", auth.Pin)
	os.WriteFile(tokPath, []byte(pinLine+"\n"), 0o600)
	toks, err := auth.Load(tokPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	l := limits.Default()
	l.MaxPinsPerToken = 1
	srv, err := server.New(server.Options{Stores: []store.Store{up, present{sys1, sys2}}, Upload: &server.Uploads{Store: up, Tokens: toks}, Limits: l})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	defer hs.Close()
	p := &deploy.HTTPPinner{Cache: hs.URL, Token: pinTok}
	absent := "/nix/store/2c6kzph7l0dcbfmjap64f0czdafn3b7x-nixos-system-gone-24.05"
	if err := p.Pin(ctx, absent); err == nil || !strings.Contains(err.Error(), "does not have") {
		t.Fatalf("pin of a path the cache does not have: %v", err)
	}
	if err := p.Pin(ctx, sys1); err != nil {
		t.Fatalf("pin after a refusal: %v", err)
	}
	if err := p.Pin(ctx, sys2); err == nil || !strings.Contains(err.Error(), "max_pins_per_token") || !errors.Is(err, cacheapi.ErrTooManyPins) {
		t.Fatalf("pin past the limit: %v", err)
	}
	if pins, _ := up.Pins(ctx); len(pins) != 1 || pins[0].StorePath != sys1 {
		t.Fatalf("pins %+v", pins)
	}
}
