package app_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bos55/concordia/internal/app"
	"github.com/bos55/concordia/internal/auth"
	"github.com/bos55/concordia/internal/config"
	"github.com/bos55/concordia/internal/store/upload"
)

// parse builds a config from TOML with the state in a fresh directory
// and no local store, whatever this machine has.
func parse(t *testing.T, extra string) (*config.Config, string) {
	t.Helper()
	dir := t.TempDir()
	cfg, err := config.Parse([]byte(fmt.Sprintf("state_dir = %q\nnix_db_path = \"\"\n%s", filepath.Join(dir, "state"), extra)))
	if err != nil {
		t.Fatal(err)
	}
	return cfg, dir
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestOpenWithoutUploads(t *testing.T) {
	cfg, _ := parse(t, "")
	a, err := app.Open(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if a.Upload != nil || a.Local != nil || a.Stores != 0 || a.Tokens != nil {
		t.Errorf("stores opened that the config does not name: %+v", a)
	}
	if len(a.Keys) != 1 || !a.GeneratedKey {
		t.Errorf("no key configured: want one generated, got %d (generated %t)", len(a.Keys), a.GeneratedKey)
	}
	hs := httptest.NewServer(a.Server)
	defer hs.Close()
	if code, body := get(t, hs.URL+"/nix-cache-info"); code != 200 || !strings.Contains(body, "StoreDir: /nix/store") {
		t.Errorf("nix-cache-info: %d %s", code, body)
	}
	req, _ := http.NewRequest(http.MethodPut, hs.URL+"/"+strings.Repeat("0", 32)+".narinfo", strings.NewReader("x"))
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode/100 == 2 {
		t.Errorf("a PUT accepted without uploads configured: %v %v", resp, err)
	}
}

func TestOpenWithUploads(t *testing.T) {
	_, line, _ := auth.Generate("ci", auth.Write)
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	os.WriteFile(tokens, []byte(line+"\n"), 0o600)
	cfg, _ := parse(t, fmt.Sprintf("priority = 7\n[upload]\ndir = %q\ntokens_file = %q\n", filepath.Join(dir, "uploads"), tokens))
	a, err := app.Open(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if a.Upload == nil || a.Stores != 1 || a.Tokens == nil {
		t.Fatalf("upload store not opened: %+v", a)
	}
	hs := httptest.NewServer(a.Server)
	defer hs.Close()
	if code, body := get(t, hs.URL+"/nix-cache-info"); code != 200 || !strings.Contains(body, "Priority: 7") {
		t.Errorf("nix-cache-info: %d %s", code, body)
	}
	// The server holds the store: maintenance must say so, by type.
	if _, _, err := app.OpenUploads(context.Background(), cfg, nil); !errors.Is(err, upload.ErrLocked) {
		t.Errorf("OpenUploads beside a running app: %v, want upload.ErrLocked", err)
	}
	a.Close()
	us, done, err := app.OpenUploads(context.Background(), cfg, nil)
	if err != nil {
		t.Fatalf("OpenUploads after Close: %v", err)
	}
	if paths, err := us.Paths(context.Background()); err != nil || len(paths) != 0 {
		t.Errorf("paths of a new store: %v %v", paths, err)
	}
	done()
}

func TestOpenRefusesBadConfigs(t *testing.T) {
	dir := t.TempDir()
	badTokens := filepath.Join(dir, "tokens")
	os.WriteFile(badTokens, []byte("not a tokens line\n"), 0o600)
	notDir := filepath.Join(dir, "file")
	os.WriteFile(notDir, nil, 0o644)
	for _, tc := range []struct {
		name, toml string
		private    bool
		want       string
	}{
		{name: "private without tokens", private: true, want: "tokens_file"},
		{name: "unreadable key", toml: fmt.Sprintf("sign_key_paths = [%q]\n", filepath.Join(dir, "missing.sec")), want: "missing.sec"},
		{name: "refused tokens line", toml: fmt.Sprintf("[upload]\ntokens_file = %q\n", badTokens), want: badTokens},
		{name: "upload dir is a file", toml: fmt.Sprintf("[upload]\ndir = %q\n", notDir), want: notDir},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, _ := parse(t, tc.toml)
			cfg.Upload.Private = tc.private // past Validate, which refuses it too
			a, err := app.Open(context.Background(), cfg, nil)
			if err == nil {
				a.Close()
				t.Fatal("opened")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not name %q", err, tc.want)
			}
		})
	}
	cfg, _ := parse(t, "")
	if _, _, err := app.OpenUploads(context.Background(), cfg, nil); !errors.Is(err, app.ErrNoUploadStore) {
		t.Errorf("OpenUploads without [upload] dir: %v", err)
	}
}
