package durable_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/bos55/concordia/internal/durable"
)

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "state.json")
	for _, content := range []string{"one", "two"} {
		if err := durable.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(p)
		if err != nil || string(b) != content {
			t.Fatalf("%q %v", b, err)
		}
	}
	fi, _ := os.Stat(p)
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", fi.Mode())
	}
	assertNoTemp(t, dir, 1)
}

func TestWriteNewRefusesExisting(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "key.sec")
	if err := durable.WriteNew(p, []byte("first"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := durable.WriteNew(p, []byte("second"), 0o600); !errors.Is(err, durable.ErrExists) {
		t.Fatalf("second write: %v", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "first" {
		t.Fatalf("overwritten: %q", b)
	}
	assertNoTemp(t, dir, 1)
}

func TestWriteIntoMissingDir(t *testing.T) {
	if err := durable.WriteFile(filepath.Join(t.TempDir(), "no", "such"), nil, 0o600); err == nil {
		t.Fatal("no error")
	}
}

func assertNoTemp(t *testing.T, dir string, want int) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	if len(ents) != want {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Fatalf("dir holds %v, want %d file(s): a temporary file was left", names, want)
	}
}

// TestFileStreams: a streamed file is invisible until Commit, and Abort
// leaves nothing behind.
func TestFileStreams(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "log.zst")
	f, err := durable.Create(p, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		f.Write([]byte("chunk "))
	}
	if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("visible before Commit: %v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 || !durable.IsTemp(ents[0].Name()) {
		t.Fatalf("temporary file %v not recognised", ents)
	}
	if err := f.Commit(); err != nil {
		t.Fatal(err)
	}
	f.Abort() // after Commit: nothing
	if b, err := os.ReadFile(p); err != nil || string(b) != "chunk chunk chunk " {
		t.Fatalf("%q %v", b, err)
	}
	g, err := durable.Create(p, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	g.Write([]byte("never published"))
	g.Abort()
	if b, _ := os.ReadFile(p); string(b) != "chunk chunk chunk " {
		t.Fatalf("aborted file replaced the published one: %q", b)
	}
	assertNoTemp(t, dir, 1)
	h, _ := durable.Create(p, 0o644)
	if err := h.CommitNew(); !errors.Is(err, durable.ErrExists) {
		t.Fatalf("CommitNew over an existing file: %v", err)
	}
	assertNoTemp(t, dir, 1)
}
