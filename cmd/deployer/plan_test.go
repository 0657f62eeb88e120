package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPlanCommand: the flags plan shares with push, checked before any
// host or cache is asked.
func TestPlanCommand(t *testing.T) {
	file := filepath.Join(t.TempDir(), "nodes.json")
	os.WriteFile(file, []byte(pushNodes), 0o600)
	for _, tt := range []struct {
		name string
		args []string
		code int
		out  string
		err  string
	}{
		{"no cache", []string{"plan", "--on", "web1"}, 2, "", "--cache is required"},
		{"no trusted key", []string{"plan", "--on", "web1", "--cache", "http://127.0.0.1:1"}, 2, "", "no trusted key"},
		{"bad mode", []string{"plan", "--mode", "reboot"}, 2, "", "mode"},
		{"arguments", []string{"plan", "web1"}, 2, "", "select nodes with --on"},
		{"feature branch plans nothing", []string{"plan", "--branch", "feature/x"}, 0, "", "nothing to deploy"},
		{"wrapper refused", []string{"plan", "--on", "old", "--cache", "http://127.0.0.1:1"}, 1, "", "config.system.build.toplevel"},
		{"dry-run without a cache", []string{"push", "--on", "web1", "--dry-run"}, 0, "closure diff, download size, reboot and cache check are not made", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{tt.args[0], "--file", file}, tt.args[1:]...)
			code, out, errs := runDeployer(t, args...)
			if code != tt.code || !strings.Contains(out, tt.out) || !strings.Contains(errs, tt.err) {
				t.Fatalf("exit %d (want %d)\nstdout: %s\nstderr: %s", code, tt.code, out, errs)
			}
		})
	}
}
