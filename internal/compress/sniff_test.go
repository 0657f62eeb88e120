package compress_test

import (
	"bytes"
	"compress/gzip"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/bos55/concordia/internal/compress"
)

// TestSniff: the first bytes of each encoder's output name it; a NAR and
// anything else are "none".
func TestSniff(t *testing.T) {
	data := bytes.Repeat([]byte("nix-archive-1 "), 100)
	var gz, x bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(data)
	zw.Close()
	xw, err := xz.NewWriter(&x)
	if err != nil {
		t.Fatal(err)
	}
	xw.Write(data)
	xw.Close()
	enc, _ := zstd.NewWriter(nil)
	zst := enc.EncodeAll(data, nil)
	nar := append([]byte{13, 0, 0, 0, 0, 0, 0, 0}, "nix-archive-1\x00\x00\x00"...)
	for _, tc := range []struct {
		name string
		head []byte
		want string
	}{
		{"gzip", gz.Bytes(), "gzip"},
		{"xz", x.Bytes(), "xz"},
		{"zstd", zst, "zstd"},
		{"bzip2", []byte("BZh91AY&SY"), "bzip2"},
		{"lz4", []byte{0x04, 0x22, 0x4d, 0x18, 0x64, 0x40}, "lz4"},
		{"lzip", []byte("LZIP\x01\x0c"), "lzip"},
		{"NAR", nar, "none"},
		{"empty", nil, "none"},
		{"short gzip", []byte{0x1f}, "none"},
		{"text", []byte("hello"), "none"},
	} {
		head := tc.head[:min(len(tc.head), compress.SniffLen)]
		if got := compress.Sniff(head); got != tc.want {
			t.Errorf("%s: Sniff(% x) = %q, want %q", tc.name, head, got, tc.want)
		}
	}
}
