package narinfo_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/bos55/concordia/pkg/narinfo"
)

var update = flag.Bool("update", false, "regenerate testdata/nix28 from the real nix")

// nixHarness runs the real Nix with a private HOME and XDG_CACHE_HOME, so
// no test sees another's narinfo disk cache or config.
type nixHarness struct {
	t   *testing.T
	env []string
}

func newNix(t *testing.T) *nixHarness {
	t.Helper()
	for _, bin := range []string{"nix", "nix-store", "nix-build", "nix-instantiate"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not installed: %v", bin, err)
		}
	}
	h := &nixHarness{t: t}
	h.env = append(os.Environ(), "HOME="+t.TempDir(), "NIX_CONFIG=experimental-features = nix-command")
	h.freshCache()
	return h
}

// freshCache points XDG_CACHE_HOME at a new directory, so the next nix call
// cannot answer from binary-cache-v*.sqlite.
func (h *nixHarness) freshCache() {
	h.env = append(slices.Clip(h.env), "XDG_CACHE_HOME="+h.t.TempDir())
}

// with returns a copy of h that reports to t, for use inside subtests (a
// subtest must not call Fatal on its parent).
func (h *nixHarness) with(t *testing.T) *nixHarness {
	c := *h
	c.t = t
	return &c
}

func (h *nixHarness) try(args ...string) (string, error) {
	h.t.Helper()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = h.env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("%s: %v\n%s", strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

func (h *nixHarness) run(args ...string) string {
	h.t.Helper()
	out, err := h.try(args...)
	if err != nil {
		h.t.Fatal(err)
	}
	return out
}

// closure is a small set of store paths covering what narinfos carry:
// references, a self-reference, derivers, and both kinds of content address.
type closure struct {
	store       string // a chroot store (local?root=...) holding the paths
	x, y, z     string // input-addressed: y refers to x, z to x, y and itself
	fixed, text string // content-addressed: nix-store --add, builtins.toFile
	flat, rsha1 string // fixed-output derivations: flat sha256, recursive sha1
	all         []string
}

const closureNix = `rec {
  x = derivation { name = "concordia-narinfo-x"; system = builtins.currentSystem; builder = "/bin/sh"; args = ["-c" "echo hi > $out"]; };
  y = derivation { name = "concordia-narinfo-y"; system = builtins.currentSystem; builder = "/bin/sh"; args = ["-c" "echo ${x} > $out"]; };
  z = derivation { name = "concordia-narinfo-z"; system = builtins.currentSystem; builder = "/bin/sh";
    args = ["-c" "/bin/mkdir $out; echo ${y} > $out/y; echo $out > $out/self; echo ${x} > $out/x"]; };
  flat = derivation { name = "concordia-narinfo-flat"; system = builtins.currentSystem; builder = "/bin/sh";
    args = ["-c" "echo flat > $out"]; outputHashMode = "flat"; outputHashAlgo = "sha256";
    outputHash = "6bc66a827fe86925af680be5e00da2b7a7f22947c8c0209b22563890258462f6"; };
  rsha1 = derivation { name = "concordia-narinfo-rsha1"; system = builtins.currentSystem; builder = "/bin/sh";
    args = ["-c" "echo rsha1 > $out"]; outputHashMode = "recursive"; outputHashAlgo = "sha1";
    outputHash = "97e2a749f97b40e90fff6f808316d9b6bae36040"; };
}
`

// buildClosure builds the closure in the real store (a chroot store cannot
// run /bin/sh builders) and copies it into a private chroot store, where
// tests may add signatures without touching the shared /nix.
func (h *nixHarness) buildClosure() *closure {
	h.t.Helper()
	dir := h.t.TempDir()
	nixFile := filepath.Join(dir, "closure.nix")
	if err := os.WriteFile(nixFile, []byte(closureNix), 0o644); err != nil {
		h.t.Fatal(err)
	}
	c := &closure{store: filepath.Join(dir, "root")}
	out := strings.Fields(h.run("nix-build", "--no-out-link", nixFile, "-A", "x", "-A", "y", "-A", "z", "-A", "flat", "-A", "rsha1"))
	if len(out) != 5 {
		h.t.Fatalf("nix-build printed %q", out)
	}
	c.x, c.y, c.z, c.flat, c.rsha1 = out[0], out[1], out[2], out[3], out[4]
	h.run("nix", "copy", "--no-check-sigs", "--to", c.store, c.z, c.flat, c.rsha1)
	file := filepath.Join(dir, "hello.txt")
	if err := os.WriteFile(file, []byte("hello from concordia\n"), 0o644); err != nil {
		h.t.Fatal(err)
	}
	c.fixed = strings.TrimSpace(h.run("nix-store", "--store", c.store, "--add", file))
	c.text = strings.Trim(strings.TrimSpace(h.run("nix-instantiate", "--store", c.store, "--eval", "--read-write-mode",
		"-E", `builtins.toFile "concordia-narinfo-t.txt" "text\n"`)), `"`)
	c.all = []string{c.x, c.y, c.z, c.fixed, c.text, c.flat, c.rsha1}
	return c
}

// pathInfo is what nix path-info --json reports about one path.
type pathInfo struct {
	Path       string   `json:"path"`
	NarHash    string   `json:"narHash"`
	NarSize    uint64   `json:"narSize"`
	References []string `json:"references"`
	Signatures []string `json:"signatures"`
	CA         string   `json:"ca"`
}

func (h *nixHarness) pathInfo(store, path string) pathInfo {
	h.t.Helper()
	var infos []pathInfo
	if err := json.Unmarshal([]byte(h.run("nix", "path-info", "--json", "--store", store, path)), &infos); err != nil {
		h.t.Fatal(err)
	}
	if len(infos) != 1 {
		h.t.Fatalf("path-info %s: %d entries", path, len(infos))
	}
	return infos[0]
}

// readCache parses every narinfo of a file:// cache, keyed by file name.
func readCache(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.narinfo"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no narinfos in %s (%v)", dir, err)
	}
	m := map[string][]byte{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		m[filepath.Base(f)] = b
	}
	return m
}

func mustLoadSecret(t *testing.T, path string) narinfo.SecretKey {
	t.Helper()
	k, err := narinfo.LoadSecretKeyFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustLoadPublic(t *testing.T, path string) narinfo.PublicKey {
	t.Helper()
	k, err := narinfo.LoadPublicKeyFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return k
}
