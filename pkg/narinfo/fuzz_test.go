package narinfo_test

import (
	"bytes"
	"reflect"
	"strings"
	"testing"

	"github.com/bos55/concordia/pkg/narinfo"
)

// FuzzNarInfoParse: Parse never panics, and whatever it accepts renders to a
// document that parses to the same value and renders identically again.
func FuzzNarInfoParse(f *testing.F) {
	for _, raw := range fixtures(f) {
		f.Add(raw)
	}
	f.Add([]byte(sample))
	f.Add([]byte(sample + "System: x86_64-linux\nCA: fixed:r:sha256:a1fe35bc9c81cc1075dbb7fa769a6ab6dbeaad11393256836815a5c2faed8a5c\n"))
	f.Add([]byte(strings.Replace(sample, "Compression: none\n", "", 1)))
	f.Add([]byte("StorePath: /nix/store/x\nNarSize: 0\n"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, in []byte) {
		n, err := narinfo.Parse(bytes.NewReader(in))
		if err != nil {
			return
		}
		out := n.String()
		if len(out) > 2*len(in)+256 {
			t.Fatalf("rendered %d bytes from %d", len(out), len(in))
		}
		if err := n.Validate(); err != nil {
			t.Fatalf("parsed narinfo does not validate: %v\n%q", err, in)
		}
		again, err := narinfo.Parse(strings.NewReader(out))
		if err != nil {
			t.Fatalf("render does not parse: %v\n%q", err, out)
		}
		if !reflect.DeepEqual(n, again) {
			t.Fatalf("parse/render/parse unstable\n%+v\n%+v", n, again)
		}
		if again.String() != out {
			t.Fatalf("render not idempotent\n%q\n%q", out, again.String())
		}
		_ = n.Fingerprint()
	})
}
