package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bos55/concordia/internal/cli"
)

func runDeployer(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := cli.Main("deployer", "test", commands(), args, &cli.Env{Stdout: &out, Stderr: &errb, Stdin: strings.NewReader("")})
	return code, out.String(), errb.String()
}

const pushNodes = `{"sshUser":"deploy","nodes":{
 "web1":{"hostname":"127.0.0.2","tags":["web"],"profiles":{"system":{"path":"/nix/store/0c6kzph7l0dcbfmjap64f0czdafn3b7x-nixos-system-web1"}}},
 "db1":{"hostname":"127.0.0.3","profiles":{"system":{"path":"/nix/store/1c6kzph7l0dcbfmjap64f0czdafn3b7x-nixos-system-db1"}}},
 "old":{"hostname":"127.0.0.4","profiles":{"system":{"path":"/nix/store/2c6kzph7l0dcbfmjap64f0czdafn3b7x-activatable-nixos-system-old"}}}}}`

func TestPushCommand(t *testing.T) {
	file := filepath.Join(t.TempDir(), "nodes.json")
	os.WriteFile(file, []byte(pushNodes), 0o600)
	tests := []struct {
		name string
		args []string
		code int
		out  string
		err  string
	}{
		{"feature branch deploys nothing", []string{"--branch", "feature/x"}, 0, "", "nothing to deploy"},
		{"test branch of unknown node", []string{"--branch", "test-nope"}, 1, "", `no node named "nope"`},
		{"test branch plan", []string{"--branch", "test-db1", "--dry-run"}, 0, "test on 1 node(s)", ""},
		{"main plan", []string{"--branch", "main", "--dry-run"}, 1, "", "activate wrapper"},
		{"tag plan", []string{"--on", "@web", "--mode", "boot", "--dry-run"}, 0, "boot on 1 node(s)", ""},
		{"bad mode", []string{"--mode", "reboot"}, 2, "", "mode"},
		{"no cache", []string{"--on", "web1"}, 2, "", "--cache is required"},
		{"no trusted key", []string{"--on", "web1", "--cache", "http://127.0.0.1:1"}, 2, "", "no trusted key"},
		{"branch and on", []string{"--branch", "main", "--on", "web1"}, 2, "", "do not go together"},
		{"overrides", []string{"--on", "web1", "--dry-run", "--confirm-timeout", "45s", "--magic-rollback=false", "--ssh-user", "ops", "--ssh-opts", "-p 2222"}, 0, "ssh      -p 2222 ops@127.0.0.2", ""},
		{"override magic rollback", []string{"--on", "web1", "--dry-run", "--magic-rollback=false"}, 0, "rollback magic=false auto=true", ""},
		{"override confirm", []string{"--on", "web1", "--dry-run", "--confirm-timeout", "45s"}, 0, "confirm within 45s", ""},
		{"wrapper refused", []string{"--on", "old", "--dry-run"}, 1, "", "config.system.build.toplevel"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errs := runDeployer(t, append([]string{"push", "--file", file}, tt.args...)...)
			if code != tt.code || !strings.Contains(out, tt.out) || !strings.Contains(errs, tt.err) {
				t.Fatalf("exit %d (want %d)\nstdout: %s\nstderr: %s", code, tt.code, out, errs)
			}
		})
	}
}

// TestPushFlake reads the nodes from a real flake through `nix eval`.
func TestPushFlake(t *testing.T) {
	if _, err := exec.LookPath("nix"); err != nil {
		t.Skip("no nix")
	}
	t.Setenv("HOME", t.TempDir())
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	dir := t.TempDir()
	flake := `{
  outputs = { self }: {
    deploy = {
      sshUser = "deploy";
      confirmTimeout = 45;
      nodes.web1 = {
        hostname = "10.0.0.1";
        tags = [ "web" ];
        profiles.system.path = "/nix/store/0c6kzph7l0dcbfmjap64f0czdafn3b7x-nixos-system-web1";
      };
      nodes.db1 = {
        hostname = "10.0.0.2";
        profiles.system.path = "/nix/store/1c6kzph7l0dcbfmjap64f0czdafn3b7x-nixos-system-db1";
      };
    };
  };
}
`
	if err := os.WriteFile(filepath.Join(dir, "flake.nix"), []byte(flake), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errs := runDeployer(t, "push", "--flake", "path:"+dir, "--on", "@web", "--dry-run")
	if code != 0 || !strings.Contains(out, "web1 (deploy@10.0.0.1)") || strings.Contains(out, "db1") || !strings.Contains(out, "confirm within 45s") {
		t.Fatalf("exit %d\n%s\n%s", code, out, errs)
	}
}
