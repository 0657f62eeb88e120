package narinfo

import "strings"

// narSuffixes is the one table of NAR file-name suffixes. Nix names an
// uploaded NAR "nar/<file hash>.nar" plus the suffix of its compression
// (binary-cache-store.cc 2.8.0:168-175, 2.32.0:173-180): .xz, .bz2, .zst,
// .lzip, .lz4 or .br; every other method, gzip and none included, gets the
// bare ".nar", so a bare .nar's bytes, not its name, say whether it is
// compressed. Every row but the last is Nix's. ".nar.gz" is not: it is how
// this cache (and others) name a gzip NAR, accepted on upload and used for
// the stored gzip NARs that Nix sent as a bare .nar, whose narinfo then
// says URL nar/<hash>.nar.gz, Compression: gzip (clients decode by the
// Compression field, never the URL).
var narSuffixes = []struct{ compression, suffix string }{
	{"none", ".nar"},
	{"xz", ".nar.xz"},
	{"bzip2", ".nar.bz2"},
	{"zstd", ".nar.zst"},
	{"lzip", ".nar.lzip"},
	{"lz4", ".nar.lz4"},
	{"br", ".nar.br"},
	{"gzip", ".nar.gz"},
}

// NARSuffix is the file-name suffix of a NAR compressed with c ("" means
// none); ok is false for a compression the table does not know.
func NARSuffix(c string) (suffix string, ok bool) {
	if c == "" {
		c = "none"
	}
	for _, e := range narSuffixes {
		if e.compression == c {
			return e.suffix, true
		}
	}
	return "", false
}

// SuffixCompression is the compression a NAR file name's suffix (".nar",
// ".nar.zst", ...) names; ok is false for any other suffix.
func SuffixCompression(suffix string) (compression string, ok bool) {
	for _, e := range narSuffixes {
		if e.suffix == suffix {
			return e.compression, true
		}
	}
	return "", false
}

// SplitNARName splits "<file hash>.nar[.ext]" into the hash text and its
// suffix (".nar[.ext]"); ok is false without a ".nar" suffix.
func SplitNARName(name string) (hash, suffix string, ok bool) {
	i := strings.Index(name, ".nar")
	if i < 0 {
		return "", "", false
	}
	return name[:i], name[i:], true
}
