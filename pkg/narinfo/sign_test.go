package narinfo_test

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/bos55/concordia/pkg/narinfo"
)

func TestKeyFiles(t *testing.T) {
	// Written by nix-store --generate-binary-cache-key: no trailing newline.
	sec := mustLoadSecret(t, "testdata/keys/test.example.org-1.sec")
	raw, _ := os.ReadFile("testdata/keys/test.example.org-1.sec")
	if sec.String() != string(raw) || sec.Name() != "test.example.org-1" {
		t.Errorf("secret key renders %q, file %q", sec.String(), raw)
	}
	rawPub, _ := os.ReadFile("testdata/keys/test.example.org-1.pub")
	if sec.Public().String() != string(rawPub) {
		t.Errorf("public %q, file %q", sec.Public(), rawPub)
	}
	// Trailing newline and spaces, as an editor or echo leaves them.
	dir := t.TempDir()
	for i, suffix := range []string{"\n", " \n", "\r\n", "\n\n"} {
		p := filepath.Join(dir, string(rune('a'+i)))
		if err := os.WriteFile(p, append(bytes.Clone(raw), suffix...), 0o600); err != nil {
			t.Fatal(err)
		}
		if k, err := narinfo.LoadSecretKeyFile(p); err != nil || k.String() != sec.String() {
			t.Errorf("suffix %q: %v", suffix, err)
		}
	}
	if _, err := narinfo.LoadSecretKeyFile(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	big := filepath.Join(dir, "big")
	os.WriteFile(big, bytes.Repeat([]byte("a"), 1<<20), 0o600)
	if _, err := narinfo.LoadPublicKeyFile(big); !errors.Is(err, narinfo.ErrKey) {
		t.Errorf("big file: %v", err)
	}
}

func TestParseKeyErrors(t *testing.T) {
	_, priv, _ := ed25519.GenerateKey(nil)
	secB64 := base64.StdEncoding.EncodeToString(priv)
	pubB64 := base64.StdEncoding.EncodeToString(priv.Public().(ed25519.PublicKey))
	mismatched := bytes.Clone(priv)
	mismatched[40] ^= 1
	tests := []struct {
		name      string
		in        string
		secretErr bool
		publicErr bool
	}{
		{"good secret", "k-1:" + secB64, false, true},
		{"good public", "k-1:" + pubB64, true, false},
		{"empty", "", true, true},
		{"no colon", "k-1" + secB64, true, true},
		{"empty name", ":" + secB64, true, true},
		{"empty key", "k-1:", true, true},
		{"name with space", "k 1:" + pubB64, true, true},
		{"colon in name", "a:b:" + pubB64, true, true},
		{"bad base64", "k-1:" + pubB64[:10] + "!" + pubB64[11:], true, true},
		{"unpadded", "k-1:" + strings.TrimRight(pubB64, "="), true, true},
		{"short", "k-1:" + base64.StdEncoding.EncodeToString(priv[:63]), true, true},
		{"long", "k-1:" + base64.StdEncoding.EncodeToString(append(bytes.Clone(priv), 0)), true, true},
		{"seed only", "k-1:" + base64.StdEncoding.EncodeToString(priv.Seed()), true, false},
		{"public half not the seed's", "k-1:" + base64.StdEncoding.EncodeToString(mismatched), true, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := narinfo.ParseSecretKey(tc.in)
			if (err != nil) != tc.secretErr || err != nil && !errors.Is(err, narinfo.ErrKey) {
				t.Errorf("ParseSecretKey: %v, want error %v", err, tc.secretErr)
			}
			_, err = narinfo.ParsePublicKey(tc.in)
			if (err != nil) != tc.publicErr || err != nil && !errors.Is(err, narinfo.ErrKey) {
				t.Errorf("ParsePublicKey: %v, want error %v", err, tc.publicErr)
			}
		})
	}
	for _, name := range []string{"", "a:b", "a b", "a\nb", "a\x00"} {
		if _, _, err := narinfo.GenerateKey(name); !errors.Is(err, narinfo.ErrKey) {
			t.Errorf("GenerateKey(%q): %v", name, err)
		}
	}
	keys, err := narinfo.ParsePublicKeys(" a-1:" + pubB64 + "\n b-2:" + pubB64 + " ")
	if err != nil || len(keys) != 2 || keys[1].Name() != "b-2" {
		t.Errorf("ParsePublicKeys: %v %v", keys, err)
	}
}

func TestSignVerify(t *testing.T) {
	raw, err := os.ReadFile("testdata/nix28/none/ysha1hfj68jncxrpj5cj7cxviqhssh46.narinfo")
	if err != nil {
		t.Fatal(err)
	}
	ni, err := narinfo.Parse(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	a1, a1pub, _ := narinfo.GenerateKey("a-1")
	b1, b1pub, _ := narinfo.GenerateKey("b-1")
	a1again, a1againPub, _ := narinfo.GenerateKey("a-1") // same name, other key (rotation gone wrong)

	if _, ok := ni.Verify([]narinfo.PublicKey{a1pub}); ok {
		t.Fatal("unsigned narinfo verified")
	}
	ni.Sign(b1, a1)
	if len(ni.Sigs) != 2 || !slices.IsSorted(ni.Sigs) {
		t.Fatalf("Sigs = %q", ni.Sigs)
	}
	before := slices.Clone(ni.Sigs)
	ni.Sign(a1) // same key again: deterministic, nothing changes
	if !slices.Equal(ni.Sigs, before) {
		t.Errorf("re-signing changed %q to %q", before, ni.Sigs)
	}
	ni.Sign(a1again) // same name, new key: replaces, never two "a-1" sigs
	if len(ni.Sigs) != 2 {
		t.Fatalf("Sigs = %q", ni.Sigs)
	}
	if _, ok := ni.Verify([]narinfo.PublicKey{a1pub}); ok {
		t.Error("replaced signature still verifies")
	}
	for _, tc := range []struct {
		trusted []narinfo.PublicKey
		name    string
		ok      bool
	}{
		{[]narinfo.PublicKey{a1againPub}, "a-1", true},
		{[]narinfo.PublicKey{b1pub}, "b-1", true},
		{[]narinfo.PublicKey{a1pub, b1pub}, "b-1", true}, // stale a-1 key, b-1 still good
		{[]narinfo.PublicKey{a1pub}, "", false},
		{nil, "", false},
	} {
		name, ok := ni.Verify(tc.trusted)
		if name != tc.name || ok != tc.ok {
			t.Errorf("Verify(%v) = %q %v, want %q %v", tc.trusted, name, ok, tc.name, tc.ok)
		}
	}
	// Round trip through text keeps the signatures valid.
	back, err := narinfo.Parse(strings.NewReader(ni.String()))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := back.Verify([]narinfo.PublicKey{b1pub}); !ok {
		t.Error("signature lost in render/parse")
	}
	fp := ni.Fingerprint()
	sig := b1.Sign(fp)
	raw, _ = base64.StdEncoding.DecodeString(strings.TrimPrefix(sig, "b-1:"))
	raw[63] ^= 1
	flipped := "b-1:" + base64.StdEncoding.EncodeToString(raw)
	for _, bad := range []string{
		"", "b-1", "b-1:", "a-1" + strings.TrimPrefix(sig, "b-1"), flipped,
		"b-1:" + base64.StdEncoding.EncodeToString(make([]byte, 63)), sig + "AAAA",
	} {
		if b1pub.Verify(fp, bad) {
			t.Errorf("Verify accepted %q", bad)
		}
	}
	if !b1pub.Verify(fp, sig) || b1pub.Verify(fp+"x", sig) {
		t.Error("Verify of the fingerprint itself")
	}
}
