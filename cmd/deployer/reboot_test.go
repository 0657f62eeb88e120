package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bos55/concordia/internal/deploy"
)

// Usage errors come before any host is reached: a reboot never starts on
// every host at once by accident.
func TestRebootCommandUsage(t *testing.T) {
	file := filepath.Join(t.TempDir(), "nodes.json")
	os.WriteFile(file, []byte(pushNodes), 0o600)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"reboot", "--file", file}, "name the node(s) to reboot"},
		{[]string{"reboot", "--file", file, "--all-at-once", "--max-unavailable", "2", "web1"}, "do not go together"},
		{[]string{"reboot", "--file", file, "--max-unavailable", "-1", "web1"}, "--max-unavailable"},
		{[]string{"reboot", "--file", file, "--reboot-timeout", "0s", "web1"}, "--reboot-timeout"},
		{[]string{"reboot", "--file", file, "--id", "../x", "web1"}, "deploy id"},
		{[]string{"push", "--file", file, "--cache", "http://127.0.0.1:1", "--mode", "test", "--reboot", "--on", "web1", "--trusted-key", "test-1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}, "--reboot goes with --mode boot or switch"},
		{[]string{"push", "--file", file, "--cache", "http://127.0.0.1:1", "--mode", "boot", "--reboot", "--reboot-timeout", "0s", "--on", "web1", "--trusted-key", "test-1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}, "--reboot-timeout"},
	} {
		code, _, errs := runDeployer(t, tc.args...)
		if code != 2 || !strings.Contains(errs, tc.want) {
			t.Errorf("%q: exit %d, want 2 with %q in %s", tc.args, code, tc.want, errs)
		}
	}
}

// TestRebootBound: one host at a time unless asked; N or P% of the
// selected nodes; --all-at-once every one (past the flake's bound too).
func TestRebootBound(t *testing.T) {
	for _, tc := range []struct {
		o            rebootOpts
		nodes        int
		par, maxUnav int
	}{
		{rebootOpts{}, 4, 1, 0},
		{rebootOpts{maxUnavailable: "3"}, 4, 0, 3},
		{rebootOpts{maxUnavailable: "50%"}, 4, 0, 2},
		{rebootOpts{maxUnavailable: "10%"}, 4, 0, 1},
		{rebootOpts{allAtOnce: true}, 4, 0, 4},
	} {
		var opts deploy.Options
		if err := tc.o.bound(tc.nodes, &opts); err != nil || opts.Parallel != tc.par || opts.MaxUnavailable != tc.maxUnav {
			t.Errorf("%+v of %d: parallel %d, max-unavailable %d, %v; want %d, %d", tc.o, tc.nodes, opts.Parallel, opts.MaxUnavailable, err, tc.par, tc.maxUnav)
		}
	}
	for _, bad := range []string{"0", "-1", "x", "150%"} {
		if err := (rebootOpts{maxUnavailable: bad}).bound(4, &deploy.Options{}); err == nil {
			t.Errorf("--max-unavailable %q accepted", bad)
		}
	}
}
