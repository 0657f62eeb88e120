package narinfo_test

import (
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"strings"
	"testing"

	"github.com/bos55/concordia/pkg/narinfo"
)

// TestParseHashForms: every encoding Nix prints (the strings come from
// nix hash to-base16/to-base64/to-sri and nix hash file --type X) parses to
// the same digest, and String renders Nix's nix32 form.
func TestParseHashForms(t *testing.T) {
	abc := []byte("abc")
	md5sum, sha1sum, sha512sum := md5.Sum(abc), sha1.Sum(abc), sha512.Sum512(abc)
	nar := "sha256:0v2b8ll9a2gcpvknxfnc5x4b2cbr1bqnpg77jfn8gj7l0m8y9v85"
	tests := []struct {
		algo   string
		digest []byte
		nix32  string
		forms  []string
	}{
		{"sha256", nil, nar, []string{
			nar,
			"sha256:05ede45105f4c887ac93e7bc6bf10a7931b1482fccba6ee7beec099528454b6c",
			"sha256:05EDE45105F4C887AC93E7BC6BF10A7931B1482FCCBA6EE7BEEC099528454B6C",
			"sha256:Be3kUQX0yIesk+e8a/EKeTGxSC/Mum7nvuwJlShFS2w=",
			"sha256-Be3kUQX0yIesk+e8a/EKeTGxSC/Mum7nvuwJlShFS2w=",
			"sha256-Be3kUQX0yIesk+e8a/EKeTGxSC/Mum7nvuwJlShFS2w",
		}},
		{"md5", md5sum[:], "md5:3jgzhjhz9zjvbb0kyj7jc500ch", []string{
			"md5:3jgzhjhz9zjvbb0kyj7jc500ch", "md5:900150983cd24fb0d6963f7d28e17f72",
			"md5:kAFQmDzST7DWlj99KOF/cg==", "md5-kAFQmDzST7DWlj99KOF/cg==",
		}},
		{"sha1", sha1sum[:], "sha1:kpcd173cq987hw957sx6m0868wv3x6d9", []string{
			"sha1:kpcd173cq987hw957sx6m0868wv3x6d9", "sha1:a9993e364706816aba3e25717850c26c9cd0d89d",
			"sha1:qZk+NkcGgWq6PiVxeFDCbJzQ2J0=", "sha1-qZk+NkcGgWq6PiVxeFDCbJzQ2J0=",
		}},
		{"sha512", sha512sum[:], "sha512:2gs8k559z4rlahfx0y688s49m2vvszylcikrfinm30ly9rak69236nkam5ydvly1ai7xac99vxfc4ii84hawjbk876blyk1jfhkbbyx", []string{
			"sha512:2gs8k559z4rlahfx0y688s49m2vvszylcikrfinm30ly9rak69236nkam5ydvly1ai7xac99vxfc4ii84hawjbk876blyk1jfhkbbyx",
			"sha512:ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
			"sha512:3a81oZNherrMQXNJriBBMRLm+k6JqX6iCp7u5ktV05ohkpkqJ0/BqDa6PCOj/uu9RU1EI2Q86A4qmslPpUyknw==",
			"sha512-3a81oZNherrMQXNJriBBMRLm+k6JqX6iCp7u5ktV05ohkpkqJ0/BqDa6PCOj/uu9RU1EI2Q86A4qmslPpUyknw==",
		}},
	}
	for _, tc := range tests {
		first, err := narinfo.ParseHash(tc.forms[0])
		if err != nil {
			t.Fatal(err)
		}
		if tc.digest != nil && !first.Equal(narinfo.Hash{Algo: tc.algo, Digest: tc.digest}) {
			t.Errorf("%s: digest %x, want %x", tc.forms[0], first.Digest, tc.digest)
		}
		for _, f := range tc.forms {
			t.Run(f, func(t *testing.T) {
				h, err := narinfo.ParseHash(f)
				if err != nil {
					t.Fatal(err)
				}
				if !h.Equal(first) || h.Algo != tc.algo {
					t.Errorf("got %s %x, want %s %x", h.Algo, h.Digest, tc.algo, first.Digest)
				}
				if h.String() != tc.nix32 {
					t.Errorf("String() = %s, want %s", h.String(), tc.nix32)
				}
			})
		}
	}
	h, _ := narinfo.ParseHash(nar)
	if h.Base16() != "sha256:05ede45105f4c887ac93e7bc6bf10a7931b1482fccba6ee7beec099528454b6c" ||
		h.SRI() != "sha256-Be3kUQX0yIesk+e8a/EKeTGxSC/Mum7nvuwJlShFS2w=" {
		t.Errorf("Base16 %s SRI %s", h.Base16(), h.SRI())
	}
	sum := sha256.Sum256(abc)
	if got := narinfo.SHA256(sum[:]); got.Algo != "sha256" || got.String() != "sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s" {
		t.Errorf("SHA256(abc) = %s", got)
	}
}

func TestParseHashRejects(t *testing.T) {
	nix32 := "0v2b8ll9a2gcpvknxfnc5x4b2cbr1bqnpg77jfn8gj7l0m8y9v85"
	hex := "05ede45105f4c887ac93e7bc6bf10a7931b1482fccba6ee7beec099528454b6c"
	b64 := "Be3kUQX0yIesk+e8a/EKeTGxSC/Mum7nvuwJlShFS2w="
	for _, s := range []string{
		"",
		nix32,                   // no algorithm
		"sha256",                // nothing after
		"sha256:",               // empty digest
		"sha257:" + nix32,       // unknown algorithm
		"SHA256:" + nix32,       // algorithm names are lower case
		"sha256:" + nix32[1:],   // one char short
		"sha256:" + nix32 + "0", // one char long
		"sha256:" + strings.Replace(nix32, "v", "e", 1), // 'e' is not nix32
		"sha256:" + strings.Replace(nix32, "v", "u", 1),
		"sha256:z" + nix32[1:], // top bits overflow 256 bits
		"sha256:" + hex[1:],
		"sha256:" + hex[:63] + "g",
		"sha256:" + b64[:43] + "!",
		"sha256:" + b64[1:] + "=", // 44 chars, bad padding
		"sha256-" + hex,           // SRI is always base64
		"sha256-" + nix32,
		"sha256-" + b64[:40] + "=",
		"sha1:" + nix32, // sha256 length under sha1
		"md5-" + b64,
		"sha256: " + nix32[1:],
	} {
		t.Run(s, func(t *testing.T) {
			h, err := narinfo.ParseHash(s)
			if err == nil {
				t.Fatalf("accepted as %s", h)
			}
			if !errors.Is(err, narinfo.ErrHash) {
				t.Errorf("error %v does not wrap ErrHash", err)
			}
		})
	}
}

func TestParseStorePath(t *testing.T) {
	const hp = "ysha1hfj68jncxrpj5cj7cxviqhssh46"
	good := []struct{ in, dir, name string }{
		{"/nix/store/" + hp + "-concordia-narinfo-z", "/nix/store", "concordia-narinfo-z"},
		{"/gnu/store/" + hp + "-a", "/gnu/store", "a"},
		{"/nix/store/" + hp + "-" + strings.Repeat("x", 211), "/nix/store", strings.Repeat("x", 211)},
		{"/nix/store/" + hp + "-Az09+-._?=", "/nix/store", "Az09+-._?="},
		{"/nix/store/" + hp + "-foo.drv", "/nix/store", "foo.drv"},
		// Leading periods are legal since Nix 2.4, as in Lix.
		{"/nix/store/" + hp + "-.hidden", "/nix/store", ".hidden"},
		{"/nix/store/" + hp + "-...", "/nix/store", "..."},
		{"/nix/store/" + hp + "-..x", "/nix/store", "..x"},
	}
	for _, tc := range good {
		dir, h, name, err := narinfo.ParseStorePath(tc.in)
		if err != nil || dir != tc.dir || h != hp || name != tc.name {
			t.Errorf("ParseStorePath(%q) = %q %q %q %v", tc.in, dir, h, name, err)
		}
	}
	for _, in := range []string{
		"", hp + "-a", "/" + hp + "-a", "nix/store/" + hp + "-a", "/nix/store/",
		"/nix//store/" + hp + "-a", "/nix/store/../" + hp + "-a", "/nix/store/./" + hp + "-a",
		"/nix/store/" + hp, "/nix/store/" + hp + "-", "/nix/store/" + hp + "_a",
		"/nix/store/" + hp[1:] + "-a", "/nix/store/e" + hp[1:] + "-a", "/nix/store/Y" + hp[1:] + "-a",
		"/nix/store/" + hp + "-" + strings.Repeat("x", 212),
		"/nix/store/" + hp + "-a b", "/nix/store/" + hp + "-a/b", "/nix/store/" + hp + "-a\n",
		"/nix/store/" + hp + "-é", "/nix/store/" + hp + "-a:b",
		// Nix's checkName: never the store dir or its parent.
		"/nix/store/" + hp + "-.", "/nix/store/" + hp + "-..", "/nix/store/" + hp + "-.-x", "/nix/store/" + hp + "-..-x",
	} {
		if _, _, _, err := narinfo.ParseStorePath(in); !errors.Is(err, narinfo.ErrStorePath) {
			t.Errorf("ParseStorePath(%q) err = %v, want ErrStorePath", in, err)
		}
	}
	if !narinfo.ValidHashPart(hp) || narinfo.ValidHashPart(hp[:31]) || narinfo.ValidHashPart("t"+hp[1:]) {
		t.Error("ValidHashPart")
	}
	for base, ok := range map[string]bool{hp + "-hello.drv": true, hp + "-hello": false, hp + "-.drv": false, hp + "-..-x.drv": false} {
		if _, _, err := narinfo.ParseDerivation(base); (err == nil) != ok {
			t.Errorf("ParseDerivation(%q) = %v", base, err)
		}
	}
}

// FuzzParseHash: ParseHash never panics, and what it accepts survives every
// rendering Nix uses.
func FuzzParseHash(f *testing.F) {
	for _, s := range []string{
		"sha256:0v2b8ll9a2gcpvknxfnc5x4b2cbr1bqnpg77jfn8gj7l0m8y9v85",
		"sha256:05ede45105f4c887ac93e7bc6bf10a7931b1482fccba6ee7beec099528454b6c",
		"sha256-Be3kUQX0yIesk+e8a/EKeTGxSC/Mum7nvuwJlShFS2w=",
		"md5:kAFQmDzST7DWlj99KOF/cg==", "sha1:kpcd173cq987hw957sx6m0868wv3x6d9", "sha512-", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		h, err := narinfo.ParseHash(s)
		if err != nil {
			return
		}
		for _, form := range []string{h.String(), h.Base16(), h.SRI()} {
			back, err := narinfo.ParseHash(form)
			if err != nil || !back.Equal(h) {
				t.Fatalf("%q -> %q -> %v %v", s, form, back, err)
			}
		}
	})
}
