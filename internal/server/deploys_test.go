package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/bos55/concordia/internal/limits"
	"github.com/bos55/concordia/internal/server"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/upload"
)

func testReport(id string, results ...string) []byte {
	var hosts, failed []string
	for i := 0; i+1 < len(results); i += 2 {
		hosts = append(hosts, fmt.Sprintf(`{"node":%q,"hostname":"10.0.0.%d","path":"/nix/store/%s-nixos-system-%s","mode":"switch","result":%q,"start":"2026-12-01T10:00:00Z","ms":900,"steps":[]}`,
			results[i], i, hashOf(id+results[i]), results[i], results[i+1]))
		if results[i+1] != "ok" {
			failed = append(failed, fmt.Sprintf("%q", results[i]))
		}
	}
	return []byte(fmt.Sprintf(`{"id":%q,"mode":"switch","start":"2026-12-01T10:00:00Z","ms":1000,"hosts":[%s],"failed":[%s]}`,
		id, strings.Join(hosts, ","), strings.Join(failed, ",")))
}

// historyOf is everything the deploy history holds.
func historyOf(t *testing.T, up *upload.Store) string {
	t.Helper()
	ctx := context.Background()
	page, err := up.DeployReports(ctx, upload.MaxDeployList, "")
	if err != nil {
		t.Fatal(err)
	}
	nodes, err := up.DeployNodes(ctx, upload.MaxNodeResults)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := json.Marshal(struct {
		P *store.DeployPage
		N []store.NodeHistory
	}{page, nodes})
	s := string(out)
	for _, r := range page.Reports {
		doc, err := up.DeployReport(ctx, r.ID)
		if err != nil {
			t.Fatal(err)
		}
		s += "\n" + string(doc)
	}
	return s
}

// TestDeployHistoryAPI: the deployer's pin token stores a report (201),
// a retry of the same bytes is 200, and anyone reads the history of a
// public cache: the list, the report as sent, a node's results, the
// fleet; the counter says what became of each PUT.
func TestDeployHistoryAPI(t *testing.T) {
	e := newUpEnv(t, t.TempDir(), false)
	r1 := testReport("d-1", "web1", "ok", "db1", "ok")
	r2 := testReport("d-2", "web1", "rolled-back")
	if code, msg := e.do(t, "PUT", "/api/deploys/d-1", e.pinTok, r1); code != 201 {
		t.Fatalf("pin token: %d %s", code, msg)
	}
	if code, msg := e.do(t, "PUT", "/api/deploys/d-2", e.writeTok, r2); code != 201 {
		t.Fatalf("write token: %d %s", code, msg)
	}
	if code, msg := e.do(t, "PUT", "/api/deploys/d-2", e.pinTok, r2); code != 200 || !strings.Contains(msg, "already") {
		t.Fatalf("retry: %d %s", code, msg)
	}
	code, body := e.do(t, "GET", "/api/deploys", "", nil)
	var page store.DeployPage
	if code != 200 || json.Unmarshal([]byte(body), &page) != nil || len(page.Reports) != 2 || page.Reports[0].ID != "d-2" ||
		page.Reports[0].Sender != "ci" || page.Reports[1].Sender != "deploy" {
		t.Fatalf("list: %d %s", code, body)
	}
	code, body = e.do(t, "GET", "/api/deploys?limit=1", "", nil)
	page = store.DeployPage{}
	if code != 200 || json.Unmarshal([]byte(body), &page) != nil || len(page.Reports) != 1 || page.Next == "" {
		t.Fatalf("page 1: %d %s", code, body)
	}
	code, body = e.do(t, "GET", "/api/deploys?limit=1&before="+page.Next, "", nil)
	page = store.DeployPage{}
	if code != 200 || json.Unmarshal([]byte(body), &page) != nil || len(page.Reports) != 1 || page.Reports[0].ID != "d-1" || page.Next != "" {
		t.Fatalf("page 2: %d %s", code, body)
	}
	if code, body := e.do(t, "GET", "/api/deploys/d-1", "", nil); code != 200 || body != string(r1) {
		t.Fatalf("get: %d %s", code, body)
	}
	code, body = e.do(t, "GET", "/api/deploys?node=web1", "", nil)
	var web store.NodeHistory
	if code != 200 || json.Unmarshal([]byte(body), &web) != nil || len(web.Last) != 2 || web.Last[0].Result != "rolled-back" ||
		web.LastOK == nil || web.LastOK.Deploy != "d-1" {
		t.Fatalf("node: %d %s", code, body)
	}
	code, body = e.do(t, "GET", "/api/fleet?limit=1", "", nil)
	var fleet []store.NodeHistory
	if code != 200 || json.Unmarshal([]byte(body), &fleet) != nil || len(fleet) != 2 || fleet[1].Node != "web1" || len(fleet[1].Last) != 1 {
		t.Fatalf("fleet: %d %s", code, body)
	}
	for _, miss := range []string{"/api/deploys/d-9", "/api/deploys?node=nope"} {
		if code, body := e.do(t, "GET", miss, "", nil); code != 404 || !strings.Contains(body, "deploy") && !strings.Contains(body, "node") {
			t.Errorf("%s: %d %q", miss, code, body)
		}
	}
	for _, bad := range []string{"/api/deploys?limit=0", "/api/deploys?limit=x", "/api/deploys?limit=1001", "/api/deploys?before=x", "/api/fleet?limit=-1"} {
		if code, _ := e.do(t, "GET", bad, "", nil); code != 400 {
			t.Errorf("%s: %d", bad, code)
		}
	}
	e.do(t, "PUT", "/api/deploys/d-3", e.pinTok, []byte("not a report"))
	_, metrics := e.do(t, "GET", "/metrics", "", nil)
	for _, want := range []string{`concordia_deploy_reports_total{result="stored"} 2`, `concordia_deploy_reports_total{result="unchanged"} 1`, `concordia_deploy_reports_total{result="refused"} 1`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// TestDeployHistoryAttacks plays everyone who may reach PUT
// /api/deploys: nobody and a read token are refused before a byte is
// read; a write (or pin) token sending an oversize, malformed, id-
// mismatched or overwriting report, or a path-traversing id, is refused
// as its own error. Nothing is stored or changed by any of them.
func TestDeployHistoryAttacks(t *testing.T) {
	e := newUpEnvOpts(t, t.TempDir(), false, nil, false, func(o *server.Options) {
		o.Limits = limits.Limits{MaxDeployReportSize: 16 << 10}
	}, upload.Options{Limits: limits.Limits{MaxDeployReportSize: 16 << 10}})
	good := testReport("d-1", "web1", "ok")
	if code, msg := e.do(t, "PUT", "/api/deploys/d-1", e.pinTok, good); code != 201 {
		t.Fatalf("%d %s", code, msg)
	}
	before := historyOf(t, e.up)
	next := testReport("d-2", "web1", "ok")
	oversize := append(next[:len(next)-1:len(next)-1], []byte(`,"pad":"`+strings.Repeat("x", 16<<10)+`"}`)...)
	attacks := []struct {
		name, tok, path string
		body            []byte
		want            int
	}{
		{"nobody", "", "/api/deploys/d-2", next, 401},
		{"bad token", "not-a-token", "/api/deploys/d-2", next, 401},
		{"read token", e.readTok, "/api/deploys/d-2", next, 403},
		{"admin token overwriting", e.adminTok, "/api/deploys/d-1", testReport("d-1", "web1", "failed"), 409},
		{"overwrite", e.writeTok, "/api/deploys/d-1", testReport("d-1", "web1", "failed"), 409},
		{"overwrite by the pin token", e.pinTok, "/api/deploys/d-1", append(append([]byte{}, good...), ' '), 409},
		{"oversize", e.writeTok, "/api/deploys/d-2", oversize, 413},
		{"malformed", e.writeTok, "/api/deploys/d-2", []byte(`{"id":"d-2","hosts":[`), 400},
		{"not a report", e.writeTok, "/api/deploys/d-2", []byte(`{"id":"d-2"}`), 400},
		{"html result", e.writeTok, "/api/deploys/d-2", []byte(`{"id":"d-2","start":"2026-12-01T10:00:00Z","hosts":[{"node":"web1","result":"<script>"}]}`), 400},
		{"id mismatch", e.writeTok, "/api/deploys/d-3", next, 400},
		{"id of another stored", e.writeTok, "/api/deploys/d-2", testReport("d-1", "web1", "ok"), 400},
		{"traversal", e.writeTok, "/api/deploys/../d-2", next, 404},
		{"encoded traversal", e.writeTok, "/api/deploys/..%2Fd-2", next, 404},
		{"encoded slash", e.writeTok, "/api/deploys/a%2Fb", next, 404},
		{"dot dot", e.writeTok, "/api/deploys/..", next, 404}, // unclean paths are refused by the router
		{"bad id", e.writeTok, "/api/deploys/-x", next, 400},
		{"long id", e.writeTok, "/api/deploys/" + strings.Repeat("a", 65), next, 400},
		{"nul id", e.writeTok, "/api/deploys/d%002", next, 404},
	}
	for _, a := range attacks {
		t.Run(a.name, func(t *testing.T) {
			code, msg := e.do(t, "PUT", a.path, a.tok, a.body)
			if code != a.want {
				t.Errorf("%d %q, want %d", code, msg, a.want)
			}
			if a.want == 413 && !strings.Contains(msg, limits.KeyDeployReportSize) {
				t.Errorf("413 does not name the key: %q", msg)
			}
			if now := historyOf(t, e.up); now != before {
				t.Fatalf("the history changed:\n%s\n%s", before, now)
			}
		})
	}
	// The read token may read (a public cache), never write.
	if code, _ := e.do(t, "GET", "/api/deploys/d-1", e.readTok, nil); code != 200 {
		t.Errorf("read token GET: %d", code)
	}
}

// TestDeployHistoryPrivate: on a private cache the history is read with
// a read token only, like every other read.
func TestDeployHistoryPrivate(t *testing.T) {
	e := newUpEnv(t, t.TempDir(), true)
	if code, msg := e.do(t, "PUT", "/api/deploys/d-1", e.pinTok, testReport("d-1", "web1", "ok")); code != 201 {
		t.Fatalf("%d %s", code, msg)
	}
	for _, u := range []string{"/api/deploys", "/api/deploys/d-1", "/api/deploys?node=web1", "/api/fleet"} {
		if code, _ := e.do(t, "GET", u, "", nil); code != 401 {
			t.Errorf("anonymous %s: %d", u, code)
		}
		for _, tok := range []string{e.pinTok, e.adminTok} {
			if code, body := e.do(t, "GET", u, tok, nil); code != 403 || strings.Contains(body, "web1") {
				t.Errorf("token without read %s: %d %q", u, code, body)
			}
		}
		if code, body := e.do(t, "GET", u, e.readTok, nil); code != 200 || !strings.Contains(body, "web1") && !strings.Contains(body, "d-1") {
			t.Errorf("read token %s: %d %q", u, code, body)
		}
	}
}

// TestDeployHistoryNoUploads: a cache without an upload store says it
// keeps no history (501), to readers and writers, and a private one
// still asks readers for their token first.
func TestDeployHistoryNoUploads(t *testing.T) {
	f := newFixture(t, nil)
	for _, rq := range []struct{ method, path string }{{"GET", "/api/deploys"}, {"GET", "/api/deploys/d-1"}, {"GET", "/api/fleet"}, {"PUT", "/api/deploys/d-1"}} {
		rec := f.do(rq.method, rq.path)
		if rec.Code != http.StatusNotImplemented || !strings.Contains(rec.Body.String(), "no deploy history") {
			t.Errorf("%s %s: %d %q", rq.method, rq.path, rec.Code, rec.Body)
		}
	}
	ts := newTokenSet(t)
	p := newFixture(t, func(o *server.Options) { o.Private, o.Tokens = true, ts.toks })
	if rec := p.do("GET", "/api/deploys"); rec.Code != 401 {
		t.Errorf("private, anonymous: %d", rec.Code)
	}
	if rec := p.do("GET", "/api/deploys", "Authorization", "Bearer "+ts.read); rec.Code != 501 {
		t.Errorf("private, read token: %d", rec.Code)
	}
	if !reflect.DeepEqual(f.do("GET", "/api/deploys").Header().Get("Cache-Control"), "no-store") {
		t.Errorf("501 may be cached")
	}
}
