package upload_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/limits"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/upload"
)

// deployReport renders a report of the shape deploy.Report writes: id,
// mode, start, ms, hosts (node -> result), failed.
func deployReport(id string, start time.Time, results ...string) []byte {
	type host struct {
		Node     string    `json:"node"`
		Hostname string    `json:"hostname"`
		Path     string    `json:"path"`
		Mode     string    `json:"mode"`
		Result   string    `json:"result"`
		Error    string    `json:"error,omitempty"`
		Start    time.Time `json:"start"`
		Millis   float64   `json:"ms"`
		Steps    []any     `json:"steps"`
	}
	rep := struct {
		ID     string    `json:"id"`
		Mode   string    `json:"mode"`
		Start  time.Time `json:"start"`
		Millis float64   `json:"ms"`
		Hosts  []host    `json:"hosts"`
		Failed []string  `json:"failed"`
	}{ID: id, Mode: "switch", Start: start, Millis: 1234.5, Failed: []string{}}
	for i := 0; i+1 < len(results); i += 2 {
		h := host{Node: results[i], Hostname: "10.0.0." + fmt.Sprint(i), Mode: "switch", Result: results[i+1], Start: start, Millis: 1000,
			Path: "/nix/store/" + hashPart(id+results[i]) + "-nixos-system-" + results[i], Steps: []any{}}
		if h.Result != "ok" {
			h.Error = "it broke"
			rep.Failed = append(rep.Failed, h.Node)
		}
		rep.Hosts = append(rep.Hosts, h)
	}
	b, _ := json.Marshal(rep)
	return b
}

func putReport(t *testing.T, s *upload.Store, id string, body []byte) (bool, error) {
	t.Helper()
	return s.PutDeployReport(context.Background(), id, "deploy", bytes.NewReader(body))
}

// historyState is everything the history holds, to show a refusal left
// it alone.
type historyState struct {
	Page  *store.DeployPage
	Nodes []store.NodeHistory
	Docs  map[string]string
}

func history(t *testing.T, s *upload.Store) historyState {
	t.Helper()
	ctx := context.Background()
	page, err := s.DeployReports(ctx, upload.MaxDeployList, "")
	if err != nil {
		t.Fatal(err)
	}
	nodes, err := s.DeployNodes(ctx, upload.MaxNodeResults)
	if err != nil {
		t.Fatal(err)
	}
	st := historyState{Page: page, Nodes: nodes, Docs: map[string]string{}}
	for _, r := range page.Reports {
		doc, err := s.DeployReport(ctx, r.ID)
		if err != nil {
			t.Fatal(err)
		}
		st.Docs[r.ID] = string(doc)
	}
	return st
}

// TestDeployReports: a report is stored as sent and listed with its
// summary; a node's view has its results newest first and its last ok;
// the same bytes again are a no-op, other bytes under the id 409.
func TestDeployReports(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir(), upload.Options{})
	if page, err := s.DeployReports(ctx, 10, ""); err != nil || len(page.Reports) != 0 || page.Next != "" {
		t.Fatalf("empty history: %+v %v", page, err)
	}
	if _, err := s.DeployReport(ctx, "d-1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("missing report: %v", err)
	}
	if _, err := s.NodeDeploys(ctx, "web1", 5); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("missing node: %v", err)
	}
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	r1 := deployReport("d-1", t0, "web1", "ok", "db1", "ok")
	r2 := deployReport("d-2", t0.Add(time.Hour), "web1", "rolled-back")
	r3 := deployReport("d-3", t0.Add(2*time.Hour), "web1", "failed", "db1", "ok")
	for _, r := range []struct {
		id   string
		body []byte
	}{{"d-1", r1}, {"d-2", r2}, {"d-3", r3}} {
		if created, err := putReport(t, s, r.id, r.body); err != nil || !created {
			t.Fatalf("put %s: %v %v", r.id, created, err)
		}
	}
	if doc, err := s.DeployReport(ctx, "d-2"); err != nil || !bytes.Equal(doc, r2) {
		t.Fatalf("get d-2: %v\n%s", err, doc)
	}
	page, err := s.DeployReports(ctx, 10, "")
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, r := range page.Reports {
		ids = append(ids, r.ID)
	}
	if !reflect.DeepEqual(ids, []string{"d-3", "d-2", "d-1"}) || page.Next != "" {
		t.Fatalf("list %v next %q", ids, page.Next)
	}
	s3 := page.Reports[0]
	if s3.Kind != "push" || s3.Mode != "switch" || s3.Hosts != 2 || !reflect.DeepEqual(s3.Failed, []string{"web1"}) ||
		s3.Sender != "deploy" || s3.Size != len(r3) || !s3.Start.Equal(t0.Add(2*time.Hour)) || s3.Stored.IsZero() {
		t.Fatalf("summary %+v", s3)
	}
	web, err := s.NodeDeploys(ctx, "web1", 10)
	if err != nil {
		t.Fatal(err)
	}
	var results []string
	for _, e := range web.Last {
		results = append(results, e.Deploy+":"+e.Result)
	}
	if !reflect.DeepEqual(results, []string{"d-3:failed", "d-2:rolled-back", "d-1:ok"}) || web.LastOK == nil || web.LastOK.Deploy != "d-1" {
		t.Fatalf("web1 %v last ok %+v", results, web.LastOK)
	}
	if e := web.Last[0]; e.Node != "web1" || e.Error != "it broke" || e.Mode != "switch" || !strings.Contains(e.Path, "nixos-system-web1") {
		t.Fatalf("entry %+v", e)
	}
	if web, _ := s.NodeDeploys(ctx, "web1", 1); len(web.Last) != 1 || web.LastOK.Deploy != "d-1" {
		t.Fatalf("web1 limit 1: %+v", web)
	}
	nodes, err := s.DeployNodes(ctx, 1)
	if err != nil || len(nodes) != 2 || nodes[0].Node != "db1" || nodes[1].Node != "web1" || nodes[0].Last[0].Deploy != "d-3" {
		t.Fatalf("nodes %+v %v", nodes, err)
	}

	// A CI retry: the same bytes, nothing changes.
	before := history(t, s)
	if created, err := putReport(t, s, "d-2", r2); err != nil || created {
		t.Fatalf("retry: %v %v", created, err)
	}
	// Another report under a stored id: what happened is not rewritten.
	forged := deployReport("d-2", t0.Add(time.Hour), "web1", "ok")
	if _, err := putReport(t, s, "d-2", forged); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("overwrite: %v", err)
	}
	if now := history(t, s); !reflect.DeepEqual(now, before) {
		t.Fatalf("a refused report changed the history")
	}
}

// TestDeployReportsPages: the cursor walks the history newest first, page
// by page, and stays valid when the oldest reports are dropped meanwhile.
func TestDeployReportsPages(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir(), upload.Options{MaxDeployReports: 7})
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	for i := 1; i <= 7; i++ {
		id := fmt.Sprintf("d-%d", i)
		if _, err := putReport(t, s, id, deployReport(id, t0, "web1", "ok")); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	before := ""
	for pages := 0; ; pages++ {
		page, err := s.DeployReports(ctx, 3, before)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range page.Reports {
			got = append(got, r.ID)
		}
		if pages == 0 {
			// Two more arrive, dropping d-1 and d-2.
			for _, id := range []string{"d-8", "d-9"} {
				if _, err := putReport(t, s, id, deployReport(id, t0, "web1", "ok")); err != nil {
					t.Fatal(err)
				}
			}
		}
		if page.Next == "" {
			break
		}
		before = page.Next
	}
	if want := []string{"d-7", "d-6", "d-5", "d-4", "d-3"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("pages %v, want %v", got, want)
	}
	for _, bad := range []string{"x", "-1", "0", "1e3"} {
		if _, err := s.DeployReports(ctx, 3, bad); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("cursor %q: %v", bad, err)
		}
	}
}

// TestDeployReportsBounded: past upload.deploy_reports_max the oldest
// reports go, with their entries in the node records, and a node no kept
// report names is gone; the bound holds across a reopen.
func TestDeployReportsBounded(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := openAt(t, dir, upload.Options{MaxDeployReports: 3})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	put := func(s *upload.Store, id string, results ...string) {
		t.Helper()
		if _, err := putReport(t, s, id, deployReport(id, t0, results...)); err != nil {
			t.Fatal(err)
		}
	}
	put(s, "d-1", "old", "ok", "web1", "ok")
	put(s, "d-2", "web1", "failed")
	put(s, "d-3", "web1", "failed")
	put(s, "d-4", "web1", "failed")
	s.Close()
	s = openStore(t, dir, upload.Options{MaxDeployReports: 3})
	put(s, "d-5", "web1", "ok")
	page, err := s.DeployReports(ctx, 10, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Reports) != 3 || page.Reports[0].ID != "d-5" || page.Reports[2].ID != "d-3" {
		t.Fatalf("kept %+v", page.Reports)
	}
	for _, id := range []string{"d-1", "d-2"} {
		if _, err := s.DeployReport(ctx, id); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("dropped %s: %v", id, err)
		}
	}
	if _, err := s.NodeDeploys(ctx, "old", 10); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("node of dropped reports only: %v", err)
	}
	web, err := s.NodeDeploys(ctx, "web1", 10)
	if err != nil || len(web.Last) != 3 || web.Last[2].Deploy != "d-3" || web.LastOK == nil || web.LastOK.Deploy != "d-5" {
		t.Fatalf("web1 %+v %v", web, err)
	}
	// A dropped id may come again: it is new then.
	if created, err := putReport(t, s, "d-1", deployReport("d-1", t0, "web1", "ok")); err != nil || !created {
		t.Fatalf("dropped id again: %v %v", created, err)
	}
}

// TestDeployReportsNodeBound: a node's record keeps its last
// MaxNodeResults results and its last ok however old.
func TestDeployReportsNodeBound(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir(), upload.Options{})
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	for i := 0; i <= upload.MaxNodeResults+2; i++ {
		id, result := fmt.Sprintf("d-%d", i), "failed"
		if i == 0 {
			result = "ok"
		}
		if _, err := putReport(t, s, id, deployReport(id, t0, "web1", result)); err != nil {
			t.Fatal(err)
		}
	}
	web, err := s.NodeDeploys(ctx, "web1", 1000)
	if err != nil || len(web.Last) != upload.MaxNodeResults || web.Last[0].Deploy != fmt.Sprintf("d-%d", upload.MaxNodeResults+2) ||
		web.LastOK == nil || web.LastOK.Deploy != "d-0" {
		t.Fatalf("%d results, last ok %+v, %v", len(web.Last), web.LastOK, err)
	}
}

// TestDeployReportsRefused plays a token holder sending what is not a
// deploy report: each is refused as the client's error (ErrInvalid, or
// the size bound naming its key) and the history stays as it was.
func TestDeployReportsRefused(t *testing.T) {
	s := openStore(t, t.TempDir(), upload.Options{Limits: limits.Limits{MaxDeployReportSize: 8 << 10}})
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	if _, err := putReport(t, s, "d-1", deployReport("d-1", t0, "web1", "ok")); err != nil {
		t.Fatal(err)
	}
	good := string(deployReport("d-2", t0, "web1", "ok", "db1", "failed"))
	host := `{"node":"web1","result":"ok"}`
	cases := []struct {
		name, id, body string
	}{
		{"empty", "d-2", ""},
		{"not JSON", "d-2", "hello"},
		{"array", "d-2", "[" + good + "]"},
		{"null", "d-2", "null"},
		{"string", "d-2", `"d-2"`},
		{"two documents", "d-2", good + good},
		{"trailing garbage", "d-2", good + "x"},
		{"not UTF-8", "d-2", strings.Replace(good, "web1", "web\xff", 1)},
		{"id mismatch", "d-3", good},
		{"no id", "d-2", `{"start":"2026-12-01T10:00:00Z","hosts":[` + host + `]}`},
		{"path traversal id", "../d-2", strings.Replace(good, `"d-2"`, `"../d-2"`, 1)},
		{"slash id", "a/b", strings.Replace(good, `"d-2"`, `"a/b"`, 1)},
		{"dot id", "..", strings.Replace(good, `"d-2"`, `".."`, 1)},
		{"long id", strings.Repeat("a", 65), strings.Replace(good, `"d-2"`, `"`+strings.Repeat("a", 65)+`"`, 1)},
		{"newline id", "d-2\n", strings.Replace(good, `"d-2"`, `"d-2\n"`, 1)},
		{"no start", "d-2", `{"id":"d-2","hosts":[` + host + `]}`},
		{"bad start", "d-2", `{"id":"d-2","start":"yesterday","hosts":[` + host + `]}`},
		{"no hosts", "d-2", `{"id":"d-2","start":"2026-12-01T10:00:00Z"}`},
		{"null hosts", "d-2", `{"id":"d-2","start":"2026-12-01T10:00:00Z","hosts":null}`},
		{"zero hosts", "d-2", `{"id":"d-2","start":"2026-12-01T10:00:00Z","hosts":[]}`},
		{"host without node", "d-2", `{"id":"d-2","start":"2026-12-01T10:00:00Z","hosts":[{"result":"ok"}]}`},
		{"host without result", "d-2", `{"id":"d-2","start":"2026-12-01T10:00:00Z","hosts":[{"node":"web1"}]}`},
		{"node twice", "d-2", `{"id":"d-2","start":"2026-12-01T10:00:00Z","hosts":[` + host + `,` + host + `]}`},
		{"control in node", "d-2", `{"id":"d-2","start":"2026-12-01T10:00:00Z","hosts":[{"node":"web\u0007","result":"ok"}]}`},
		{"bidi in node", "d-2", `{"id":"d-2","start":"2026-12-01T10:00:00Z","hosts":[{"node":"web\u202e1","result":"ok"}]}`},
		{"long node", "d-2", `{"id":"d-2","start":"2026-12-01T10:00:00Z","hosts":[{"node":"` + strings.Repeat("n", 256) + `","result":"ok"}]}`},
		{"odd result", "d-2", `{"id":"d-2","start":"2026-12-01T10:00:00Z","hosts":[{"node":"web1","result":"<b>OK</b>"}]}`},
		{"odd mode", "d-2", `{"id":"d-2","mode":"Switch!","start":"2026-12-01T10:00:00Z","hosts":[` + host + `]}`},
		{"odd kind", "d-2", `{"id":"d-2","kind":"x y","start":"2026-12-01T10:00:00Z","hosts":[` + host + `]}`},
		{"bad path", "d-2", `{"id":"d-2","start":"2026-12-01T10:00:00Z","hosts":[{"node":"web1","result":"ok","path":"/etc/passwd"}]}`},
		{"negative ms", "d-2", `{"id":"d-2","ms":-1,"start":"2026-12-01T10:00:00Z","hosts":[` + host + `]}`},
		{"huge ms", "d-2", `{"id":"d-2","ms":1e300,"start":"2026-12-01T10:00:00Z","hosts":[` + host + `]}`},
		{"wrong type", "d-2", `{"id":"d-2","start":"2026-12-01T10:00:00Z","hosts":[{"node":1,"result":"ok"}]}`},
		{"failed not a host", "d-2", `{"id":"d-2","start":"2026-12-01T10:00:00Z","hosts":[` + host + `],"failed":["db9"]}`},
		{"failed twice", "d-2", `{"id":"d-2","start":"2026-12-01T10:00:00Z","hosts":[` + host + `,{"node":"db1","result":"failed"}],"failed":["db1","db1"]}`},
		{"more failed than hosts", "d-2", `{"id":"d-2","start":"2026-12-01T10:00:00Z","hosts":[` + host + `],"failed":["web1","web1"]}`},
		{"overwrite", "d-1", string(deployReport("d-1", t0, "web1", "failed"))},
	}
	before := history(t, s)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := putReport(t, s, c.id, []byte(c.body))
			if err == nil || !errors.Is(err, store.ErrInvalid) && !errors.Is(err, store.ErrConflict) {
				t.Fatalf("accepted or not the client's error: %v", err)
			}
			if now := history(t, s); !reflect.DeepEqual(now, before) {
				t.Fatalf("a refused report changed the history")
			}
		})
	}
	t.Run("over size", func(t *testing.T) {
		big := deployReport("d-2", t0, "web1", "ok")
		big = append(big[:len(big)-1], []byte(`,"padding":"`+strings.Repeat("x", 8<<10)+`"}`)...)
		_, err := putReport(t, s, "d-2", big)
		var le *limits.Error
		if !errors.As(err, &le) || le.Key != limits.KeyDeployReportSize || le.HTTPStatus() != http.StatusRequestEntityTooLarge {
			t.Fatalf("over size: %v", err)
		}
		if now := history(t, s); !reflect.DeepEqual(now, before) {
			t.Fatalf("a refused report changed the history")
		}
	})
	// Fields the history does not read are kept as sent (a newer
	// deployer's report, or another kind).
	reboot := `{"id":"r-1","kind":"reboot","start":"2026-12-01T10:00:00Z","hosts":[{"node":"web1","result":"rolled-back","bootId":"x"}],"failed":["web1"],"waves":[["web1"]]}`
	if _, err := putReport(t, s, "r-1", []byte(reboot)); err != nil {
		t.Fatal(err)
	}
	if doc, _ := s.DeployReport(context.Background(), "r-1"); string(doc) != reboot {
		t.Fatalf("stored %s", doc)
	}
	if web, _ := s.NodeDeploys(context.Background(), "web1", 1); web.Last[0].Kind != "reboot" || web.Last[0].Result != "rolled-back" {
		t.Fatalf("reboot entry %+v", web.Last[0])
	}
}

// FuzzDeployReport: any body under any id is stored and read back as
// sent, with a summary that keeps the history's rules, or refused as
// the client's error leaving the history unchanged; never a panic.
func FuzzDeployReport(f *testing.F) {
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	f.Add("d-1", deployReport("d-1", t0, "web1", "ok", "db1", "failed"))
	f.Add("d-2", []byte(`{"id":"d-2","start":"2026-12-01T10:00:00Z","hosts":[{"node":"a","result":"ok"}],"failed":[]}`))
	f.Add("d-3", []byte(`{"id":"d-3","kind":"reboot","start":"2026-12-01T10:00:00Z","hosts":[{"node":"a","result":"rolled-back","path":"/nix/store/00000000000000000000000000000000-x"}],"failed":["a"]}`))
	f.Add("../x", []byte(`{"id":"../x"}`))
	f.Add("d-4", []byte(`{"id":"d-4","ID":"d-5","start":"2026-12-01T10:00:00Z","hosts":[{"node":"a","result":"ok"}]}`))
	s, err := openAt(f, f.TempDir(), upload.Options{MaxDeployReports: 20, Limits: limits.Limits{MaxDeployReportSize: 64 << 10}})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.Close() })
	f.Fuzz(func(t *testing.T, id string, body []byte) {
		ctx := context.Background()
		old, oldErr := s.DeployReport(ctx, id)
		created, err := s.PutDeployReport(ctx, id, "fuzz", bytes.NewReader(body))
		if err != nil {
			var le *limits.Error
			if !errors.Is(err, store.ErrInvalid) && !errors.Is(err, store.ErrConflict) && !errors.As(err, &le) {
				t.Fatalf("not the client's error: %v", err)
			}
			if now, nowErr := s.DeployReport(ctx, id); !bytes.Equal(now, old) || (nowErr == nil) != (oldErr == nil) {
				t.Fatalf("a refused report changed %q", id)
			}
			return
		}
		if !json.Valid(body) {
			t.Fatalf("stored a report that is not JSON: %q", body)
		}
		got, err := s.DeployReport(ctx, id)
		if err != nil || !bytes.Equal(got, body) {
			t.Fatalf("stored %q, read %q (%v)", body, got, err)
		}
		if oldErr == nil && created {
			t.Fatalf("an existing report counted as created")
		}
		page, err := s.DeployReports(ctx, upload.MaxDeployList, "")
		if err != nil {
			t.Fatal(err)
		}
		if len(page.Reports) > 20 {
			t.Fatalf("history holds %d reports, the bound is 20", len(page.Reports))
		}
		for _, r := range page.Reports {
			if r.Hosts < 1 || len(r.Failed) > r.Hosts || r.Size <= 0 {
				t.Fatalf("summary %+v", r)
			}
		}
	})
}

// TestDeployReportsReplicas: two replicas sharing one index take reports
// at once, some the same (a retry that reached the other replica): each
// id is created once, the bound holds, both replicas list the same
// history, and the node records name only kept reports.
func TestDeployReportsReplicas(t *testing.T) {
	ctx := context.Background()
	a, b, _ := newReplicaPair(t, upload.Options{MaxDeployReports: 5})
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	same := deployReport("d-same", t0, "web1", "ok")
	var created atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := range 12 {
		wg.Add(2)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("d-%d", i)
			s := []*upload.Store{a, b}[i%2]
			if _, err := s.PutDeployReport(ctx, id, "deploy", bytes.NewReader(deployReport(id, t0, "web1", "failed", "db1", "ok"))); err != nil {
				errs <- err
			}
		}()
		go func() {
			defer wg.Done()
			c, err := []*upload.Store{a, b}[i%2].PutDeployReport(ctx, "d-same", "deploy", bytes.NewReader(same))
			if err != nil {
				errs <- err
			}
			if c {
				created.Add(1)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// At least once: more when the bound dropped it before a late retry.
	if n := created.Load(); n < 1 {
		t.Errorf("the retried report was created %d times", n)
	}
	ha, hb := history(t, a), history(t, b)
	if !reflect.DeepEqual(ha, hb) {
		t.Fatalf("the replicas disagree:\n%+v\n%+v", ha, hb)
	}
	if len(ha.Page.Reports) != 5 {
		t.Fatalf("%d reports kept, the bound is 5", len(ha.Page.Reports))
	}
	for _, n := range ha.Nodes {
		for _, e := range n.Last {
			if _, ok := ha.Docs[e.Deploy]; !ok {
				t.Errorf("node %s names dropped report %s", n.Node, e.Deploy)
			}
		}
	}
}

// TestDeployReportsNodesBounded: reports naming ever new nodes (a token
// filling the fleet view) drop the oldest reports once the kept ones
// name more than MaxDeployNodes nodes; a summary names at most 20 of its
// failed nodes and counts them all.
func TestDeployReportsNodesBounded(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir(), upload.Options{})
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	perReport := upload.MaxDeployHosts
	reports := upload.MaxDeployNodes/perReport + 1
	for r := range reports + 1 {
		var results []string
		for i := range perReport {
			results = append(results, fmt.Sprintf("n%d-%d", r, i), "failed")
		}
		id := fmt.Sprintf("d-%d", r)
		if _, err := putReport(t, s, id, deployReport(id, t0, results...)); err != nil {
			t.Fatal(err)
		}
	}
	page, err := s.DeployReports(ctx, 100, "")
	if err != nil {
		t.Fatal(err)
	}
	nodes, err := s.DeployNodes(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes) > upload.MaxDeployNodes || len(nodes) != len(page.Reports)*perReport || page.Reports[0].ID != fmt.Sprintf("d-%d", reports) {
		t.Fatalf("%d nodes, %d reports kept, newest %s", len(nodes), len(page.Reports), page.Reports[0].ID)
	}
	if _, err := s.NodeDeploys(ctx, "n0-0", 1); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a node of the dropped report: %v", err)
	}
	if sum := page.Reports[0]; len(sum.Failed) != 20 || sum.FailedCount != perReport {
		t.Errorf("summary names %d failed of %d", len(sum.Failed), sum.FailedCount)
	}
}

// BenchmarkPutDeployReport: a 100-host push's report into a history
// holding the default 1000 (each PUT also drops the oldest), and a page
// of 20 read back.
func BenchmarkPutDeployReport(b *testing.B) {
	ctx := context.Background()
	s, err := openAt(b, b.TempDir(), upload.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	var results []string
	for i := range 100 {
		results = append(results, fmt.Sprintf("host%d", i), "ok")
	}
	put := func(i int) {
		id := fmt.Sprintf("d-%d", i)
		if _, err := s.PutDeployReport(ctx, id, "deploy", bytes.NewReader(deployReport(id, t0, results...))); err != nil {
			b.Fatal(err)
		}
	}
	for i := range upload.DefaultMaxDeployReports {
		put(i)
	}
	b.Run("put", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			put(upload.DefaultMaxDeployReports + i)
		}
	})
	b.Run("list20", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if _, err := s.DeployReports(ctx, 20, ""); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("fleet", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if _, err := s.DeployNodes(ctx, 10); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestDeployReportRebootKeepsLastOK: a reboot report that ended ok is in
// the node's results, but the deploy that put its system there is still
// the last ok push (a reboot installs nothing).
func TestDeployReportRebootKeepsLastOK(t *testing.T) {
	s, err := openAt(t, t.TempDir(), upload.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	t0 := time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	if _, err := putReport(t, s, "d-1", deployReport("d-1", t0, "web1", "ok")); err != nil {
		t.Fatal(err)
	}
	var reboot map[string]any
	json.Unmarshal(deployReport("reboot-1", t0.Add(time.Hour), "web1", "ok"), &reboot)
	reboot["kind"] = "reboot"
	body, _ := json.Marshal(reboot)
	if _, err := putReport(t, s, "reboot-1", body); err != nil {
		t.Fatal(err)
	}
	web, err := s.NodeDeploys(context.Background(), "web1", 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(web.Last) != 2 || web.Last[0].Deploy != "reboot-1" || web.Last[0].Kind != "reboot" || web.LastOK == nil || web.LastOK.Deploy != "d-1" {
		t.Fatalf("web1: last %+v, last ok %+v", web.Last, web.LastOK)
	}
}
