package auth_test

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/auth"
)

func writeTokens(t *testing.T, path string, lines ...string) {
	t.Helper()
	data := "# tokens\n" + strings.Join(lines, "\n") + "\n"
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestAuthorize(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "tokens")
	ciTok, ciLine, err := auth.Generate("ci", auth.Read|auth.Write)
	if err != nil {
		t.Fatal(err)
	}
	roTok, roLine, _ := auth.Generate("laptop", auth.Read)
	woTok, woLine, _ := auth.Generate("push", auth.Write)
	writeTokens(t, path, ciLine, roLine, woLine)
	toks, err := auth.Load(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	toks.SetRecheck(0)

	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) })
	h := toks.Require(auth.Write, ok)
	tests := []struct {
		name string
		set  func(r *http.Request)
		want int
	}{
		{"none", func(r *http.Request) {}, 401},
		{"bearer write", func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+ciTok) }, 204},
		{"bearer write-only", func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+woTok) }, 204},
		{"basic any user", func(r *http.Request) { r.SetBasicAuth("whoever", ciTok) }, 204},
		{"basic token name", func(r *http.Request) { r.SetBasicAuth("ci", ciTok) }, 204},
		{"basic token as user", func(r *http.Request) { r.SetBasicAuth(ciTok, "") }, 204},
		{"read-only writing", func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+roTok) }, 403},
		{"read-only basic", func(r *http.Request) { r.SetBasicAuth("x", roTok) }, 403},
		{"unknown", func(r *http.Request) { r.Header.Set("Authorization", "Bearer nope") }, 401},
		{"hash instead of token", func(r *http.Request) {
			r.Header.Set("Authorization", "Bearer "+strings.Split(ciLine, ":")[2])
		}, 401},
		{"garbage scheme", func(r *http.Request) { r.Header.Set("Authorization", "Digest x") }, 401},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("PUT", "/x.narinfo", nil)
			tc.set(r)
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			if w.Code != tc.want {
				t.Fatalf("status %d, want %d (%s)", w.Code, tc.want, w.Body)
			}
			if w.Code == 401 && !strings.Contains(w.Header().Get("WWW-Authenticate"), `Basic realm="concordia"`) {
				t.Fatalf("401 without WWW-Authenticate: %v", w.Header())
			}
		})
	}

	// Read permission: a write-only token may not read a private cache.
	rh := toks.Require(auth.Read, ok)
	r := httptest.NewRequest("GET", "/x.narinfo", nil)
	r.Header.Set("Authorization", "Bearer "+woTok)
	w := httptest.NewRecorder()
	rh.ServeHTTP(w, r)
	if w.Code != 403 {
		t.Fatalf("write-only reading: %d", w.Code)
	}
}

func TestRevokeReload(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "tokens")
	tok, line, _ := auth.Generate("ci", auth.Write)
	tok2, line2, _ := auth.Generate("other", auth.Write)
	writeTokens(t, path, line, line2)
	toks, err := auth.Load(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	toks.SetRecheck(0)
	if _, _, ok := toks.Check(tok); !ok {
		t.Fatal("token not accepted")
	}
	writeTokens(t, path, line2)
	// Make sure the mtime differs even on coarse-grained file systems.
	future := time.Now().Add(2 * time.Second)
	os.Chtimes(path, future, future)
	r := httptest.NewRequest("PUT", "/x", nil)
	r.SetBasicAuth("ci", tok)
	if _, err := toks.Authorize(r, auth.Write); err == nil || auth.Status(err) != 401 {
		t.Fatalf("revoked token: err %v", err)
	}
	if _, _, ok := toks.Check(tok2); !ok {
		t.Fatal("remaining token refused after reload")
	}
	// A malformed edit never keeps the previous version: the lines that
	// parse are used, the malformed one is refused.
	os.WriteFile(path, []byte("broken line\n"+line2+"\n"), 0o600)
	os.Chtimes(path, future.Add(time.Second), future.Add(time.Second))
	if _, _, ok := toks.Check(tok2); !ok {
		t.Fatal("a malformed line dropped the valid one")
	}
	if _, _, ok := toks.Check(tok); ok {
		t.Fatal("a malformed edit brought back the revoked token")
	}
	// Removing the file revokes everything.
	os.Remove(path)
	if _, _, ok := toks.Check(tok2); ok {
		t.Fatal("token still valid after the file was removed")
	}
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	for _, bad := range []string{
		"ci:write",
		"ci:root:" + strings.Repeat("0", 64),
		"ci:write:abc",
		":write:" + strings.Repeat("0", 64),
	} {
		path := filepath.Join(dir, "t")
		os.WriteFile(path, []byte(bad+"\n"), 0o600)
		if _, err := auth.Load(path, nil); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if _, err := auth.Load(filepath.Join(dir, "missing"), nil); err != nil {
		t.Errorf("missing file: %v", err)
	}
}

// FuzzAuthorize: any Authorization header is a clean 401/403 or a match,
// never a panic, and only the real token matches.
func FuzzAuthorize(f *testing.F) {
	path := filepath.Join(f.TempDir(), "tokens")
	tok, line, _ := auth.Generate("ci", auth.Write)
	os.WriteFile(path, []byte(line+"\n"), 0o600)
	toks, err := auth.Load(path, nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Add("Bearer " + tok)
	f.Add("Basic Y2k6eA==")
	f.Add("Basic !!!")
	f.Add("bearer")
	f.Fuzz(func(t *testing.T, h string) {
		r := httptest.NewRequest("PUT", "/x", nil)
		r.Header.Set("Authorization", h)
		name, err := toks.Authorize(r, auth.Write)
		if err == nil {
			got, _ := auth.Credentials(r)
			if got != tok || name != "ci" {
				t.Fatalf("%q accepted", h)
			}
		}
	})
}
