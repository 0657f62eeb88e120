package deploy_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/bos55/concordia/internal/auth"
	"github.com/bos55/concordia/internal/cacheapi"
	"github.com/bos55/concordia/internal/closure"
	"github.com/bos55/concordia/internal/deploy"
	"github.com/bos55/concordia/internal/hostverb"
	"github.com/bos55/concordia/internal/server"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/upload"
)

// missingCloser refuses every closure: the host is refused before it is
// touched, so a push needs no ssh and still makes a whole report.
type missingChecker struct{}

func (missingChecker) Check(ctx context.Context, root string) (*closure.Result, error) {
	return &closure.Result{Root: root, Missing: []string{root}}, nil
}

// TestSendReportLands: the report of a real push (deploy.Run) sent with
// the deploy job's pin token lands in a real cache's history and reads
// back as it was written, in the list and in each node's results; sent
// again (a retry) it is no error, and a cache without the history is
// ErrNoHistory.
func TestSendReportLands(t *testing.T) {
	up, err := upload.Open(context.Background(), t.TempDir(), upload.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	pin, line, _ := auth.Generate("deploy", auth.Pin)
	tokens := filepath.Join(t.TempDir(), "tokens")
	os.WriteFile(tokens, []byte(line+"\n"), 0o600)
	toks, err := auth.Load(tokens, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Options{Stores: []store.Store{up}, Upload: &server.Uploads{Store: up, Tokens: toks}})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	defer hs.Close()

	nodes := []deploy.Node{
		{Name: "web1", Hostname: "127.0.0.2", Path: "/nix/store/0c6kzph7l0dcbfmjap64f0czdafn3b7x-nixos-system-web1"},
		{Name: "db1", Hostname: "127.0.0.3", Path: "/nix/store/1c6kzph7l0dcbfmjap64f0czdafn3b7x-nixos-system-db1"},
	}
	rep := deploy.Run(context.Background(), nodes, deploy.Options{Mode: hostverb.Switch, ID: "d-history-1",
		Checker: func(deploy.Node) deploy.Checker { return missingChecker{} }})
	if len(rep.Failed) != 2 {
		t.Fatalf("report %+v", rep)
	}
	ctx := context.Background()
	c := &cacheapi.Client{URL: hs.URL, Token: pin}
	for range 2 {
		if err := deploy.SendReport(ctx, c, rep.ID, rep); err != nil {
			t.Fatal(err)
		}
	}
	want, _ := json.Marshal(rep)
	if doc, err := c.Deploy(ctx, rep.ID); err != nil || string(doc) != string(want) {
		t.Fatalf("read back %v:\n%s\nwant\n%s", err, doc, want)
	}
	page, err := c.Deploys(ctx, 0, "")
	if err != nil || len(page.Reports) != 1 || page.Reports[0].ID != rep.ID || page.Reports[0].Hosts != 2 || len(page.Reports[0].Failed) != 2 ||
		page.Reports[0].Kind != "push" || page.Reports[0].Mode != "switch" {
		t.Fatalf("list %+v %v", page, err)
	}
	h, err := c.NodeDeploys(ctx, "db1", 0)
	if err != nil || len(h.Last) != 1 || h.Last[0].Result != string(deploy.Refused) || h.Last[0].Path != nodes[1].Path || h.LastOK != nil {
		t.Fatalf("db1 %+v %v", h, err)
	}

	// The same id with another report: refused, the first one stays.
	rep.Hosts[0].Result = deploy.OK
	if err := deploy.SendReport(ctx, c, rep.ID, rep); err == nil {
		t.Fatal("another report under a sent id was taken")
	}
	// A cache serving no upload store keeps no history.
	bare, err := server.New(server.Options{Stores: []store.Store{up}})
	if err != nil {
		t.Fatal(err)
	}
	hb := httptest.NewServer(bare)
	defer hb.Close()
	if err := deploy.SendReport(ctx, &cacheapi.Client{URL: hb.URL}, rep.ID, rep); !errors.Is(err, deploy.ErrNoHistory) {
		t.Fatalf("no history: %v", err)
	}
	if err := deploy.SendReport(ctx, c, "../x", rep); err == nil {
		t.Fatal("a bad id was sent")
	}
}
