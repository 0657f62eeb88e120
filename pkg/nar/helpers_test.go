package nar_test

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// needNix skips the test when the real Nix is not installed.
func needNix(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("nix-store"); err != nil {
		t.Skip("nix-store not installed")
	}
}

// nixCmd runs a Nix command with a private HOME and XDG_CACHE_HOME, so no
// test reads or pollutes the user's caches.
func nixCmd(t testing.TB, name string, args ...string) *exec.Cmd {
	t.Helper()
	home := t.TempDir()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "HOME="+home, "XDG_CACHE_HOME="+filepath.Join(home, ".cache"))
	return cmd
}

func nixOutput(t testing.TB, name string, args ...string) []byte {
	t.Helper()
	cmd := nixCmd(t, name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.Bytes())
	}
	return out
}

// nixDump is `nix-store --dump path`, held in memory (small trees only).
func nixDump(t testing.TB, path string) []byte {
	t.Helper()
	return nixOutput(t, "nix-store", "--dump", path)
}

// nixDumpSum streams `nix-store --dump path` through SHA-256.
func nixDumpSum(t testing.TB, path string) ([32]byte, int64) {
	t.Helper()
	cmd := nixCmd(t, "nix-store", "--dump", path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	n, err := io.Copy(h, out)
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("nix-store --dump %s: %v\n%s", path, err, stderr.Bytes())
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return sum, n
}

// tree describes a file system tree to build in a test.
type tree []fsNode

type fsNode struct {
	path   string // relative, "/"-separated
	kind   byte   // 'f' file, 'd' dir, 'l' symlink
	data   string // file contents or link target
	mode   os.FileMode
	sparse int64 // for files: truncate to this size after writing data
}

func (tr tree) build(t testing.TB, root string) {
	t.Helper()
	for _, e := range tr {
		p := filepath.Join(root, filepath.FromSlash(e.path))
		var err error
		switch e.kind {
		case 'd':
			err = os.MkdirAll(p, 0o755)
		case 'f':
			err = os.WriteFile(p, []byte(e.data), 0o644)
			if err == nil && e.sparse > 0 {
				err = os.Truncate(p, e.sparse)
			}
		case 'l':
			err = os.Symlink(e.data, p)
		}
		if err == nil && e.mode != 0 {
			err = os.Chmod(p, e.mode)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// variedTree has every kind of node and every awkward name we know of.
func variedTree() tree {
	big := strings.Repeat("0123456789abcdef", (300<<10)/16) + "xyz" // crosses the dump buffer
	tr := tree{
		{path: "empty-file", kind: 'f'},
		{path: "empty-dir", kind: 'd'},
		{path: "exec", kind: 'f', data: "#!/bin/sh\necho hi\n", mode: 0o755},
		{path: "exec-owner-only", kind: 'f', data: "x", mode: 0o500},
		{path: "group-x-only", kind: 'f', data: "y", mode: 0o611},
		{path: "plain", kind: 'f', data: "hello"},
		{path: "eight", kind: 'f', data: "12345678"},
		{path: "big", kind: 'f', data: big},
		{path: "link-rel", kind: 'l', data: "plain"},
		{path: "link-up", kind: 'l', data: "../x/./y"},
		{path: "link-abs", kind: 'l', data: "/etc/passwd"},
		{path: "link-dangling", kind: 'l', data: "does/not/exist"},
		{path: "link-odd", kind: 'l', data: "t\x01\xff\n\"\\ ä"},
		{path: "link-longest", kind: 'l', data: strings.Repeat("t/", 2047) + "x"}, // 4095 bytes, Linux's limit
		{path: strings.Repeat("n", 255), kind: 'f', data: "NAME_MAX"},
		{path: "\x01", kind: 'f', data: "ctl"},
		{path: "esc\x1b\x0c\x1f", kind: 'f', data: "hex escapes"},
		{path: "ä", kind: 'f', data: "umlaut"},
		{path: "with space", kind: 'f', data: "sp"},
		{path: "-leading", kind: 'f', data: "dash"},
		{path: "new\nline", kind: 'f', data: "nl"},
		{path: "\xff\xfe", kind: 'f', data: "not utf-8"},
		{path: "quote\"back\\slash", kind: 'f', data: "q"},
		{path: "\x7fdel", kind: 'f', data: "del"},
		{path: "B", kind: 'f'}, {path: "a", kind: 'f'}, {path: "a.b", kind: 'f'},
		{path: "a-b", kind: 'f'}, {path: "ab", kind: 'f'}, {path: "Z", kind: 'f'},
		{path: "sub", kind: 'd'},
		{path: "sub/inner", kind: 'f', data: "inner"},
		{path: "sub/dir", kind: 'd'},
		{path: "sub/dir/x", kind: 'l', data: "../inner"},
	}
	deep := "deep"
	tr = append(tr, fsNode{path: deep, kind: 'd'})
	for i := 0; i < 100; i++ {
		deep += fmt.Sprintf("/%d", i%10)
	}
	tr = append(tr, fsNode{path: deep, kind: 'd'}, fsNode{path: deep + "/bottom", kind: 'f', data: "at depth 101"})
	return tr
}

func goroot(t testing.TB) string {
	t.Helper()
	g := runtime.GOROOT()
	if out, err := exec.Command("go", "env", "GOROOT").Output(); err == nil {
		g = strings.TrimSpace(string(out))
	}
	if _, err := os.Stat(g); err != nil {
		t.Skipf("GOROOT %q: %v", g, err)
	}
	return g
}
