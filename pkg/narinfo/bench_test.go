package narinfo_test

import (
	"bytes"
	"strings"
	"testing"

	gonix "github.com/nix-community/go-nix/pkg/narinfo"

	"github.com/bos55/concordia/pkg/narinfo"
)

// benchInput is a real signed narinfo with three references.
func benchInput(b *testing.B) []byte {
	b.Helper()
	for name, raw := range fixtures(b) {
		if strings.Contains(name, "xz-signed/ysha1hfj") {
			return raw
		}
	}
	b.Fatal("fixture missing")
	return nil
}

func BenchmarkParse(b *testing.B) {
	raw := benchInput(b)
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		if _, err := narinfo.Parse(bytes.NewReader(raw)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkParseGoNix is the reference: go-nix's parser on the same input.
func BenchmarkParseGoNix(b *testing.B) {
	raw := benchInput(b)
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		if _, err := gonix.Parse(bytes.NewReader(raw)); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkString(b *testing.B) {
	ni, _ := narinfo.Parse(bytes.NewReader(benchInput(b)))
	for b.Loop() {
		_ = ni.String()
	}
}

func BenchmarkStringGoNix(b *testing.B) {
	ni, _ := gonix.Parse(bytes.NewReader(benchInput(b)))
	for b.Loop() {
		_ = ni.String()
	}
}

func BenchmarkSign(b *testing.B) {
	ni, _ := narinfo.Parse(bytes.NewReader(benchInput(b)))
	sec, _, _ := narinfo.GenerateKey("bench-1")
	for b.Loop() {
		ni.Sign(sec)
	}
}

func BenchmarkVerify(b *testing.B) {
	ni, _ := narinfo.Parse(bytes.NewReader(benchInput(b)))
	pub, _ := narinfo.LoadPublicKeyFile("testdata/keys/test.example.org-1.pub")
	trusted := []narinfo.PublicKey{pub}
	for b.Loop() {
		if _, ok := ni.Verify(trusted); !ok {
			b.Fatal("no")
		}
	}
}
