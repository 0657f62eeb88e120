package narinfo_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bos55/concordia/pkg/narinfo"
)

// fixtures returns the narinfos real Nix 2.8 wrote (go test -run
// TestNixCopyRoundTrip -update regenerates them).
func fixtures(t testing.TB) map[string][]byte {
	t.Helper()
	files, err := filepath.Glob("testdata/nix28/*/*.narinfo")
	if err != nil || len(files) == 0 {
		t.Fatalf("no fixtures (%v)", err)
	}
	m := map[string][]byte{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		m[f] = b
	}
	return m
}

func fixtureKeys(t *testing.T) ([]narinfo.SecretKey, []narinfo.PublicKey) {
	t.Helper()
	var secs []narinfo.SecretKey
	var pubs []narinfo.PublicKey
	for _, name := range []string{"test.example.org-1", "b.example-2"} {
		sec := mustLoadSecret(t, "testdata/keys/"+name+".sec")
		pub := mustLoadPublic(t, "testdata/keys/"+name+".pub")
		if sec.Public().String() != pub.String() {
			t.Fatalf("%s: public key from the secret %s, file %s", name, sec.Public(), pub)
		}
		secs, pubs = append(secs, sec), append(pubs, pub)
	}
	return secs, pubs
}

// TestFixtures: Nix's narinfos render back byte for byte, Nix's signatures
// verify, our signatures equal Nix's, and any tampering breaks them.
func TestFixtures(t *testing.T) {
	secs, pubs := fixtureKeys(t)
	for file, raw := range fixtures(t) {
		t.Run(file, func(t *testing.T) {
			ni, err := narinfo.Parse(bytes.NewReader(raw))
			if err != nil {
				t.Fatal(err)
			}
			if got := ni.String(); got != string(raw) {
				t.Fatalf("render differs\nnix:\n%s\nours:\n%s", raw, got)
			}
			if err := ni.Validate(); err != nil {
				t.Errorf("Validate: %v", err)
			}
			if len(ni.Sigs) == 0 {
				if _, ok := ni.Verify(pubs); ok {
					t.Fatal("unsigned narinfo verified")
				}
				return
			}
			if _, ok := ni.Verify(pubs); !ok {
				t.Fatalf("Nix's signatures %q do not verify", ni.Sigs)
			}
			re := *ni
			re.Sigs = nil
			for _, sec := range secs {
				if strings.Contains(string(raw), "Sig: "+sec.Name()+":") {
					re.Sign(sec)
				}
			}
			if got := re.String(); got != string(raw) {
				t.Errorf("re-signed by us\n%s\nwant\n%s", got, raw)
			}
			tampered := map[string]func(n *narinfo.NarInfo){
				"NarSize":    func(n *narinfo.NarInfo) { n.NarSize++ },
				"NarHash":    func(n *narinfo.NarInfo) { n.NarHash.Digest = bytes.Clone(n.NarHash.Digest); n.NarHash.Digest[0] ^= 1 },
				"StorePath":  func(n *narinfo.NarInfo) { n.StorePath += "x" },
				"References": func(n *narinfo.NarInfo) { n.References = append(n.References, "00000000000000000000000000000000-evil") },
				"store dir":  func(n *narinfo.NarInfo) { n.StorePath = "/tmp/store/" + filepath.Base(n.StorePath) },
			}
			for what, edit := range tampered {
				bad, _ := narinfo.Parse(bytes.NewReader(raw))
				edit(bad)
				if name, ok := bad.Verify(pubs); ok {
					t.Errorf("tampered %s still verifies (by %s)", what, name)
				}
			}
			// Fields outside the fingerprint may change without breaking it,
			// as in Nix (URL and compression are the cache's business).
			moved, _ := narinfo.Parse(bytes.NewReader(raw))
			moved.URL, moved.Compression, moved.FileHash = "nar/other.nar.zst", "zstd", nil
			if _, ok := moved.Verify(pubs); !ok {
				t.Error("changing URL/Compression/FileHash broke the signature")
			}
		})
	}
}

// TestFingerprintKnown pins the exact fingerprint of a real path with a
// self-reference and unsorted input, and checks Nix's own signature over it.
func TestFingerprintKnown(t *testing.T) {
	const want = "1;/nix/store/ysha1hfj68jncxrpj5cj7cxviqhssh46-concordia-narinfo-z;" +
		"sha256:0v2b8ll9a2gcpvknxfnc5x4b2cbr1bqnpg77jfn8gj7l0m8y9v85;840;" +
		"/nix/store/59q6w1dld4lc999m6vawxa8msm0q9hgd-concordia-narinfo-x," +
		"/nix/store/jdiwj3i5n88iv3sh490z4f4r742j8a6v-concordia-narinfo-y," +
		"/nix/store/ysha1hfj68jncxrpj5cj7cxviqhssh46-concordia-narinfo-z"
	const nixSig = "test.example.org-1:BBfN7vqKOzbG9ab1Ka8Tf1QJNJXmkUPnOFWE70LpCkfdxuK/1+aRsm8vYuLN+5hdTUzrwMd1JnH7ugNgwbw4BA=="
	h, err := narinfo.ParseHash("sha256:0v2b8ll9a2gcpvknxfnc5x4b2cbr1bqnpg77jfn8gj7l0m8y9v85")
	if err != nil {
		t.Fatal(err)
	}
	got := narinfo.Fingerprint("/nix/store/ysha1hfj68jncxrpj5cj7cxviqhssh46-concordia-narinfo-z", h, 840, []string{
		"/nix/store/ysha1hfj68jncxrpj5cj7cxviqhssh46-concordia-narinfo-z",
		"/nix/store/jdiwj3i5n88iv3sh490z4f4r742j8a6v-concordia-narinfo-y",
		"/nix/store/59q6w1dld4lc999m6vawxa8msm0q9hgd-concordia-narinfo-x",
	})
	if got != want {
		t.Fatalf("fingerprint\n%s\nwant\n%s", got, want)
	}
	pub := mustLoadPublic(t, "testdata/keys/test.example.org-1.pub")
	if !pub.Verify(want, nixSig) {
		t.Fatal("Nix's signature does not verify over the fingerprint")
	}
	if sec := mustLoadSecret(t, "testdata/keys/test.example.org-1.sec"); sec.Sign(want) != nixSig {
		t.Fatalf("our signature %s, Nix's %s", sec.Sign(want), nixSig)
	}
	// Other store dirs are honoured, not replaced by /nix/store.
	ni := &narinfo.NarInfo{StorePath: "/gnu/store/ysha1hfj68jncxrpj5cj7cxviqhssh46-z", NarHash: h, NarSize: 1,
		References: []string{"ysha1hfj68jncxrpj5cj7cxviqhssh46-z"}}
	if got, want := ni.Fingerprint(), "1;/gnu/store/ysha1hfj68jncxrpj5cj7cxviqhssh46-z;"+h.String()+";1;/gnu/store/ysha1hfj68jncxrpj5cj7cxviqhssh46-z"; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}
