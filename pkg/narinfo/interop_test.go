package narinfo_test

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/bos55/concordia/pkg/narinfo"
)

// TestNixCopyRoundTrip: every narinfo that nix copy --to file:// writes
// parses and renders back byte for byte, for each compression, unsigned and
// signed (by ?secret-key= and by nix store sign), and our Sign with the same
// keys reproduces Nix's Sig lines exactly.
func TestNixCopyRoundTrip(t *testing.T) {
	h := newNix(t)
	c := h.buildClosure()
	keyA, _ := filepath.Abs("testdata/keys/test.example.org-1.sec")
	keyB, _ := filepath.Abs("testdata/keys/b.example-2.sec")
	secA, secB := mustLoadSecret(t, keyA), mustLoadSecret(t, keyB)
	trusted := []narinfo.PublicKey{secA.Public(), secB.Public()}
	// A second signature on some paths, made inside the store, so the
	// multi-Sig ordering is exercised too.
	h.run("nix", "store", "sign", "--store", c.store, "--key-file", keyB, c.y, c.fixed)

	for _, comp := range []string{"none", "xz", "zstd"} {
		for _, signed := range []bool{false, true} {
			name := comp
			if signed {
				name += "-signed"
			}
			t.Run(name, func(t *testing.T) {
				h := h.with(t)
				dir := t.TempDir()
				url := "file://" + dir + "?compression=" + comp
				if signed {
					url += "&secret-key=" + keyA
				}
				h.run(append([]string{"nix", "copy", "--no-check-sigs", "--from", c.store, "--to", url}, c.all...)...)
				files := readCache(t, dir)
				if len(files) != len(c.all) {
					t.Fatalf("nix wrote %d narinfos, want %d", len(files), len(c.all))
				}
				for file, raw := range files {
					ni, err := narinfo.Parse(bytes.NewReader(raw))
					if err != nil {
						t.Fatalf("%s: %v\n%s", file, err, raw)
					}
					if got := ni.String(); got != string(raw) {
						t.Errorf("%s: render differs\nnix:\n%s\nours:\n%s", file, raw, got)
					}
					if ni.Compression != comp {
						t.Errorf("%s: Compression %q, want %q", file, ni.Compression, comp)
					}
					checkAgainstPathInfo(t, h, c.store, ni)
					if len(ni.Sigs) > 0 {
						if _, ok := ni.Verify(trusted); !ok {
							t.Errorf("%s: Nix's signatures do not verify with our Verify", file)
						}
						// Re-sign a copy without signatures: ed25519 is
						// deterministic, so we must get Nix's exact lines.
						re := *ni
						re.Sigs = nil
						for _, s := range ni.Sigs {
							if strings.HasPrefix(s, secA.Name()+":") {
								re.Sign(secA)
							} else {
								re.Sign(secB)
							}
						}
						if !slices.Equal(re.Sigs, ni.Sigs) {
							t.Errorf("%s: our signatures %q, Nix's %q", file, re.Sigs, ni.Sigs)
						}
					}
					if signed && !slices.ContainsFunc(ni.Sigs, func(s string) bool { return strings.HasPrefix(s, secA.Name()+":") }) {
						t.Errorf("%s: no Sig by %s although the cache signs", file, secA.Name())
					}
					if *update {
						writeFixture(t, name, file, raw)
					}
				}
			})
		}
	}
}

// checkAgainstPathInfo compares a parsed narinfo with what the store says.
func checkAgainstPathInfo(t *testing.T, h *nixHarness, store string, ni *narinfo.NarInfo) {
	t.Helper()
	pi := h.pathInfo(store, ni.StorePath)
	want, err := narinfo.ParseHash(pi.NarHash) // SRI form
	if err != nil {
		t.Fatal(err)
	}
	if !ni.NarHash.Equal(want) || ni.NarSize != pi.NarSize || ni.CA != pi.CA {
		t.Errorf("%s: narinfo says %s %d %q, path-info %s %d %q", ni.StorePath, ni.NarHash, ni.NarSize, ni.CA, want, pi.NarSize, pi.CA)
	}
	var refs []string
	for _, r := range ni.References {
		refs = append(refs, ni.StoreDir()+"/"+r)
	}
	if !slices.Equal(refs, pi.References) {
		t.Errorf("%s: references %q, path-info %q", ni.StorePath, refs, pi.References)
	}
}

func writeFixture(t *testing.T, dir, file string, raw []byte) {
	t.Helper()
	d := filepath.Join("testdata", "nix28", dir)
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d, file), raw, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestNixStoreSignMatchesOurs: nix store sign accepts a key file in the
// format we write, and the signature it stores equals ours for every path.
func TestNixStoreSignMatchesOurs(t *testing.T) {
	h := newNix(t)
	c := h.buildClosure()
	sec, _, err := narinfo.GenerateKey("concordia-test-1")
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "key.sec")
	if err := os.WriteFile(keyFile, []byte(sec.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	h.run(append([]string{"nix", "store", "sign", "--store", c.store, "--key-file", keyFile}, c.all...)...)
	for _, p := range c.all {
		pi := h.pathInfo(c.store, p)
		nh, err := narinfo.ParseHash(pi.NarHash)
		if err != nil {
			t.Fatal(err)
		}
		want := sec.Sign(narinfo.Fingerprint(pi.Path, nh, pi.NarSize, pi.References))
		if !slices.Contains(pi.Signatures, want) {
			t.Errorf("%s: nix stored %q, we sign %q", p, pi.Signatures, want)
		}
	}
	// And nix's own verifier accepts them with only our public key trusted.
	h.run(append([]string{"nix", "store", "verify", "--no-contents", "--store", c.store, "--sigs-needed", "1",
		"--option", "trusted-public-keys", sec.Public().String()}, c.all...)...)
}

// TestNixAcceptsOurSignatures: a file:// cache whose narinfos we signed
// copies into a fresh store with only our key trusted; unsigned, wrongly
// signed or tampered narinfos are refused.
func TestNixAcceptsOurSignatures(t *testing.T) {
	h := newNix(t)
	c := h.buildClosure()
	sec, pub, err := narinfo.GenerateKey("concordia-test-1")
	if err != nil {
		t.Fatal(err)
	}
	other, _, err := narinfo.GenerateKey("concordia-other-1")
	if err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	h.run(append([]string{"nix", "copy", "--no-check-sigs", "--from", c.store, "--to", "file://" + cache + "?compression=none"}, c.all...)...)
	pristine := readCache(t, cache)

	// rewrite replaces every narinfo with edit(parsed) rendered by us.
	rewrite := func(t *testing.T, edit func(ni *narinfo.NarInfo)) {
		t.Helper()
		for file, raw := range pristine {
			ni, err := narinfo.Parse(bytes.NewReader(raw))
			if err != nil {
				t.Fatal(err)
			}
			edit(ni)
			if err := os.WriteFile(filepath.Join(cache, file), []byte(ni.String()), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	copyFrom := func(t *testing.T, paths ...string) (string, error) {
		h := h.with(t)
		h.freshCache()
		dest := filepath.Join(t.TempDir(), "root")
		args := []string{"nix", "copy", "--from", "file://" + cache, "--to", dest,
			"--option", "trusted-public-keys", pub.String(), "--option", "require-sigs", "true"}
		_, err := h.try(append(args, paths...)...)
		return dest, err
	}
	isHash := func(ni *narinfo.NarInfo, p string) bool { return ni.StorePath == p }

	t.Run("signed", func(t *testing.T) {
		h := h.with(t)
		rewrite(t, func(ni *narinfo.NarInfo) { ni.Sign(sec) })
		dest, err := copyFrom(t, c.all...)
		if err != nil {
			t.Fatalf("nix refused our signatures: %v", err)
		}
		h.run(append([]string{"nix", "store", "verify", "--store", dest, "--sigs-needed", "1",
			"--option", "trusted-public-keys", pub.String()}, c.all...)...)
		for _, p := range c.all {
			if pi := h.pathInfo(dest, p); !slices.Contains(pi.Signatures, sec.Sign(fingerprintOf(t, pi))) {
				t.Errorf("%s: signatures %q lack ours", p, pi.Signatures)
			}
		}
	})
	// What Nix tolerates in what we serve: unknown keys and System (which
	// it reads), and no FileHash/FileSize (Harmonia serves none).
	t.Run("tolerated variations", func(t *testing.T) {
		for file, raw := range pristine {
			ni, err := narinfo.Parse(bytes.NewReader(raw))
			if err != nil {
				t.Fatal(err)
			}
			ni.FileHash, ni.FileSize = nil, 0
			ni.System = "x86_64-linux"
			ni.Sign(sec)
			doc := "X-Concordia: unknown keys are ignored\n" + ni.String() + "Foo: bar\n"
			if err := os.WriteFile(filepath.Join(cache, file), []byte(doc), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := copyFrom(t, c.z); err != nil {
			t.Fatalf("nix refused: %v", err)
		}
	})
	// A fact servers rely on: Nix 2.8 needs no signature for a
	// content-addressed path (its CA proves it), even with require-sigs.
	t.Run("content-addressed unsigned", func(t *testing.T) {
		rewrite(t, func(ni *narinfo.NarInfo) { ni.Sigs = nil })
		if _, err := copyFrom(t, c.fixed, c.text, c.flat, c.rsha1); err != nil {
			t.Fatalf("nix refused unsigned content-addressed paths: %v", err)
		}
	})
	refused := []struct {
		name string
		path string
		edit func(ni *narinfo.NarInfo)
	}{
		{"unsigned", c.x, func(ni *narinfo.NarInfo) {}},
		{"untrusted key", c.x, func(ni *narinfo.NarInfo) { ni.Sign(other) }},
		{"foreign sig under our name", c.x, func(ni *narinfo.NarInfo) {
			ni.Sigs = []string{sec.Name() + strings.TrimPrefix(other.Sign(ni.Fingerprint()), other.Name())}
		}},
		{"NarSize changed", c.x, func(ni *narinfo.NarInfo) {
			ni.Sign(sec)
			if isHash(ni, c.x) {
				ni.NarSize++
			}
		}},
		{"reference dropped", c.y, func(ni *narinfo.NarInfo) {
			ni.Sign(sec)
			if isHash(ni, c.y) {
				ni.References = nil
			}
		}},
		{"reference swapped", c.z, func(ni *narinfo.NarInfo) {
			ni.Sign(sec)
			if isHash(ni, c.z) {
				ni.References = slices.DeleteFunc(ni.References, func(r string) bool { return strings.HasPrefix(c.x, ni.StoreDir()+"/"+r) })
				ni.References = append(ni.References, filepath.Base(c.fixed))
			}
		}},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			rewrite(t, tc.edit)
			_, err := copyFrom(t, tc.path)
			if err == nil {
				t.Fatalf("nix accepted a narinfo with %s", tc.name)
			}
			if !strings.Contains(err.Error(), "lacks a valid signature") {
				t.Errorf("nix refused for another reason than the signature: %v", err)
			}
		})
	}
}

func fingerprintOf(t *testing.T, pi pathInfo) string {
	t.Helper()
	nh, err := narinfo.ParseHash(pi.NarHash)
	if err != nil {
		t.Fatal(err)
	}
	return narinfo.Fingerprint(pi.Path, nh, pi.NarSize, pi.References)
}
