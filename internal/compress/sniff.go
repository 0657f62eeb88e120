package compress

import "bytes"

// SniffLen is how many leading bytes Sniff looks at.
const SniffLen = 6

// magics are the leading bytes of every compression Nix can write a NAR
// in, but brotli, which has none.
var magics = []struct {
	compression string
	magic       []byte
}{
	{"gzip", []byte{0x1f, 0x8b}},
	{"zstd", []byte{0x28, 0xb5, 0x2f, 0xfd}},
	{"xz", []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}},
	{"bzip2", []byte("BZh")},
	{"lz4", []byte{0x04, 0x22, 0x4d, 0x18}},
	{"lzip", []byte("LZIP")},
}

// Sniff names the compression of a stream from its first bytes (SniffLen
// of them, fewer at the end of a short stream), or returns "none" when
// they are not one's magic: a NAR starts with the length of
// "nix-archive-1" (13, as a little-endian u64), which none of them does.
//
// Nix names an uploaded NAR by the suffix of its compression, but gives
// every method without one in its table, gzip among them, the bare
// ".nar": its name says nothing of what such a file holds, its bytes do.
func Sniff(head []byte) string {
	for _, m := range magics {
		if bytes.HasPrefix(head, m.magic) {
			return m.compression
		}
	}
	return "none"
}
