package cacheapi_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/bos55/concordia/internal/cacheapi"
	"github.com/bos55/concordia/pkg/nar"
)

const toplevelLs = `{"version":1,"root":{"type":"directory","entries":{"kernel":{"type":"symlink","target":"/nix/store/aaaa-linux-6.6.1/bzImage"}}}}`

// TestListing plays the cache: a listing (plain or zstd), none, a body past
// the bound, garbage, a refused token.
func TestListing(t *testing.T) {
	var zdoc bytes.Buffer
	zw, _ := zstd.NewWriter(&zdoc)
	zw.Write([]byte(toplevelLs))
	zw.Close()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer tok" {
			http.Error(w, "no", http.StatusUnauthorized)
			return
		}
		switch r.URL.Path {
		case "/plain.ls":
			w.Write([]byte(toplevelLs))
		case "/zstd.ls":
			w.Header().Set("Content-Encoding", "zstd")
			w.Write(zdoc.Bytes())
		case "/huge.ls":
			w.Write([]byte(`{"version":1,"root":{"type":"symlink","target":"` + strings.Repeat("a", cacheapi.MaxListing) + `"}}`))
		case "/garbage.ls":
			w.Write([]byte(`{"version":1,"root":{"type":"symlink","target":"/../x","size":3}}`))
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	c := &cacheapi.Client{URL: srv.URL, Token: "tok"}
	ctx := context.Background()
	for _, h := range []string{"plain", "zstd"} {
		l, err := c.Listing(ctx, h)
		if err != nil {
			t.Fatalf("%s: %v", h, err)
		}
		if n := l.Lookup("kernel"); n == nil || n.Target != "/nix/store/aaaa-linux-6.6.1/bzImage" {
			t.Fatalf("%s: %+v", h, l.Root)
		}
	}
	if l, err := c.Listing(ctx, "absent"); l != nil || err != nil {
		t.Fatalf("absent: %v %v", l, err)
	}
	for _, h := range []string{"huge", "garbage"} {
		if _, err := c.Listing(ctx, h); !errors.Is(err, cacheapi.ErrUnavailable) || !errors.Is(err, nar.ErrListing) {
			t.Fatalf("%s: %v", h, err)
		}
	}
	if _, err := (&cacheapi.Client{URL: srv.URL}).Listing(ctx, "plain"); !errors.Is(err, cacheapi.ErrAuth) {
		t.Fatalf("no token: %v", err)
	}
}
