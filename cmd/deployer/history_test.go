package main

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bos55/concordia/internal/auth"
	"github.com/bos55/concordia/internal/server"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/upload"
	"github.com/bos55/concordia/pkg/narinfo"
)

// historyCache serves an empty upload store (so every closure check
// refuses its host before ssh) with a pin token in a file.
func historyCache(t *testing.T) (url, tokenFile string, up *upload.Store) {
	t.Helper()
	up, err := upload.Open(context.Background(), t.TempDir(), upload.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	tok, line, _ := auth.Generate("deploy", auth.Pin)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "tokens"), []byte(line+"\n"), 0o600)
	toks, err := auth.Load(filepath.Join(dir, "tokens"), nil)
	if err != nil {
		t.Fatal(err)
	}
	tokenFile = filepath.Join(dir, "token")
	os.WriteFile(tokenFile, []byte(tok+"\n"), 0o600)
	srv, err := server.New(server.Options{Stores: []store.Store{up}, Upload: &server.Uploads{Store: up, Tokens: toks}})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	return hs.URL, tokenFile, up
}

// TestPushSendsReport drives `deployer push --cache` whose hosts the
// closure check refuses (the cache has none of their paths): the push
// fails as it should, its report lands in the cache's history with the
// push's token, the same as --json wrote it, and `deployer history`
// shows it; --no-report sends nothing, and a cache that cannot take the
// report is a warning that leaves the exit status alone.
func TestPushSendsReport(t *testing.T) {
	url, tokenFile, up := historyCache(t)
	_, pub, err := narinfo.GenerateKey("test-1")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	nodes := filepath.Join(dir, "nodes.json")
	os.WriteFile(nodes, []byte(pushNodes), 0o600)
	jsonFile := filepath.Join(dir, "report.json")
	push := func(extra ...string) (int, string) {
		t.Helper()
		args := append([]string{"push", "--file", nodes, "--on", "web1,db1", "--cache", url, "--trusted-key", pub.String(),
			"--cache-token-file", tokenFile}, extra...)
		code, _, errs := runDeployer(t, args...)
		return code, errs
	}
	code, errs := push("--id", "d-cli-1", "--json", jsonFile)
	if code != 1 || !strings.Contains(errs, "deploy report d-cli-1 sent") {
		t.Fatalf("push: exit %d\n%s", code, errs)
	}
	doc, err := up.DeployReport(context.Background(), "d-cli-1")
	if err != nil {
		t.Fatal(err)
	}
	written, _ := os.ReadFile(jsonFile)
	var a, b any
	json.Unmarshal(doc, &a)
	json.Unmarshal(written, &b)
	if ja, _ := json.Marshal(a); string(ja) != func() string { jb, _ := json.Marshal(b); return string(jb) }() {
		t.Fatalf("the cache has\n%s\n--json wrote\n%s", doc, written)
	}
	page, _ := up.DeployReports(context.Background(), 10, "")
	if len(page.Reports) != 1 || page.Reports[0].Sender != "deploy" || page.Reports[0].Hosts != 2 {
		t.Fatalf("history %+v", page.Reports)
	}

	if code, errs := push("--id", "d-cli-2", "--no-report"); code != 1 || strings.Contains(errs, "deploy report") {
		t.Fatalf("--no-report: exit %d\n%s", code, errs)
	}
	if _, err := up.DeployReport(context.Background(), "d-cli-2"); err == nil {
		t.Fatal("--no-report sent the report")
	}
	// The same id again is another report: refused, a warning only.
	if code, errs := push("--id", "d-cli-1"); code != 1 || !strings.Contains(errs, "warning: deploy report d-cli-1 not sent") || !strings.Contains(errs, "409") {
		t.Fatalf("id reused: exit %d\n%s", code, errs)
	}
	// A token without pin or write: a warning naming the permission.
	bad := filepath.Join(dir, "bad-token")
	os.WriteFile(bad, []byte("not-a-token\n"), 0o600)
	if code, errs := push("--id", "d-cli-3", "--cache-token-file", bad); code != 1 || !strings.Contains(errs, "warning: deploy report d-cli-3 not sent") {
		t.Fatalf("bad token: exit %d\n%s", code, errs)
	}

	code, out, errs := runDeployer(t, "history", "--cache", url)
	if code != 0 || !strings.Contains(out, "d-cli-1") || !strings.Contains(out, "2: ") || strings.Contains(out, "d-cli-2") {
		t.Fatalf("history: exit %d\n%s\n%s", code, out, errs)
	}
	code, out, errs = runDeployer(t, "history", "--cache", url, "--node", "db1")
	if code != 0 || !strings.Contains(out, "db1: no kept report deployed it") || !strings.Contains(out, "refused") || !strings.Contains(out, "nixos-system-db1") {
		t.Fatalf("history --node: exit %d\n%s\n%s", code, out, errs)
	}
	code, out, errs = runDeployer(t, "history", "--cache", url, "--json")
	if code != 0 || !strings.Contains(out, `"id": "d-cli-1"`) {
		t.Fatalf("history --json: exit %d\n%s\n%s", code, out, errs)
	}
	code, out, errs = runDeployer(t, "history", "--cache", url, "d-cli-1")
	if code != 0 || !strings.Contains(out, `"node": "web1"`) {
		t.Fatalf("history ID: exit %d\n%s\n%s", code, out, errs)
	}
	for _, args := range [][]string{{"history"}, {"history", "--cache", url, "--limit", "0"}, {"history", "--cache", url, "a", "b"}} {
		if code, _, _ := runDeployer(t, args...); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
	if code, _, errs := runDeployer(t, "history", "--cache", url, "d-nope"); code != 1 || !strings.Contains(errs, "404") {
		t.Errorf("missing id: exit %d %s", code, errs)
	}
}
