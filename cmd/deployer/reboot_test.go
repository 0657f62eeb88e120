package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
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
		{[]string{"reboot", "--file", file, "--max-unavailable", "-1", "web1"}, "at least 1"},
		{[]string{"reboot", "--file", file, "--reboot-timeout", "0s", "web1"}, "--reboot-timeout"},
		{[]string{"reboot", "--file", file, "--id", "../x", "web1"}, "deploy id"},
		{[]string{"push", "--file", file, "--cache", "http://127.0.0.1:1", "--mode", "test", "--reboot", "--on", "web1", "--trusted-key", "test-1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}, "--reboot goes with --mode boot or switch"},
	} {
		code, _, errs := runDeployer(t, tc.args...)
		if code != 2 || !strings.Contains(errs, tc.want) {
			t.Errorf("%q: exit %d, want 2 with %q in %s", tc.args, code, tc.want, errs)
		}
	}
}

func TestRebootParallel(t *testing.T) {
	for _, tc := range []struct {
		o    rebootOpts
		want int
	}{{rebootOpts{}, 1}, {rebootOpts{maxUnavailable: 3}, 3}, {rebootOpts{allAtOnce: true}, 0}} {
		if got, err := tc.o.rebootParallel(); err != nil || got != tc.want {
			t.Errorf("%+v: %d %v, want %d", tc.o, got, err, tc.want)
		}
	}
}
