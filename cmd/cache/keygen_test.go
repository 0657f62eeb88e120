package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/bos55/concordia/internal/cli"
	"github.com/bos55/concordia/pkg/narinfo"
)

// runCache runs "cache args..." in-process and returns exit code and output.
func runCache(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	env := &cli.Env{Stdout: &out, Stderr: &errb, Stdin: strings.NewReader("")}
	code = cli.Main("cache", "test", []*cli.Command{newKeygenCommand()}, args, env)
	return code, out.String(), errb.String()
}

var (
	secretRE = regexp.MustCompile(`^cache\.example\.org-1:[A-Za-z0-9+/]{86}==$`)
	publicRE = regexp.MustCompile(`^cache\.example\.org-1:[A-Za-z0-9+/]{43}=$`)
)

func TestKeygen(t *testing.T) {
	dir := t.TempDir()
	sec, pub := filepath.Join(dir, "s"), filepath.Join(dir, "p")
	code, stdout, stderr := runCache(t, "keygen", "--secret", sec, "--public", pub, "cache.example.org-1")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	secRaw, _ := os.ReadFile(sec)
	pubRaw, _ := os.ReadFile(pub)
	if !secretRE.Match(secRaw) || !publicRE.Match(pubRaw) {
		t.Fatalf("files not in Nix's format:\n%q\n%q", secRaw, pubRaw)
	}
	if stdout != string(pubRaw)+"\n" {
		t.Errorf("printed %q, public file %q", stdout, pubRaw)
	}
	for p, want := range map[string]os.FileMode{sec: 0o600, pub: 0o644} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v (%v), want %v", p, fi.Mode().Perm(), err, want)
		}
	}
	k, err := narinfo.LoadSecretKeyFile(sec)
	if err != nil {
		t.Fatal(err)
	}
	if k.Public().String() != string(pubRaw) {
		t.Error("public key file does not belong to the secret key")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 2 {
		t.Errorf("temporary files left behind: %v", entries)
	}
}

func TestKeygenDefaultsAndRefusal(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	if code, _, stderr := runCache(t, "keygen", "cache.example.org-1"); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	sec, _ := os.ReadFile("cache.example.org-1.sec")
	pub, _ := os.ReadFile("cache.example.org-1.pub")
	if !secretRE.Match(sec) || !publicRE.Match(pub) {
		t.Fatalf("default files: %q %q", sec, pub)
	}

	// A second run must fail and change nothing.
	code, stdout, stderr := runCache(t, "keygen", "cache.example.org-1")
	if code != 1 || stdout != "" || !strings.Contains(stderr, "already exists") {
		t.Errorf("second run: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	sec2, _ := os.ReadFile("cache.example.org-1.sec")
	pub2, _ := os.ReadFile("cache.example.org-1.pub")
	if !bytes.Equal(sec, sec2) || !bytes.Equal(pub, pub2) {
		t.Error("existing keys were changed")
	}

	// Only the public file exists: no secret may be left behind.
	if err := os.WriteFile("only.pub", []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := runCache(t, "keygen", "--secret", "only.sec", "--public", "only.pub", "only-1"); code != 1 {
		t.Errorf("exit %d: %s", code, stderr)
	}
	if _, err := os.Stat("only.sec"); !os.IsNotExist(err) {
		t.Errorf("secret written although the public file existed: %v", err)
	}
	if b, _ := os.ReadFile("only.pub"); string(b) != "keep" {
		t.Errorf("public file changed to %q", b)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 3 {
		t.Errorf("files: %v", entries)
	}
}

func TestKeygenUsage(t *testing.T) {
	t.Chdir(t.TempDir())
	for _, args := range [][]string{
		{"keygen"},
		{"keygen", "a-1", "b-1"},
		{"keygen", ""},
		{"keygen", "a:1"},
		{"keygen", "a 1"},
		{"keygen", "dir/a-1"},
		{"keygen", "--secret", "x", "--public", "x", "a-1"},
		{"keygen", "--bogus", "a-1"},
	} {
		if code, _, stderr := runCache(t, args...); code != 2 {
			t.Errorf("%q: exit %d, want 2 (%s)", args, code, stderr)
		}
	}
	if entries, _ := os.ReadDir("."); len(entries) != 0 {
		t.Errorf("usage errors wrote files: %v", entries)
	}
	if code, stdout, _ := runCache(t, "help", "keygen"); code != 0 || !strings.Contains(stdout, "./NAME.sec") {
		t.Errorf("help: %d %q", code, stdout)
	}
}

// TestKeygenWithNix: real Nix signs with our secret key file, its signature
// equals ours, and it trusts our public key file for verification and for
// substitution.
func TestKeygenWithNix(t *testing.T) {
	for _, bin := range []string{"nix", "nix-build"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not installed", bin)
		}
	}
	dir := t.TempDir()
	env := append(os.Environ(), "HOME="+t.TempDir(), "XDG_CACHE_HOME="+t.TempDir(), "NIX_CONFIG=experimental-features = nix-command")
	nix := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Env = env
		out, err := cmd.Output()
		if err != nil {
			var stderr []byte
			if ee, ok := err.(*exec.ExitError); ok {
				stderr = ee.Stderr
			}
			t.Fatalf("%q: %v\n%s", args, err, stderr)
		}
		return string(out)
	}
	secFile, pubFile := filepath.Join(dir, "k.sec"), filepath.Join(dir, "k.pub")
	if code, _, stderr := runCache(t, "keygen", "--secret", secFile, "--public", pubFile, "cache.example.org-1"); code != 0 {
		t.Fatal(stderr)
	}
	pub, _ := os.ReadFile(pubFile)
	sec, err := narinfo.LoadSecretKeyFile(secFile)
	if err != nil {
		t.Fatal(err)
	}

	// An input-addressed path: Nix trusts content-addressed ones (nix-store
	// --add) without any signature, which would make the checks vacuous.
	store := filepath.Join(dir, "root")
	expr := filepath.Join(dir, "drv.nix")
	os.WriteFile(expr, []byte(`derivation { name = "concordia-keygen-test"; system = builtins.currentSystem;
  builder = "/bin/sh"; args = ["-c" "echo signed by a concordia key > $out"]; }`), 0o644)
	path := strings.TrimSpace(nix("nix-build", "--no-out-link", expr))
	nix("nix", "copy", "--no-check-sigs", "--to", store, path)
	nix("nix", "store", "sign", "--store", store, "--key-file", secFile, path)

	var infos []struct {
		Path       string   `json:"path"`
		NarHash    string   `json:"narHash"`
		NarSize    uint64   `json:"narSize"`
		References []string `json:"references"`
		Signatures []string `json:"signatures"`
	}
	if err := json.Unmarshal([]byte(nix("nix", "path-info", "--json", "--store", store, path)), &infos); err != nil || len(infos) != 1 {
		t.Fatalf("path-info: %v %v", infos, err)
	}
	nh, err := narinfo.ParseHash(infos[0].NarHash)
	if err != nil {
		t.Fatal(err)
	}
	want := sec.Sign(narinfo.Fingerprint(path, nh, infos[0].NarSize, infos[0].References))
	if !slices.Contains(infos[0].Signatures, want) {
		t.Errorf("nix signed %q, we sign %q", infos[0].Signatures, want)
	}
	nix("nix", "store", "verify", "--store", store, "--sigs-needed", "1", "--option", "trusted-public-keys", string(pub), path)

	// Substitution: a cache signed with our key file, read with only our
	// public key trusted.
	cache := filepath.Join(dir, "cache")
	nix("nix", "copy", "--no-check-sigs", "--from", store, "--to", "file://"+cache+"?secret-key="+secFile, path)
	copyWith := func(trusted, dest string) error {
		cmd := exec.Command("nix", "copy", "--from", "file://"+cache, "--to", filepath.Join(dir, dest),
			"--option", "trusted-public-keys", trusted, "--option", "require-sigs", "true", path)
		cmd.Env = append(env, "XDG_CACHE_HOME="+t.TempDir())
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	}
	_, other, _ := narinfo.GenerateKey("cache.example.org-1") // same name, other key
	if err := copyWith(other.String(), "dest-other"); err == nil {
		t.Fatal("nix accepted the path with a different key trusted: the check below proves nothing")
	}
	if err := copyWith(string(pub), "dest"); err != nil {
		t.Fatalf("nix refused our key: %v", err)
	}
}
