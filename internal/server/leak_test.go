package server_test

import (
	"bytes"
	"fmt"
	"github.com/bos55/concordia/internal/store/upload"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bos55/concordia/internal/syncbuf"

	"github.com/bos55/concordia/internal/server"
	"github.com/bos55/concordia/internal/store"
)

// TestErrorBodiesHideServerPaths: what the server answers never shows its
// own file-system paths or a token's hash, whatever error text reaches the
// answer: verify's report of a damaged file, a 5xx from a store, a 4xx
// whose error names a file, every refusal. The log keeps the detail, with
// the request id the client was given.
func TestErrorBodiesHideServerPaths(t *testing.T) {
	dir := t.TempDir()
	logs := &syncbuf.Buffer{}
	local := newFakeStore()
	e := newUpEnvOpts(t, dir, false, []store.Store{local}, true, func(o *server.Options) {
		o.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}, upload.Options{InlineMax: -1}) // a NAR file is removed from under it
	tokBytes, _ := os.ReadFile(e.tokens)
	var hashes []string
	for _, l := range strings.Split(strings.TrimSpace(string(tokBytes)), "\n") {
		hashes = append(hashes, l[strings.LastIndexByte(l, ':')+1:])
	}
	secret := []string{dir, e.tokens, filepath.Dir(e.tokens), os.TempDir() + "/"}
	check := func(what string, body string) {
		t.Helper()
		for _, s := range secret {
			if strings.Contains(body, s) {
				t.Errorf("%s: the answer shows the server path %s:\n%s", what, s, body)
			}
		}
		for _, h := range hashes {
			if strings.Contains(body, h) || strings.Contains(body, h[:16]) {
				t.Errorf("%s: the answer shows a token hash:\n%s", what, body)
			}
		}
	}

	// verify, with a NAR file gone from under the store.
	p := newUpPath(t, "leak-verify", []byte("verify me"))
	e.upload(t, p)
	if err := os.Remove(filepath.Join(dir, "blobs", p.fileName)); err != nil {
		t.Fatal(err)
	}
	code, body := e.do(t, "POST", "/api/verify", e.adminTok, nil)
	if code != 200 || !strings.Contains(body, "DAMAGED "+p.fileName+": cannot open") {
		t.Fatalf("verify: %d %s", code, body)
	}
	check("verify", body)
	if !strings.Contains(logs.String(), filepath.Join(dir, "blobs", p.fileName)) {
		t.Errorf("the log lost the path of the damaged file:\n%s", logs)
	}

	// A 5xx and a 4xx whose errors name the server's files.
	h := hashOf("leak-missing")
	for _, tc := range []struct {
		err  error
		code int
	}{
		{fmt.Errorf("open %s/db.sqlite: input/output error", dir), 500},
		{fmt.Errorf("%w: index record in %s/db corrupt", store.ErrInvalid, dir), 400},
	} {
		local.mu.Lock()
		local.infoErr = tc.err
		local.mu.Unlock()
		for _, target := range []string{"/" + h + ".narinfo", "/" + h + ".ls", "/serve/" + h + "/x"} {
			req, _ := http.NewRequest("GET", e.url+target, nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			var b bytes.Buffer
			b.ReadFrom(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.code {
				t.Errorf("%s with %v: %d %s", target, tc.err, resp.StatusCode, b.String())
			}
			check(target, b.String())
			id := resp.Header.Get("X-Request-Id")
			if id == "" || !strings.Contains(logs.String(), "req="+id) {
				t.Errorf("%s: the log has no line for request %q", target, id)
			}
		}
	}
	local.mu.Lock()
	local.infoErr = nil
	local.mu.Unlock()
	if !strings.Contains(logs.String(), dir+"/db") {
		t.Errorf("the log lost the store errors' detail:\n%s", logs)
	}

	// Every refusal, with every kind of token, and /health with a tokens
	// file that has a refused line.
	for _, tok := range []string{"", "bogus", e.readTok, e.writeTok, e.pinTok, hashes[0]} {
		for _, a := range []struct{ method, path string }{
			{"PUT", "/nar/" + p.fileName}, {"POST", "/api/gc"}, {"GET", "/api/pins"},
			{"DELETE", "/api/pins/" + p.hash}, {"POST", "/api/verify"}, {"PUT", "/" + p.hash + ".narinfo"},
		} {
			_, body := e.do(t, a.method, a.path, tok, []byte("x"))
			check(a.method+" "+a.path, body)
		}
	}
	os.WriteFile(e.tokens, append(tokBytes, []byte("broken:"+hashes[0]+"\n")...), 0o600)
	code, body = e.do(t, "GET", "/health", "", nil)
	if code != 200 || !strings.Contains(body, "line 5 refused") {
		t.Fatalf("health: %d %s", code, body)
	}
	check("health", body)
	_, body = e.do(t, "GET", "/metrics", "", nil)
	if !strings.Contains(body, "concordia_tokens_file_refused_lines 1") {
		t.Errorf("metrics do not count the refused line")
	}
	check("metrics", body)
}

// TestRedactKeepsStorePaths: store paths (what clients name) stay in 4xx
// answers; anything else absolute goes.
func TestRedactKeepsStorePaths(t *testing.T) {
	e := newUpEnv(t, t.TempDir(), false)
	dep := newUpPath(t, "redact-dep", []byte("dep"))
	p := newUpPath(t, "redact-top", []byte("top"), dep.base)
	e.do(t, "PUT", "/nar/"+p.fileName, e.writeTok, p.file)
	code, msg := e.do(t, "PUT", "/"+p.hash+".narinfo", e.writeTok, []byte(p.info.String()))
	if code != 400 || !strings.Contains(msg, "/nix/store/"+dep.base) || strings.Contains(msg, "<path>") {
		t.Fatalf("missing reference: %d %q", code, msg)
	}
	bad := strings.Replace(p.info.String(), "StorePath: /nix/store/", "StorePath: /srv/secret/nix/store/", 1)
	code, msg = e.do(t, "PUT", "/"+p.hash+".narinfo", e.writeTok, []byte(bad))
	if code != 400 || strings.Contains(msg, "/srv/secret") || !strings.Contains(msg, "<path>") || !strings.Contains(msg, "request ") {
		t.Fatalf("foreign store dir: %d %q", code, msg)
	}
}
