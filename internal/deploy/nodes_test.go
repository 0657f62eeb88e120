package deploy_test

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/deploy"
)

const sys1 = "/nix/store/0c6kzph7l0dcbfmjap64f0czdafn3b7x-nixos-system-web1-24.05"
const sys2 = "/nix/store/1c6kzph7l0dcbfmjap64f0czdafn3b7x-nixos-system-db1-24.05"

// A deploy output as deploy-rs users write it, with settings at all levels.
const fleetJSON = `{
  "sshUser": "deploy",
  "confirmTimeout": 60,
  "sshOpts": ["-o", "StrictHostKeyChecking=yes"],
  "fastConnection": true,
  "nodes": {
    "web1": {
      "hostname": "10.0.0.1",
      "tags": ["web", "eu"],
      "sshOpts": ["-p", "2222"],
      "magicRollback": false,
      "profiles": {
        "system": {"path": "` + sys1 + `", "user": "root", "confirmTimeout": 15, "sshOpts": ["-i", "/k"]},
        "hm": {"path": "/nix/store/2c6kzph7l0dcbfmjap64f0czdafn3b7x-home", "user": "alice"}
      },
      "profilesOrder": ["system", "hm"],
      "healthChecks": [{"url": "http://10.0.0.1/health"}, {"command": "systemctl is-active nginx"}]
    },
    "db1": {
      "hostname": "db1.lan",
      "sshUser": "ops",
      "deployerPath": "/run/current-system/sw/bin/deployer",
      "activationTimeout": 100,
      "autoRollback": false,
      "remoteBuild": true,
      "interactiveSudo": false,
      "tempPath": "/var/tmp",
      "someFutureKey": 1,
      "tags": ["db"],
      "profiles": {"system": {"path": "` + sys2 + `"}}
    }
  }
}`

func TestParse(t *testing.T) {
	nodes, err := deploy.Parse([]byte(fleetJSON), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 2 || nodes[0].Name != "db1" || nodes[1].Name != "web1" {
		t.Fatalf("nodes = %+v", nodes)
	}
	db, web := nodes[0], nodes[1]
	tests := []struct {
		name      string
		got, want any
	}{
		{"web hostname", web.Hostname, "10.0.0.1"},
		{"web path", web.Path, sys1},
		{"web other profiles", web.OtherProfiles, []string{"hm"}},
		{"web sshUser from top", web.Settings.SSHUser, "deploy"},
		{"web confirmTimeout from profile", web.Settings.ConfirmTimeout, 15 * time.Second},
		{"web magicRollback from node", web.Settings.MagicRollback, false},
		{"web sshOpts appended profile, node, top", web.Settings.SSHOpts, []string{"-i", "/k", "-p", "2222", "-o", "StrictHostKeyChecking=yes"}},
		{"web tags", web.Settings.Tags, []string{"web", "eu"}},
		{"web health", len(web.Settings.HealthChecks), 2},
		{"web default activationTimeout", web.Settings.ActivationTimeout, 240 * time.Second},
		{"web default autoRollback", web.Settings.AutoRollback, true},
		{"web default deployerPath", web.Settings.DeployerPath, "deployer"},
		{"web fastConnection from top", web.Settings.FastConnection, true},
		{"db sshUser from node", db.Settings.SSHUser, "ops"},
		{"db confirmTimeout from top", db.Settings.ConfirmTimeout, 60 * time.Second},
		{"db default magicRollback", db.Settings.MagicRollback, true},
		{"db autoRollback", db.Settings.AutoRollback, false},
		{"db activationTimeout", db.Settings.ActivationTimeout, 100 * time.Second},
		{"db deployerPath", db.Settings.DeployerPath, "/run/current-system/sw/bin/deployer"},
		{"db tempPath", db.Settings.TempPath, "/var/tmp"},
		{"db remoteBuild", db.Settings.RemoteBuild, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !reflect.DeepEqual(tt.got, tt.want) {
				t.Errorf("got %#v, want %#v", tt.got, tt.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct{ name, json, want string }{
		{"not json", `{`, "invalid"},
		{"no nodes", `{"nodes": {}}`, "no nodes"},
		{"no hostname", `{"nodes": {"a": {"profiles": {"system": {"path": "` + sys1 + `"}}}}}`, "hostname"},
		{"no path", `{"nodes": {"a": {"hostname": "h", "profiles": {"system": {}}}}}`, "path"},
		{"bad confirmTimeout type", `{"confirmTimeout": "30s", "nodes": {"a": {"hostname": "h", "profiles": {}}}}`, "invalid"},
		{"health both", `{"nodes": {"a": {"hostname": "h", "healthChecks": [{"url": "u", "command": "c"}], "profiles": {}}}}`, "exactly one"},
		{"zero confirm", `{"confirmTimeout": 0, "nodes": {"a": {"hostname": "h", "profiles": {}}}}`, "confirmTimeout"},
		{"relative deployer", `{"deployerPath": "bin/deployer", "nodes": {"a": {"hostname": "h", "profiles": {}}}}`, "deployerPath"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := deploy.Parse([]byte(tt.json), nil)
			if !errors.Is(err, deploy.ErrSchema) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want ErrSchema mentioning %q", err, tt.want)
			}
		})
	}
}

func TestParseFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "nodes.json")
	if err := os.WriteFile(p, []byte(fleetJSON), 0o600); err != nil {
		t.Fatal(err)
	}
	nodes, err := deploy.ParseFile(p, nil)
	if err != nil || len(nodes) != 2 {
		t.Fatalf("ParseFile = %v, %v", nodes, err)
	}
}

func TestCheckPath(t *testing.T) {
	dir := t.TempDir()
	wrapped := filepath.Join(dir, "0c6kzph7l0dcbfmjap64f0czdafn3b7x-nixos-system-x")
	os.MkdirAll(wrapped, 0o755)
	os.WriteFile(filepath.Join(wrapped, "deploy-rs-activate"), nil, 0o755)
	tests := []struct {
		name, store, path, want string
	}{
		{"toplevel", "/nix/store", sys1, ""},
		{"empty", "/nix/store", "", "no profiles.system.path"},
		{"not a store path", "/nix/store", "/etc/passwd", "not a store path"},
		{"bad hash", "/nix/store", "/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-x", "not a store path"},
		{"dotdot", "/nix/store", "/nix/store/../0c6kzph7l0dcbfmjap64f0czdafn3b7x-x", "not a store path"},
		{"activatable name", "/nix/store", "/nix/store/0c6kzph7l0dcbfmjap64f0czdafn3b7x-activatable-nixos-system-x", "config.system.build.toplevel"},
		{"wrapper files", dir, wrapped, "deploy-rs-activate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := deploy.CheckPath(tt.store, tt.path)
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

func fleet(t *testing.T) []deploy.Node {
	t.Helper()
	nodes, err := deploy.Parse([]byte(`{"nodes": {
	  "web1": {"hostname": "a", "tags": ["web"], "profiles": {"system": {"path": "`+sys1+`"}}},
	  "web2": {"hostname": "b", "tags": ["web", "eu"], "profiles": {"system": {"path": "`+sys1+`"}}},
	  "db1":  {"hostname": "c", "tags": ["eu"], "profiles": {"system": {"path": "`+sys2+`"}}},
	  "test-1": {"hostname": "d", "profiles": {"system": {"path": "`+sys2+`"}}}
	}}`), nil)
	if err != nil {
		t.Fatal(err)
	}
	return nodes
}

func nodeNames(ns []deploy.Node) string {
	var s []string
	for _, n := range ns {
		s = append(s, n.Name)
	}
	return strings.Join(s, ",")
}

func TestSelect(t *testing.T) {
	nodes := fleet(t)
	tests := []struct{ spec, want, err string }{
		{"", "db1,test-1,web1,web2", ""},
		{"web1", "web1", ""},
		{"web1,db1", "db1,web1", ""},
		{"@web", "web1,web2", ""},
		{"@eu", "db1,web2", ""},
		{"@eu,web*", "db1,web1,web2", ""},
		{"web?", "web1,web2", ""},
		{" web1 , , db1 ", "db1,web1", ""},
		{"nope", "", "matches no node"},
		{"@nope", "", "matches no node"},
		{"x*", "", "matches no node"},
		{"[", "", "bad pattern"},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			got, err := deploy.Select(nodes, tt.spec)
			if tt.err != "" {
				if !errors.Is(err, deploy.ErrSelection) || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil || nodeNames(got) != tt.want {
				t.Fatalf("Select = %q, %v; want %q", nodeNames(got), err, tt.want)
			}
		})
	}
}

func TestForBranch(t *testing.T) {
	nodes := fleet(t)
	tests := []struct {
		branch, mode, nodes, err string
		nothing                  bool
	}{
		{branch: "main", mode: "switch", nodes: "db1,test-1,web1,web2"},
		{branch: "test-web1", mode: "test", nodes: "web1"},
		{branch: "test-test-1", mode: "test", nodes: "test-1"},
		{branch: "test-nope", err: `no node named "nope"`},
		{branch: "feature/x", nothing: true},
		{branch: "mainline", nothing: true},
		{branch: "test-", err: "no node named"},
	}
	for _, tt := range tests {
		t.Run(tt.branch, func(t *testing.T) {
			b, err := deploy.ForBranch(nodes, tt.branch)
			if tt.err != "" {
				if !errors.Is(err, deploy.ErrSelection) || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.nothing {
				if len(b.Nodes) != 0 || b.Reason == "" {
					t.Fatalf("want nothing with a reason, got %+v", b)
				}
				return
			}
			if string(b.Mode) != tt.mode || nodeNames(b.Nodes) != tt.nodes {
				t.Fatalf("got %s %s, want %s %s", b.Mode, nodeNames(b.Nodes), tt.mode, tt.nodes)
			}
		})
	}
}

func TestParseMode(t *testing.T) {
	for _, m := range []string{"switch", "test", "boot", "dry-activate"} {
		if got, err := deploy.ParseMode(m); err != nil || string(got) != m {
			t.Errorf("ParseMode(%q) = %q, %v", m, got, err)
		}
	}
	for _, m := range []string{"", "Switch", "reboot", "dry"} {
		if _, err := deploy.ParseMode(m); err == nil {
			t.Errorf("ParseMode(%q) accepted", m)
		}
	}
}
