package narinfo_test

import (
	"testing"

	"github.com/bos55/concordia/pkg/narinfo"
)

// The suffixes Nix writes (binary-cache-store.cc) map both ways; gzip has
// none in Nix and ".nar.gz" here; anything else is unknown.
func TestNARSuffixes(t *testing.T) {
	for c, want := range map[string]string{
		"": ".nar", "none": ".nar", "xz": ".nar.xz", "bzip2": ".nar.bz2", "zstd": ".nar.zst",
		"lzip": ".nar.lzip", "lz4": ".nar.lz4", "br": ".nar.br", "gzip": ".nar.gz",
	} {
		got, ok := narinfo.NARSuffix(c)
		if !ok || got != want {
			t.Errorf("NARSuffix(%q) = %q, %v; want %q", c, got, ok, want)
		}
		back, ok := narinfo.SuffixCompression(want)
		if c == "" {
			c = "none"
		}
		if !ok || back != c {
			t.Errorf("SuffixCompression(%q) = %q, %v; want %q", want, back, ok, c)
		}
	}
	if _, ok := narinfo.NARSuffix("grzip"); ok {
		t.Error("an unknown compression has a suffix")
	}
	if _, ok := narinfo.SuffixCompression(".nar.gzip"); ok {
		t.Error(".nar.gzip names a compression")
	}
	if h, s, ok := narinfo.SplitNARName("0abc.nar.zst"); !ok || h != "0abc" || s != ".nar.zst" {
		t.Errorf("SplitNARName = %q %q %v", h, s, ok)
	}
	if _, _, ok := narinfo.SplitNARName("0abc.zst"); ok {
		t.Error("a name without .nar splits")
	}
}
