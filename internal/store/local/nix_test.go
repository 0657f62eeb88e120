package local_test

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/bos55/concordia/internal/store/storetest"
	"github.com/bos55/concordia/pkg/narinfo"
)

// nixStore is a real Nix store for one test: either a private chroot store
// under a temporary root (DB at <root>/nix/var/nix/db, bytes under
// <root>/nix/store, paths named /nix/store/...), or the machine's /nix when
// root is "".
type nixStore struct {
	root string
	env  []string
}

// needNix skips when the Nix tools or root rights are missing: the machine's
// store is root's single-user store, and chroot stores build only as root.
func needNix(t testing.TB) {
	t.Helper()
	for _, bin := range []string{"nix", "nix-build", "nix-store", "nix-instantiate"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not installed", bin)
		}
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: the Nix store here is root's single-user store")
	}
}

// newChrootStore makes a private store. Its directories are world-readable
// like a real /nix so that the unprivileged test can read it.
func newChrootStore(t testing.TB) *nixStore {
	t.Helper()
	needNix(t)
	root := worldReadableTempDir(t)
	// ca-derivations only here: enabling it on the machine's store would
	// add the CA tables to its database.
	n := &nixStore{root: root, env: append(nixEnv(t), "NIX_CONFIG=experimental-features = nix-command ca-derivations")}
	// Creates the store and its database.
	n.run(t, "nix-store", "--init")
	return n
}

// systemStore is the machine's /nix, used as is.
func systemStore(t testing.TB) *nixStore {
	t.Helper()
	needNix(t)
	return &nixStore{env: nixEnv(t)}
}

func nixEnv(t testing.TB) []string {
	home := t.TempDir()
	return append(os.Environ(), "HOME="+home, "XDG_CACHE_HOME="+filepath.Join(home, ".cache"),
		"NIX_CONFIG=experimental-features = nix-command")
}

// worldReadableTempDir is a t.TempDir that other users can enter, as the
// go test temporary directories are 0700.
func worldReadableTempDir(t testing.TB) string {
	t.Helper()
	d := t.TempDir()
	for p := d; p != os.TempDir() && p != "/"; p = filepath.Dir(p) {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

func (n *nixStore) dbPath() string  { return filepath.Join("/", n.root, "nix/var/nix/db/db.sqlite") }
func (n *nixStore) realDir() string { return filepath.Join("/", n.root, "nix/store") }
func (n *nixStore) real(p string) string {
	return filepath.Join(n.realDir(), filepath.Base(p))
}

// run runs a Nix command against this store and returns its stdout.
func (n *nixStore) run(t testing.TB, name string, args ...string) []byte {
	t.Helper()
	if n.root != "" {
		args = append([]string{"--store", n.root}, args...)
		if name == "nix-build" || name == "nix-store" && args[2] == "--realise" {
			// Builds in a chroot store run chrooted: give them /bin/sh.
			args = append(args, "--option", "extra-sandbox-paths", "/bin /lib /lib64 /usr")
		}
	}
	cmd := exec.Command(name, args...)
	cmd.Env = n.env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.Bytes())
	}
	return out
}

// testExpr builds, with a fresh tag so that every run makes new paths:
// a (text), b (refers to a), c (directory with an executable, a symlink, a
// self-reference and a reference to b), big (a NAR larger than the dump
// buffer), and the content-addressed ca-a, ca-b (realisations).
const testExpr = `{ tag }:
let
  mk = name: script: derivation { name = "${name}-${tag}"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ]; };
  mkCA = name: script: derivation { name = "${name}-${tag}"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ];
    __contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256"; };
in rec {
  a = mk "a" "echo a > $out";
  b = mk "b" "echo ${a} > $out";
  c = mk "c" ''
    /bin/mkdir -p $out/sub/deeper
    echo '#!/bin/sh' > $out/run
    /bin/chmod +x $out/run
    /bin/ln -s run $out/link
    /bin/ln -s ${b} $out/sub/b
    echo $out > $out/sub/self
    : > $out/sub/deeper/empty
  '';
  big = mk "big" ''
    /bin/mkdir $out
    s=0123456789abcdef; i=0
    while [ $i -lt 15 ]; do s=$s$s; i=$((i+1)); done
    echo $s > $out/f1; echo $s > $out/f2; echo $s > $out/f3
  '';
  ca-a = mkCA "ca-a" "echo ca-a > $out";
  ca-b = mkCA "ca-b" "echo ${ca-a} > $out";
  fresh = mk "fresh" "echo fresh > $out";
}
`

type built struct {
	tag  string
	expr string
	// paths by attribute name
	out map[string]string
	// link is each path's out link, its GC root
	link map[string]string
}

// build writes testExpr with a new tag and builds the given attributes.
func (n *nixStore) build(t testing.TB, attrs ...string) *built {
	t.Helper()
	tag := nixbase32.EncodeToString(randBytes(t, 5))
	expr := filepath.Join(t.TempDir(), "test.nix")
	if err := os.WriteFile(expr, []byte(testExpr), 0o644); err != nil {
		t.Fatal(err)
	}
	b := &built{tag: tag, expr: expr, out: map[string]string{}, link: map[string]string{}}
	n.buildMore(t, b, attrs...)
	return b
}

func (n *nixStore) buildMore(t testing.TB, b *built, attrs ...string) {
	t.Helper()
	// Out links are GC roots: other tests may collect garbage in /nix.
	link := filepath.Join(t.TempDir(), "result")
	args := []string{b.expr, "--argstr", "tag", b.tag, "--out-link", link}
	for _, a := range attrs {
		args = append(args, "-A", a)
	}
	lines := strings.Fields(string(n.run(t, "nix-build", args...)))
	if len(lines) != len(attrs) {
		t.Fatalf("nix-build printed %q for %q", lines, attrs)
	}
	for i, a := range attrs {
		b.out[a] = lines[i]
		b.link[a] = link
		if i > 0 {
			b.link[a] = fmt.Sprintf("%s-%d", link, i+1)
		}
	}
}

func randBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// nixPathInfo is one element of `nix path-info --json` (Nix 2.8).
type nixPathInfo struct {
	Path             string   `json:"path"`
	NarHash          string   `json:"narHash"`
	NarSize          uint64   `json:"narSize"`
	References       []string `json:"references"`
	Deriver          string   `json:"deriver"`
	Signatures       []string `json:"signatures"`
	CA               string   `json:"ca"`
	RegistrationTime int64    `json:"registrationTime"`
}

func (n *nixStore) pathInfo(t testing.TB, paths ...string) map[string]nixPathInfo {
	t.Helper()
	var infos []nixPathInfo
	out := n.run(t, "nix", append([]string{"path-info", "--json"}, paths...)...)
	if err := json.Unmarshal(out, &infos); err != nil {
		t.Fatalf("path-info --json: %v\n%s", err, out)
	}
	m := map[string]nixPathInfo{}
	for _, i := range infos {
		m[i.Path] = i
	}
	return m
}

// dump is the reference NAR, from the bytes' real location.
func (n *nixStore) dump(t testing.TB, p string) []byte {
	t.Helper()
	cmd := exec.Command("nix-store", "--dump", n.real(p))
	cmd.Env = n.env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("nix-store --dump %s: %v\n%s", p, err, stderr.Bytes())
	}
	return out
}

// fixture describes paths for storetest from what Nix itself reports.
func (n *nixStore) fixture(t testing.TB, paths ...string) storetest.Fixture {
	t.Helper()
	infos := n.pathInfo(t, paths...)
	var fx storetest.Fixture
	for _, p := range paths {
		i, ok := infos[p]
		if !ok {
			t.Fatalf("nix path-info knows nothing of %s", p)
		}
		refs := i.References
		if refs == nil {
			refs = []string{}
		}
		sigs := i.Signatures
		if sigs == nil {
			sigs = []string{}
		}
		fx.Paths = append(fx.Paths, storetest.Path{
			StorePath: p, NAR: n.dump(t, p), References: refs, Deriver: i.Deriver, Sigs: sigs, CA: i.CA,
		})
	}
	return fx
}

// hashPart of a full store path.
func hashPart(t testing.TB, p string) string {
	t.Helper()
	_, h, _, err := narinfo.ParseStorePath(p)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// realisations returns `nix realisation info --json` for attributes of b,
// each element re-encoded compactly as Nix writes it to a binary cache.
func (n *nixStore) realisations(t testing.TB, b *built, attrs ...string) map[string]string {
	t.Helper()
	args := []string{"realisation", "info", "--json", "-f", b.expr, "--argstr", "tag", b.tag}
	out := n.run(t, "nix", append(args, attrs...)...)
	var docs []json.RawMessage
	if err := json.Unmarshal(out, &docs); err != nil {
		t.Fatalf("realisation info: %v\n%s", err, out)
	}
	m := map[string]string{}
	for _, d := range docs {
		var id struct{ ID string }
		if err := json.Unmarshal(d, &id); err != nil {
			t.Fatal(err)
		}
		m[id.ID] = string(d)
	}
	if len(m) != len(attrs) {
		t.Fatalf("realisation info gave %d documents for %v: %s", len(m), attrs, out)
	}
	return m
}
