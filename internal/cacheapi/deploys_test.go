package cacheapi_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/bos55/concordia/internal/auth"
	"github.com/bos55/concordia/internal/cacheapi"
	"github.com/bos55/concordia/internal/server"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/upload"
)

// historyCache is a server with an upload store and a pin and a read
// token; withUploads false serves no upload store (no history).
func historyCache(t *testing.T, withUploads bool) (url, pin, read string) {
	t.Helper()
	pin, pl, _ := auth.Generate("deploy", auth.Pin)
	read, rl, _ := auth.Generate("laptop", auth.Read)
	path := filepath.Join(t.TempDir(), "tokens")
	os.WriteFile(path, []byte(pl+"\n"+rl+"\n"), 0o600)
	toks, err := auth.Load(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	up, err := upload.Open(context.Background(), t.TempDir(), upload.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	// Without uploads the store is served read-only: no history.
	opts := server.Options{Tokens: toks, Stores: []store.Store{up}}
	if withUploads {
		opts.Upload = &server.Uploads{Store: up, Tokens: toks}
	}
	srv, err := server.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	return hs.URL, pin, read
}

// TestDeployHistoryClient: a report put with the pin token reads back as
// sent, in the list, the node's view and the fleet; a retry is no error;
// refusals and a cache without a history come back as their kinds.
func TestDeployHistoryClient(t *testing.T) {
	url, pin, read := historyCache(t, true)
	ctx := context.Background()
	c := &cacheapi.Client{URL: url, Token: pin}
	rep := []byte(`{"id":"d-1","mode":"switch","start":"2026-12-01T10:00:00Z","ms":5,"hosts":[{"node":"web1","result":"ok","path":"/nix/store/0c6kzph7l0dcbfmjap64f0czdafn3b7x-nixos-system-web1"}],"failed":[]}`)
	if created, err := c.PutDeploy(ctx, "d-1", rep); err != nil || !created {
		t.Fatalf("put: %v %v", created, err)
	}
	if created, err := c.PutDeploy(ctx, "d-1", rep); err != nil || created {
		t.Fatalf("retry: %v %v", created, err)
	}
	if doc, err := c.Deploy(ctx, "d-1"); err != nil || string(doc) != string(rep) {
		t.Fatalf("get: %v %s", err, doc)
	}
	if page, err := c.Deploys(ctx, 5, ""); err != nil || len(page.Reports) != 1 || page.Reports[0].Hosts != 1 {
		t.Fatalf("list: %+v %v", page, err)
	}
	if h, err := c.NodeDeploys(ctx, "web1", 0); err != nil || h.LastOK == nil || h.LastOK.Deploy != "d-1" {
		t.Fatalf("node: %+v %v", h, err)
	}
	if nodes, err := c.Fleet(ctx, 1); err != nil || len(nodes) != 1 || nodes[0].Node != "web1" {
		t.Fatalf("fleet: %+v %v", nodes, err)
	}
	for _, check := range []struct {
		name string
		err  error
		want error
	}{
		{"missing report", func() error { _, err := c.Deploy(ctx, "d-9"); return err }(), cacheapi.ErrNotFound},
		{"missing node", func() error { _, err := c.NodeDeploys(ctx, "nope", 0); return err }(), cacheapi.ErrNotFound},
		{"overwrite", func() error { _, err := c.PutDeploy(ctx, "d-1", rep[:len(rep)-1]); return err }(), cacheapi.ErrUnavailable},
		{"read token puts", func() error {
			_, err := (&cacheapi.Client{URL: url, Token: read}).PutDeploy(ctx, "d-2", rep)
			return err
		}(), cacheapi.ErrForbidden},
	} {
		if !errors.Is(check.err, check.want) {
			t.Errorf("%s: %v, want %v", check.name, check.err, check.want)
		}
	}
	var e *cacheapi.Error
	if _, err := c.PutDeploy(ctx, "d-1", bytes.Replace(rep, []byte(`"ms":5`), []byte(`"ms":6`), 1)); !errors.As(err, &e) || e.Status != "409 Conflict" {
		t.Errorf("overwrite: %v", err)
	}

	// No history: the cache says so (501), as does one without the route.
	noURL, pin2, _ := historyCache(t, false)
	if _, err := (&cacheapi.Client{URL: noURL, Token: pin2}).PutDeploy(ctx, "d-1", rep); !errors.Is(err, cacheapi.ErrNoAPI) {
		t.Errorf("no upload store: %v", err)
	}
	old := httptest.NewServer(http.NotFoundHandler())
	defer old.Close()
	if _, err := (&cacheapi.Client{URL: old.URL}).PutDeploy(ctx, "d-1", rep); !errors.Is(err, cacheapi.ErrNoAPI) {
		t.Errorf("no route: %v", err)
	}
	if _, err := (&cacheapi.Client{URL: old.URL}).Deploys(ctx, 0, ""); !errors.Is(err, cacheapi.ErrNoAPI) {
		t.Errorf("no route list: %v", err)
	}
}
