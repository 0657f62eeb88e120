package upstream_test

import (
	"strings"
	"testing"

	"github.com/bos55/concordia/internal/upstream"
	"github.com/bos55/concordia/internal/upstream/upstreamtest"
	"github.com/bos55/concordia/pkg/narinfo"
)

// FuzzAnswer feeds arbitrary bytes as an upstream's narinfo body through
// the checks: no panic, and never an Answer that is not about the path
// asked for, in the store, validly signed by the upstream's key.
func FuzzAnswer(f *testing.F) {
	sk, pk, err := narinfo.GenerateKey("cache.nixos.org-1")
	if err != nil {
		f.Fatal(err)
	}
	p := upstreamtest.NewPath(f, sk, "hello-2.12", []byte("nix-archive-1 fake"), "zstd")
	hash := p.HashPart()
	good := p.NarInfo.String()
	f.Add([]byte(good))
	f.Add([]byte(strings.Replace(good, "Sig: ", "Sig: x", 1)))
	f.Add([]byte(strings.Replace(good, hash, strings.Repeat("0", 32), 1)))
	f.Add([]byte(strings.Replace(good, "/nix/store", "/gnu/store", 1)))
	f.Add([]byte(good + "CA: fixed:r:sha256:" + strings.Repeat("0", 52) + "\n"))
	f.Add([]byte("StorePath: /nix/store/" + hash + "-x\n"))
	f.Add([]byte{})

	set, err := upstream.New(upstream.Options{Upstreams: []upstream.Config{
		{URL: "http://127.0.0.1:1", Keys: []narinfo.PublicKey{pk}},
	}})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		a, err := set.Check(hash, body)
		if err != nil {
			if a != nil {
				t.Fatal("an Answer with an error")
			}
			return
		}
		ni := a.NarInfo
		if ni.HashPart() != hash || ni.StoreDir() != "/nix/store" {
			t.Fatalf("answer for %s, asked %s", ni.StorePath, hash)
		}
		if signer, ok := ni.Verify([]narinfo.PublicKey{pk}); !ok || signer != a.Signer {
			t.Fatalf("answer not signed by the key: %q %v", signer, ok)
		}
		if len(ni.Sigs) > 16 {
			t.Fatalf("%d signatures", len(ni.Sigs))
		}
	})
}
