package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bos55/concordia/internal/deploy"
)

func TestPushRolloutFlags(t *testing.T) {
	file := filepath.Join(t.TempDir(), "nodes.json")
	os.WriteFile(file, []byte(pushNodes), 0o600)
	tests := []struct {
		name string
		args []string
		code int
		err  string
	}{
		{"canary by tag", []string{"--on", "web1,db1", "--canary", "@web", "--dry-run"}, 0, ""},
		{"canary by glob", []string{"--on", "web1,db1", "--canary", "db*", "--dry-run"}, 0, ""},
		{"canary matching nothing", []string{"--on", "web1,db1", "--canary", "web9", "--dry-run"}, 1, `--canary: selection: "web9" matches no node (nodes: db1, web1)`},
		{"canary not selected", []string{"--on", "db1", "--canary", "web1", "--dry-run"}, 1, `"web1" matches no node (nodes: db1)`},
		{"canary of commas", []string{"--on", "web1", "--canary", ", ,", "--dry-run"}, 2, "names no node"},
		{"bad canary pattern", []string{"--on", "web1", "--canary", "[", "--dry-run"}, 1, "bad pattern"},
		{"max unavailable percent", []string{"--on", "web1", "--max-unavailable", "50%", "--dry-run"}, 0, ""},
		{"max unavailable zero", []string{"--on", "web1", "--max-unavailable", "0"}, 2, "--max-unavailable: rollout: max unavailable \"0\": must be at least 1"},
		{"max unavailable garbage", []string{"--on", "web1", "--max-unavailable", "lots"}, 2, "not a whole number"},
		{"max unavailable over 100%", []string{"--on", "web1", "--max-unavailable", "200%"}, 2, "at most 100%"},
		{"max failures negative", []string{"--on", "web1", "--max-failures", "-1"}, 2, "--max-failures must be 0 (no limit) or more"},
		{"max failures garbage", []string{"--on", "web1", "--max-failures", "x"}, 2, "not a whole number"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errs := runDeployer(t, append([]string{"push", "--file", file}, tt.args...)...)
			if code != tt.code || !strings.Contains(errs, tt.err) {
				t.Fatalf("exit %d (want %d)\nstdout: %s\nstderr: %s", code, tt.code, out, errs)
			}
		})
	}
}

func TestPushRolloutResolve(t *testing.T) {
	nodes, err := deploy.Parse([]byte(`{"maxFailures":3,"maxUnavailable":1,"nodes":{
 "a":{"hostname":"a","tags":["edge"],"profiles":{"system":{"path":"/nix/store/0c6kzph7l0dcbfmjap64f0czdafn3b7x-nixos-system-a"}}},
 "b":{"hostname":"b","tags":["edge"],"profiles":{"system":{"path":"/nix/store/0c6kzph7l0dcbfmjap64f0czdafn3b7x-nixos-system-b"}}},
 "c":{"hostname":"c","profiles":{"system":{"path":"/nix/store/0c6kzph7l0dcbfmjap64f0czdafn3b7x-nixos-system-c"}}},
 "d":{"hostname":"d","profiles":{"system":{"path":"/nix/store/0c6kzph7l0dcbfmjap64f0czdafn3b7x-nixos-system-d"}}}}}`), nil)
	if err != nil {
		t.Fatal(err)
	}
	o := pushOpts{canary: "@edge", maxUnavailable: "50%"}
	o.maxFailures.Set("0")
	apply, err := o.rollout(nodes)
	if err != nil {
		t.Fatal(err)
	}
	var opts deploy.Options
	apply(&opts)
	if strings.Join(opts.Canary, ",") != "a,b" || opts.MaxUnavailable != 2 || opts.MaxFailures != 0 {
		t.Fatalf("options %+v", opts)
	}
	if nodes[0].Settings.MaxFailures != 0 {
		t.Fatal("--max-failures 0 left the flake's limit")
	}
}

func TestPrintSummaryNotStarted(t *testing.T) {
	rep := &deploy.Report{ID: "d-1", Hosts: []deploy.HostReport{
		{Node: "web1", Result: deploy.RolledBack, Error: "host rolled back"},
		{Node: "web2", Result: deploy.NotStarted, Error: "not started: canary web1 failed: rolled-back: host rolled back"},
		{Node: "web3", Result: deploy.NotStarted, Error: "not started: canary web1 failed: rolled-back: host rolled back"},
		{Node: "db1", Result: deploy.OK},
	}, Failed: []string{"web1", "web2", "web3"}}
	var b strings.Builder
	printSummary(&b, rep)
	want := "deploy d-1: 1 ok, 1 not ok, 2 not started, 0.0s\n" +
		"  web1: ROLLED-BACK: host rolled back\n" +
		"  NOT STARTED (canary web1 failed: rolled-back: host rolled back): web2, web3\n"
	if b.String() != want {
		t.Fatalf("summary\n%s\nwant\n%s", b.String(), want)
	}
}
