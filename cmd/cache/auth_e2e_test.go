package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/app"
	"github.com/bos55/concordia/internal/auth"
	"github.com/bos55/concordia/internal/config"
)

// request makes one request with a bearer token ("" for none).
func request(t *testing.T, method, url, token string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// within polls cond for up to 5 s: revocation is promised within about a
// second, the bound only keeps a broken build from hanging.
func within(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 5s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestServePrivateWithoutTokensRefuses: `cache serve` with private = true
// and no tokens_file does not start (it would have to serve everybody).
func TestServePrivateWithoutTokensRefuses(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "cache.toml")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf("bind = \"127.0.0.1:0\"\nstate_dir = %q\n[upload]\nprivate = true\n", filepath.Join(dir, "state"))), 0o644)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, cacheBinary(t), "serve", "--config", cfgPath).CombinedOutput()
	if err == nil || ctx.Err() != nil || !strings.Contains(string(out), "tokens_file") || strings.Contains(string(out), "Serving") {
		t.Fatalf("serve with private = true and no tokens file: %v\n%s", err, out)
	}
	// The constructor refuses it too, should validation ever be skipped.
	cfg, err := config.Parse([]byte(fmt.Sprintf("state_dir = %q\nnix_db_path = \"\"\n", dir)))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Upload.Private = true
	if a, err := app.Open(context.Background(), cfg, slog.New(slog.DiscardHandler)); err == nil {
		a.Close()
		t.Fatal("app.Open built a private cache without tokens")
	}
}

// TestServePrivateWithoutUploads: private = true with a tokens file and no
// upload dir (the configuration that served the whole local store to
// anyone) needs a read token on every read route, through the real
// binary and through app.Open with the machine's store when there is one.
func TestServePrivateWithoutUploads(t *testing.T) {
	dir := t.TempDir()
	readTok, readLine, _ := auth.Generate("laptop", auth.Read)
	writeTok, writeLine, _ := auth.Generate("ci", auth.Write)
	tokens := filepath.Join(dir, "tokens")
	os.WriteFile(tokens, []byte(readLine+"\n"+writeLine+"\n"), 0o600)
	cfgPath := filepath.Join(dir, "cache.toml")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf(`bind = "127.0.0.1:0"
state_dir = %q
nix_db_path = %q
[upload]
private = true
tokens_file = %q
`, filepath.Join(dir, "state"), filepath.Join(dir, "no-nix-db.sqlite"), tokens)), 0o644)
	p := startServe(t, "--config", cfgPath)
	for _, path := range []string{"/nix-cache-info", "/" + strings.Repeat("0", 32) + ".narinfo", "/metrics"} {
		if code, _ := request(t, "GET", p.url+path, ""); code != 401 {
			t.Errorf("anonymous %s: %d", path, code)
		}
		if code, _ := request(t, "GET", p.url+path, writeTok); code != 403 {
			t.Errorf("write-only token %s: %d", path, code)
		}
	}
	if code, body := request(t, "GET", p.url+"/nix-cache-info", readTok); code != 200 || !strings.Contains(body, "StoreDir") {
		t.Errorf("read token: %d %s", code, body)
	}
	if code, _ := request(t, "GET", p.url+"/health", ""); code != 200 {
		t.Errorf("health: %d", code)
	}

	// The machine's own store, through the app constructor.
	if _, err := os.Stat(config.DefaultNixDBPath); err != nil || os.Geteuid() != 0 {
		t.Log("no Nix database readable here: the local store part is skipped")
		return
	}
	cfg, err := config.Parse([]byte(fmt.Sprintf("state_dir = %q\n[upload]\nprivate = true\ntokens_file = %q\n", filepath.Join(dir, "state2"), tokens)))
	if err != nil {
		t.Fatal(err)
	}
	a, err := app.Open(context.Background(), cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	hs := httptest.NewServer(a.Server)
	defer hs.Close()
	out, err := exec.Command("nix", "--extra-experimental-features", "nix-command", "path-info", "--all").Output()
	if err != nil || len(strings.Fields(string(out))) == 0 {
		t.Logf("no valid store path to read (%v): the local store part is skipped", err)
		return
	}
	real := strings.Fields(string(out))[0]
	hash := filepath.Base(real)[:32]
	if code, _ := request(t, "GET", hs.URL+"/"+hash+".narinfo", ""); code != 401 {
		t.Errorf("anonymous narinfo of a local path: %d", code)
	}
	if code, _ := request(t, "GET", hs.URL+"/"+hash+".narinfo", readTok); code != 200 {
		t.Errorf("read token, narinfo of a local path: %d", code)
	}
}

// TestServeRevocationAndSIGHUP runs the real binary and rotates its tokens
// file the ways that used to leave revoked tokens working: same size and
// mtime, a symlink swap into a directory where every file has the same
// mtime (as in the Nix store), and an edit with a malformed line. Each
// time the revoked token is refused within about a second. SIGHUP rereads
// the file and never stops the server; SIGTERM still does, cleanly.
func TestServeRevocationAndSIGHUP(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	os.Mkdir(store, 0o755)
	epoch := time.Unix(1, 0)
	version := func(name string, lines ...string) string {
		p := filepath.Join(store, name)
		if err := os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(p, epoch, epoch)
		return p
	}
	a, aLine, _ := auth.Generate("ci-1", auth.Write)
	b, bLine, _ := auth.Generate("ci-2", auth.Write)
	c, cLine, _ := auth.Generate("ci-3", auth.Write)
	admin, adminLine, _ := auth.Generate("ops", auth.Admin)
	tokens := filepath.Join(dir, "tokens")
	if err := os.Symlink(version("v1", aLine, adminLine), tokens); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "cache.toml")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf(`bind = "127.0.0.1:0"
state_dir = %q
nix_db_path = %q
[upload]
dir = %q
tokens_file = %q
`, filepath.Join(dir, "state"), filepath.Join(dir, "no-nix-db.sqlite"), filepath.Join(dir, "upload"), tokens)), 0o644)
	p := startServe(t, "--config", cfgPath)
	works := func(tok string) bool {
		code, _ := request(t, "PUT", p.url+"/nix-cache-info", tok)
		return code/100 == 2
	}
	if !works(a) || works(b) {
		t.Fatal("initial tokens")
	}

	// 1. The file the link points at is rewritten in place: same size
	// (same-length name and token), mtime set back.
	v1 := filepath.Join(store, "v1")
	st, _ := os.Stat(v1)
	os.WriteFile(v1, []byte(bLine+"\n"+adminLine+"\n"), 0o600)
	os.Chtimes(v1, epoch, epoch)
	if st2, _ := os.Stat(v1); st2.Size() != st.Size() || !st2.ModTime().Equal(st.ModTime()) {
		t.Fatal("the rotation must keep size and mtime")
	}
	within(t, "same size and mtime: revoked token refused", func() bool { return !works(a) })
	if !works(b) {
		t.Fatal("the new token does not work")
	}

	// 2. The link is swapped to another file of the same size and mtime.
	tmp := tokens + ".new"
	os.Symlink(version("v2", cLine, adminLine), tmp)
	if err := os.Rename(tmp, tokens); err != nil {
		t.Fatal(err)
	}
	within(t, "symlink swap: revoked token refused", func() bool { return !works(b) })
	if !works(c) {
		t.Fatal("the swapped-in token does not work")
	}

	// 3. An edit that revokes c, adds b back on a malformed line and keeps
	// the admin: the previous version is not kept, the malformed line is
	// refused and reported by number.
	os.Symlink(version("v3", adminLine, "ci-2:write:"+strings.Split(bLine, ":")[2]+":oops"), tmp)
	os.Rename(tmp, tokens)
	within(t, "malformed edit: revoked token refused", func() bool { return !works(c) })
	if works(b) {
		t.Fatal("the token on the malformed line works")
	}
	if code, body := request(t, "POST", p.url+"/api/gc?dry-run=true", admin); code != 200 {
		t.Fatalf("the valid line of the malformed file is refused: %d %s", code, body)
	}
	if _, body := request(t, "GET", p.url+"/health", ""); !strings.Contains(body, "line 2 refused") {
		t.Errorf("health does not report the malformed line:\n%s", body)
	}
	if !strings.Contains(p.stderr.String(), "line=2") {
		t.Errorf("the log does not name the malformed line:\n%s", p.stderr)
	}

	// 4. SIGHUP rereads at once and the server keeps running.
	for i := range 3 {
		if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		within(t, "SIGHUP logged", func() bool { return strings.Count(p.stderr.String(), "SIGHUP: tokens file reread") > i })
	}
	select {
	case <-p.exited:
		t.Fatalf("SIGHUP ended the server: %v\n%s", p.err, p.stderr)
	case <-time.After(200 * time.Millisecond):
	}
	if code, _ := request(t, "GET", p.url+"/nix-cache-info", ""); code != 200 {
		t.Fatalf("serving after SIGHUP: %d", code)
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.exited:
		if p.err != nil {
			t.Fatalf("SIGTERM: exit %v\n%s", p.err, p.stderr)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("SIGTERM did not stop the server")
	}
}

// TestTokenCommandPermissions: `cache token` makes lines for every
// permission; unknown ones are a usage error.
func TestTokenCommandPermissions(t *testing.T) {
	for perm, want := range map[string]string{"write": ":write:", "read,write": ":read,write:", "pin": ":pin:", "read,pin": ":read,pin:", "admin": ":admin:"} {
		code, out := runUploadCmd(t, "token", "deploy", "--perm", perm)
		if code != 0 || !strings.Contains(out, "tokens file line: deploy"+want) {
			t.Errorf("--perm %s: %d %s", perm, code, out)
		}
	}
	if code, _ := runUploadCmd(t, "token", "x", "--perm", "root"); code != 2 {
		t.Errorf("--perm root: exit %d", code)
	}
}
