//go:build linux

package nar

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// TestDumpWithoutDirentType covers file systems whose getdents leaves
// d_type unknown: the dump must stat each entry and produce the same bytes.
func TestDumpWithoutDirentType(t *testing.T) {
	root := t.TempDir()
	for _, p := range []string{"d/e", "f"} {
		if err := os.MkdirAll(filepath.Join(root, p), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "d/x"), []byte("exec"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("d/x", filepath.Join(root, "l")); err != nil {
		t.Fatal(err)
	}
	var want, got bytes.Buffer
	if _, err := DumpPath(&want, root); err != nil {
		t.Fatal(err)
	}
	statEveryEntry = true
	defer func() { statEveryEntry = false }()
	if _, err := DumpPath(&got, root); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), want.Bytes()) {
		t.Fatal("dump with stat per entry differs from the d_type dump")
	}
}
