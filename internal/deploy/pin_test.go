package deploy_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/bos55/concordia/internal/deploy"
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
