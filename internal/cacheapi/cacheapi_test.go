package cacheapi_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/bos55/concordia/internal/cacheapi"
)

func TestNetrcPassword(t *testing.T) {
	p := filepath.Join(t.TempDir(), "netrc")
	os.WriteFile(p, []byte("machine other login x password nope\nmachine cache.lan login ci password s3cret\ndefault login d password dflt\n"), 0o600)
	for cache, want := range map[string]string{"https://cache.lan:8443/": "s3cret", "http://elsewhere": "dflt"} {
		got, err := cacheapi.NetrcPassword(p, cache)
		if err != nil || got != want {
			t.Errorf("NetrcPassword(%s) = %q, %v; want %q", cache, got, err, want)
		}
	}
}

// A token file wins over a netrc, which wins over the environment.
func TestToken(t *testing.T) {
	dir := t.TempDir()
	file, netrc := filepath.Join(dir, "token"), filepath.Join(dir, "netrc")
	os.WriteFile(file, []byte("from-file\n"), 0o600)
	os.WriteFile(netrc, []byte("machine cache.lan login ci password from-netrc\n"), 0o600)
	t.Setenv(cacheapi.EnvToken, "from-env")
	for _, tc := range []struct{ file, netrc, want string }{
		{file, netrc, "from-file"}, {"", netrc, "from-netrc"}, {"", "", "from-env"},
	} {
		got, err := cacheapi.Token(tc.file, tc.netrc, "https://cache.lan")
		if err != nil || got != tc.want {
			t.Errorf("Token(%q, %q) = %q %v, want %q", tc.file, tc.netrc, got, err, tc.want)
		}
	}
	if _, err := cacheapi.Token(filepath.Join(dir, "none"), "", ""); err == nil {
		t.Error("a missing token file is an error")
	}
}

func TestErrorsByStatus(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/api/pins/0c6kzph7l0dcbfmjap64f0czdafn3b7x":
			if r.Header.Get("Authorization") != "Bearer good" {
				http.Error(w, "token lacks the permission", http.StatusForbidden)
				return
			}
			if r.Method == http.MethodDelete {
				http.Error(w, "not pinned", http.StatusNotFound)
				return
			}
			w.Write([]byte(`{"storePath":"x"}`))
		case "/0c6kzph7l0dcbfmjap64f0czdafn3b7x.narinfo":
			http.Error(w, "boom", http.StatusInternalServerError)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	p := "/nix/store/0c6kzph7l0dcbfmjap64f0czdafn3b7x-system"
	ctx := context.Background()
	good, bad := &cacheapi.Client{URL: srv.URL, Token: "good"}, &cacheapi.Client{URL: srv.URL, Token: "bad"}
	if _, err := good.Pin(ctx, p, "n"); err != nil {
		t.Fatal(err)
	}
	if _, err := bad.Pin(ctx, p, "n"); !errors.Is(err, cacheapi.ErrForbidden) {
		t.Fatalf("bad token: %v", err)
	}
	if _, err := good.Unpin(ctx, p); !errors.Is(err, cacheapi.ErrNotFound) || errors.Is(err, cacheapi.ErrNoAPI) {
		t.Fatalf("not pinned: %v", err)
	}
	if _, err := good.Pins(ctx); !errors.Is(err, cacheapi.ErrNoAPI) {
		t.Fatalf("a route the server lacks: %v", err)
	}
	if _, err := good.NarInfo(ctx, "0c6kzph7l0dcbfmjap64f0czdafn3b7x"); !errors.Is(err, cacheapi.ErrUnavailable) {
		t.Fatalf("5xx narinfo: %v", err)
	}
	if info, err := good.NarInfo(ctx, "1c6kzph7l0dcbfmjap64f0czdafn3b7x"); info != nil || err != nil {
		t.Fatalf("absent narinfo: %v %v", info, err)
	}
}
