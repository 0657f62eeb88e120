package server_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/bos55/concordia/internal/auth"
	"github.com/bos55/concordia/internal/server"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/upload"
	"github.com/bos55/concordia/pkg/narinfo"
)

// tokenSet is one token per permission, in a tokens file.
type tokenSet struct {
	path                               string
	toks                               *auth.Tokens
	read, write, readWrite, pin, admin string
	lines                              []string
}

func newTokenSet(t testing.TB) *tokenSet {
	t.Helper()
	ts := &tokenSet{path: filepath.Join(t.TempDir(), "tokens")}
	gen := func(name string, p auth.Perm) string {
		tok, line, err := auth.Generate(name, p)
		if err != nil {
			t.Fatal(err)
		}
		ts.lines = append(ts.lines, line)
		return tok
	}
	ts.read = gen("laptop", auth.Read)
	ts.write = gen("push", auth.Write)
	ts.readWrite = gen("ci", auth.Read|auth.Write)
	ts.pin = gen("deploy", auth.Pin)
	ts.admin = gen("ops", auth.Admin)
	if err := os.WriteFile(ts.path, []byte(strings.Join(ts.lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var err error
	if ts.toks, err = auth.Load(ts.path, nil); err != nil {
		t.Fatal(err)
	}
	ts.toks.SetRecheck(0)
	return ts
}

// hashes returns the SHA-256 hex of every token, as the file holds them.
func (ts *tokenSet) hashes() []string {
	var out []string
	for _, l := range ts.lines {
		out = append(out, l[strings.LastIndexByte(l, ':')+1:])
	}
	return out
}

// call makes one request and returns status, body and headers.
func call(t testing.TB, method, url, token string, body []byte) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
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
	return resp.StatusCode, string(b), resp.Header
}

// privateCache serves a local-like store (with logs and realisations)
// with private = true, and an upload store too when withUploads.
type privateCache struct {
	url  string
	srv  *server.Server
	ts   *tokenSet
	urls map[string][]string // route name -> URLs that answer 200 with a read token
}

func newPrivateCache(t *testing.T, withUploads bool) *privateCache {
	t.Helper()
	f := newFixture(t, nil) // only for its paths
	f.st.logs[f.a+"-app.drv"] = []byte("building app\n")
	realID := "sha256:" + strings.Repeat("ab", 32) + "!out"
	drv := hashOf("d") + "-x.drv"
	rs := &realStore{fakeStore: f.st, docs: map[string][]byte{realID: []byte(`{"id":"x"}`), drv + "!out": []byte(`{"v":2}`)}}
	pc := &privateCache{ts: newTokenSet(t)}
	opts := server.Options{Stores: []store.Store{rs}, Keys: []narinfo.SecretKey{f.key}, Private: true, Tokens: pc.ts.toks}
	var up *upload.Store
	if withUploads {
		var err error
		up, err = upload.Open(context.Background(), t.TempDir(), upload.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { up.Close() })
		opts.Stores = append(opts.Stores, up)
		opts.Upload = &server.Uploads{Store: up}
	}
	var err error
	pc.srv, err = server.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(pc.srv)
	t.Cleanup(hs.Close)
	pc.url = hs.URL
	nh := narHashOf(f)
	pc.urls = map[string][]string{
		"cache-info":  {"/nix-cache-info"},
		"narinfo":     {"/" + f.a + ".narinfo"},
		"ls":          {"/" + f.a + ".ls"},
		"log":         {"/log/" + f.a + "-app.drv"},
		"serve":       {"/serve/" + f.a + "/share/doc"},
		"realisation": {"/realisations/" + realID + ".doi"},
		"build-trace": {"/build-trace-v2/" + drv + "/out.doi"},
		"nar": {
			"/nar/" + f.a + "-" + nh + ".nar",
			"/nar/" + f.a + "-" + nh + ".nar.zst",
			"/nar/" + nh + ".nar?hash=" + f.a,
			"/nar/" + f.a + ".nar",
		},
		"metrics": {"/metrics"},
		"search":  {"/search", "/search?q=" + f.a, "/search?q=/nix/store/" + f.a + "-app"},
		"fleet":   {"/fleet"},
	}
	if withUploads {
		p := newUpPath(t, "private-upload", []byte("uploaded"))
		ctx := context.Background()
		if _, err := up.PutNAR(ctx, p.fileName, bytes.NewReader(p.file)); err != nil {
			t.Fatal(err)
		}
		if err := up.PutNarInfo(ctx, p.hash, strings.NewReader(p.info.String())); err != nil {
			t.Fatal(err)
		}
		id := strings.Repeat("ef", 20)
		doc := `{"archive":"../nar/` + p.fileName + `","member":"lib/debug/.build-id/ef/` + id[2:] + `.debug"}`
		if err := up.PutDebugInfo(ctx, id, strings.NewReader(doc)); err != nil {
			t.Fatal(err)
		}
		pc.urls["upload-nar"] = []string{"/nar/" + p.fileName}
		pc.urls["debuginfo"] = []string{"/debuginfo/" + id, "/debuginfo/" + id + ".debug"}
		pc.urls["narinfo"] = append(pc.urls["narinfo"], "/"+p.hash+".narinfo")
		rep := `{"id":"d-1","start":"2026-12-01T10:00:00Z","hosts":[{"node":"web1","result":"ok"}],"failed":[]}`
		if _, err := up.PutDeployReport(ctx, "d-1", "deploy", strings.NewReader(rep)); err != nil {
			t.Fatal(err)
		}
		pc.urls["deploys"] = []string{"/api/deploys", "/api/deploys?node=web1"}
		pc.urls["deploy"] = []string{"/api/deploys/d-1"}
		pc.urls["fleet-history"] = []string{"/api/fleet"}
		pc.urls["fleet-deploy"] = []string{"/fleet/deploys/d-1"}
	}
	return pc
}

// Route classes: every route of the router must be in exactly one.
var (
	openRoutes  = []string{"landing", "health", "version"}
	writeRoutes = []string{"put-cache-info", "put-nar", "put-narinfo", "put-ls", "put-log", "put-realisation", "put-build-trace", "put-debuginfo"}
	pinRoutes   = []string{"pin", "unpin"}
	adminRoutes = []string{"pins", "gc", "verify", "forget"}
	// The deploy history: PUT with pin or write; its reads are read
	// routes (above, with uploads) or 501 without (deploys_test.go).
	historyRoutes = []string{"put-deploy", "deploys", "deploy", "fleet-history", "fleet-deploy"}
)

func classified(name string) bool {
	for _, set := range [][]string{openRoutes, writeRoutes, pinRoutes, adminRoutes, historyRoutes} {
		if slices.Contains(set, name) {
			return true
		}
	}
	return false
}

// TestPrivateEveryReadRoute plays an anonymous reader of a private cache,
// with and without uploads (the hole was private = true with a tokens file
// and no upload dir: the whole local store was served to anyone). Every
// read route of the router, in every URL form, answers 401 without
// credentials or with a bad token, 403 to a token without read, and 200 to
// a read token; only /, /health and /version are open.
func TestPrivateEveryReadRoute(t *testing.T) {
	for _, withUploads := range []bool{false, true} {
		name := "local store only"
		if withUploads {
			name = "with uploads"
		}
		t.Run(name, func(t *testing.T) {
			pc := newPrivateCache(t, withUploads)
			ts := pc.ts
			seen := map[string]bool{}
			for _, rt := range server.Routes(pc.srv) {
				if seen[rt.Name] {
					continue
				}
				seen[rt.Name] = true
				if slices.Contains(openRoutes, rt.Name) {
					for _, m := range []string{"GET", "HEAD"} {
						path := map[string]string{"landing": "/", "health": "/health", "version": "/version"}[rt.Name]
						if code, _, _ := call(t, m, pc.url+path, "", nil); code != 200 {
							t.Errorf("%s %s (open): %d", m, path, code)
						}
					}
					continue
				}
				urls, isRead := pc.urls[rt.Name]
				if !isRead {
					if !classified(rt.Name) {
						t.Errorf("route %q (%s %v) is in no class: decide who may use it and add it here", rt.Name, rt.Path, rt.Methods)
					}
					continue
				}
				for _, u := range urls {
					for _, m := range []string{"GET", "HEAD"} {
						code, _, h := call(t, m, pc.url+u, "", nil)
						if code != 401 || !strings.Contains(h.Get("WWW-Authenticate"), "Basic") {
							t.Errorf("anonymous %s %s: %d %v", m, u, code, h)
						}
						if code, _, _ := call(t, m, pc.url+u, "not-a-token", nil); code != 401 {
							t.Errorf("bad token %s %s: %d", m, u, code)
						}
						for _, tok := range []string{ts.write, ts.pin, ts.admin} {
							if code, _, _ := call(t, m, pc.url+u, tok, nil); code != 403 {
								t.Errorf("token without read %s %s: %d", m, u, code)
							}
						}
						code, body, h := call(t, m, pc.url+u, ts.read, nil)
						if code != 200 || m == "GET" && body == "" {
							t.Errorf("read token %s %s: %d %q", m, u, code, body)
						}
						if cc := h.Get("Cache-Control"); cc != "" && !strings.HasPrefix(cc, "private") && cc != "no-store" {
							t.Errorf("%s %s: Cache-Control %q lets a shared cache keep it", m, u, cc)
						}
					}
				}
			}
			for name := range pc.urls {
				if !seen[name] {
					t.Errorf("the table names route %q, which the router does not have", name)
				}
			}
			// A GET with a body goes around the narinfo fast path: guarded too.
			req, _ := http.NewRequest("GET", pc.url+pc.urls["narinfo"][0], strings.NewReader("x"))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 401 {
				t.Errorf("narinfo GET with a body: %d", resp.StatusCode)
			}
		})
	}
}

// TestPrivateNeedsTokens: a private cache with no way to authenticate is
// refused by the constructor, never served open.
func TestPrivateNeedsTokens(t *testing.T) {
	_, err := server.New(server.Options{Stores: []store.Store{newFakeStore()}, Private: true})
	if !errors.Is(err, server.ErrPrivateWithoutTokens) {
		t.Fatalf("private without tokens: %v", err)
	}
	up, err := upload.Open(context.Background(), t.TempDir(), upload.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	_, err = server.New(server.Options{Stores: []store.Store{up}, Upload: &server.Uploads{Store: up}, Private: true})
	if !errors.Is(err, server.ErrPrivateWithoutTokens) {
		t.Fatalf("private with uploads but no tokens: %v", err)
	}
}
