package nixcli_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bos55/concordia/internal/nixcli"
)

// addToStore puts a small file into the machine's store (as the CI builder
// does with its outputs) and returns the store path.
func addToStore(t *testing.T, content string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "nixcli-test")
	os.WriteFile(f, []byte(content), 0o644)
	out, err := exec.Command("nix-store", "--add", f).Output()
	if err != nil {
		t.Fatalf("nix-store --add: %v", err)
	}
	return strings.TrimSpace(string(out))
}

func TestExecAgainstRealNix(t *testing.T) {
	if _, err := exec.LookPath("nix-env"); err != nil {
		t.Skip("nix-env not installed")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs a writable store (root)")
	}
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("XDG_CACHE_HOME", filepath.Join(home, ".cache"))
	ctx := context.Background()
	a, b := addToStore(t, "a "+t.Name()), addToStore(t, "b "+t.Name())
	n := &nixcli.Exec{}
	if ok, err := n.Valid(ctx, a); !ok || err != nil {
		t.Fatalf("valid %s: %v %v", a, ok, err)
	}
	if ok, err := n.Valid(ctx, "/nix/store/00000000000000000000000000000000-nope"); ok || err != nil {
		t.Fatalf("invalid path: %v %v", ok, err)
	}
	profile := filepath.Join(t.TempDir(), "system")
	if _, ok, err := nixcli.CurrentGeneration(profile); ok || err != nil {
		t.Fatalf("no profile yet: %v %v", ok, err)
	}
	for _, p := range []string{a, b} {
		if err := n.SetProfile(ctx, profile, p); err != nil {
			t.Fatal(err)
		}
	}
	g, ok, err := nixcli.CurrentGeneration(profile)
	if err != nil || !ok || g.Number != 2 || g.Path != b {
		t.Fatalf("current: %+v %v %v", g, ok, err)
	}
	if err := n.SwitchGeneration(ctx, profile, 1); err != nil {
		t.Fatal(err)
	}
	if err := n.DeleteGeneration(ctx, profile, 2); err != nil {
		t.Fatal(err)
	}
	gens, err := nixcli.Generations(profile)
	if err != nil || len(gens) != 1 || gens[0].Number != 1 || gens[0].Path != a {
		t.Fatalf("generations: %+v %v", gens, err)
	}
	if err := n.DeleteGeneration(ctx, profile, 1); err == nil {
		t.Log("nix-env deleted the current generation without complaint")
	}
	if err := n.Realise(ctx, a); err != nil {
		t.Fatal(err)
	}
	if err := n.Realise(ctx, "/nix/store/00000000000000000000000000000000-nope"); err == nil {
		t.Fatal("realising a missing path succeeded")
	}
}
