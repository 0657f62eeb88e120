package narinfo_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/bos55/concordia/pkg/narinfo"
)

// TestContentAddressed: the four kinds of content address Nix 2.8 wrote
// (nix-store --add, builtins.toFile, flat and recursive-sha1 fixed-output
// derivations) are recognised as self-authenticating; input-addressed paths
// and any edit that breaks the path/CA link are not. That Nix itself accepts
// exactly these unsigned is shown by TestNixAcceptsOurSignatures.
func TestContentAddressed(t *testing.T) {
	n := 0
	for file, raw := range fixtures(t) {
		if !strings.Contains(file, "/none/") {
			continue
		}
		ni, err := narinfo.Parse(bytes.NewReader(raw))
		if err != nil {
			t.Fatal(err)
		}
		if got, want := ni.ContentAddressed(), ni.CA != ""; got != want {
			t.Errorf("%s (CA %q): ContentAddressed %v", file, ni.CA, got)
		}
		if ni.CA == "" {
			ni.CA = "fixed:r:" + ni.NarHash.String()
			if ni.ContentAddressed() {
				t.Errorf("%s: input-addressed path passes with an invented CA", file)
			}
			continue
		}
		n++
		for what, edit := range map[string]func(c *narinfo.NarInfo){
			"name":      func(c *narinfo.NarInfo) { c.StorePath += "x" },
			"store dir": func(c *narinfo.NarInfo) { c.StorePath = "/gnu/store/" + c.StorePath[len("/nix/store/"):] },
			"hash":      func(c *narinfo.NarInfo) { c.CA = c.CA[:len(c.CA)-1] + "0" },
			"method": func(c *narinfo.NarInfo) {
				switch {
				case strings.HasPrefix(c.CA, "fixed:r:"):
					c.CA = "fixed:" + c.CA[len("fixed:r:"):]
				case strings.HasPrefix(c.CA, "fixed:"):
					c.CA = "fixed:r:" + c.CA[len("fixed:"):]
				default:
					c.CA = "fixed:r:" + c.CA[len("text:"):]
				}
			},
			"reference": func(c *narinfo.NarInfo) { c.References = append(c.References, "59q6w1dld4lc999m6vawxa8msm0q9hgd-x") },
		} {
			c, _ := narinfo.Parse(bytes.NewReader(raw))
			edit(c)
			if c.ContentAddressed() {
				t.Errorf("%s: still content-addressed after changing the %s", file, what)
			}
		}
	}
	if n != 4 {
		t.Errorf("%d content-addressed fixtures, want 4", n)
	}
}
