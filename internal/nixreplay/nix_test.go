package nixreplay

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// realNix runs the installed nix with its own HOME and XDG_CACHE_HOME:
// the client's narinfo disk cache would otherwise skip requests and make
// the trace depend on earlier runs.
type realNix struct {
	t    *testing.T
	home string
}

func newRealNix(t *testing.T) *realNix {
	t.Helper()
	if _, err := exec.LookPath("nix"); err != nil {
		t.Skip("nix not on PATH")
	}
	return &realNix{t: t, home: t.TempDir()}
}

func (n *realNix) run(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(),
		"HOME="+n.home,
		"XDG_CACHE_HOME="+filepath.Join(n.home, "cache"),
		"XDG_CONFIG_HOME="+filepath.Join(n.home, "config"),
		"NIX_CONFIG=experimental-features = nix-command\nsubstituters = \n",
	)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

func (n *realNix) must(ctx context.Context, name string, args ...string) string {
	n.t.Helper()
	out, err := n.run(ctx, name, args...)
	if err != nil {
		n.t.Fatal(err)
	}
	return out
}

// buildClosure builds c -> b -> a, c -> a under a fresh tag, b holding 2 MB
// of noise so compression and Content-Length matter; it returns c and the
// closure as replayer Paths.
func buildClosure(ctx context.Context, t *testing.T, n *realNix) (string, []Path) {
	t.Helper()
	tag := make([]byte, 4)
	rand.Read(tag)
	expr := fmt.Sprintf(`
let
  tag = "%s";
  mk = name: script: derivation { inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ]; };
  a = mk "rp-a-${tag}" "echo leaf ${tag} > $out";
  b = mk "rp-b-${tag}" "/bin/mkdir $out; echo ${a} > $out/ref; /bin/head -c 2000000 /dev/urandom > $out/blob";
  c = mk "rp-c-${tag}" "echo ${b} ${a} > $out";
in c
`, hex.EncodeToString(tag))
	f := filepath.Join(t.TempDir(), "c.nix")
	os.WriteFile(f, []byte(expr), 0o644)
	top := strings.TrimSpace(n.must(ctx, "nix-build", "--no-out-link", f))
	var paths []Path
	for _, p := range strings.Fields(n.must(ctx, "nix-store", "-qR", top)) {
		narb, err := exec.CommandContext(ctx, "nix-store", "--dump", p).Output()
		if err != nil {
			t.Fatal(err)
		}
		refs := strings.Fields(n.must(ctx, "nix-store", "-q", "--references", p))
		drv := strings.TrimSpace(n.must(ctx, "nix-store", "-q", "--deriver", p))
		if drv == "unknown-deriver" {
			drv = ""
		}
		paths = append(paths, Path{StorePath: p, NAR: narb, References: refs, Deriver: filepath.Base(drv)})
	}
	if len(paths) != 3 {
		t.Fatalf("closure %v", paths)
	}
	return top, paths
}

// TestNix28GroundTruth runs the real nix (Debian's 2.8 here) against the
// recording fake and the "Nix 2.8" profile against another, for the same
// closure, and requires the normalized traces to be equal: upload with
// zstd and with none, 401 on nix-cache-info, and nix copy --from.
func TestNix28GroundTruth(t *testing.T) {
	n := newRealNix(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if v := n.must(ctx, "nix", "--version"); !strings.Contains(v, " 2.8.") {
		t.Skipf("ground truth is for nix 2.8, have %s", strings.TrimSpace(v))
	}
	prof, _ := ProfileAt("Nix 2.8")
	top, paths := buildClosure(ctx, t, n)

	upload := func(t *testing.T, comp string, status func(*http.Request) int) (real, replay []string, realErr, replayErr error) {
		fr := newFakeCache(t)
		fr.set(func() { fr.status = status })
		_, realErr = (&realNix{t: t, home: t.TempDir()}).run(ctx, "nix", "copy", "--to", fr.URL()+"?compression="+comp, top)
		fp := newFakeCache(t)
		fp.set(func() { fp.status = status })
		replayErr = (&Client{Profile: prof, BaseURL: fp.URL()}).Upload(ctx, paths, UploadOptions{Compression: comp})
		return Normalize(fr.Entries(), fr.Owner), Normalize(fp.Entries(), fp.Owner), realErr, replayErr
	}
	for _, comp := range []string{"zstd", "none", "xz"} {
		t.Run("upload/"+comp, func(t *testing.T) {
			real, replay, realErr, replayErr := upload(t, comp, nil)
			if realErr != nil || replayErr != nil {
				t.Fatalf("nix: %v; replay: %v", realErr, replayErr)
			}
			diff(t, "replay against real nix", replay, real)
		})
	}
	t.Run("upload/401-on-cache-info", func(t *testing.T) {
		real, replay, realErr, replayErr := upload(t, "zstd", statusOn("GET", "/nix-cache-info", 401))
		if (realErr == nil) != (replayErr == nil) {
			t.Fatalf("nix: %v; replay: %v", realErr, replayErr)
		}
		diff(t, "replay against real nix", replay, real)
	})

	t.Run("substitute", func(t *testing.T) {
		f := newFakeCache(t)
		if err := (&Client{Profile: prof, BaseURL: f.URL()}).Upload(ctx, paths, UploadOptions{Compression: "zstd"}); err != nil {
			t.Fatal(err)
		}
		f.Reset()
		store := filepath.Join(t.TempDir(), "store")
		if _, err := (&realNix{t: t, home: t.TempDir()}).run(ctx, "nix", "copy", "--no-check-sigs", "--from", f.URL(), "--to", store, top); err != nil {
			t.Fatal(err)
		}
		real := Normalize(f.Entries(), f.Owner)
		f.Reset()
		if _, err := (&Client{Profile: prof, BaseURL: f.URL()}).Substitute(ctx, top); err != nil {
			t.Fatal(err)
		}
		diff(t, "replay against real nix", Normalize(f.Entries(), f.Owner), real)
	})
}
