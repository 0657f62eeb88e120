package compress_test

import (
	"bytes"
	"io"
	"testing"

	"github.com/ulikunitz/xz"

	"github.com/bos55/concordia/internal/compress"
	"github.com/bos55/concordia/internal/nartest"
)

// FuzzXZReader checks the xz container reader against ulikunitz/xz's own:
// no input panics, and whatever this package decodes without error, the
// library decodes to the same bytes (it is only asked once every
// dictionary passed the 64 MiB check, so it cannot be made to allocate
// more). A refusal of a stream the library would accept is allowed: the
// limits refuse what the library allocates for.
func FuzzXZReader(f *testing.F) {
	for _, data := range [][]byte{nil, []byte("a"), testData(3000, 1), bytes.Repeat([]byte("nix-archive-1 "), 500)} {
		var b bytes.Buffer
		w, _ := xz.WriterConfig{DictCap: 4096}.NewWriter(&b)
		w.Write(data)
		w.Close()
		f.Add(b.Bytes())
		f.Add(append(bytes.Clone(b.Bytes()), 0, 0, 0, 0))
	}
	f.Add(nartest.XZDictBomb(testData(77, 1), 40))
	f.Fuzz(func(t *testing.T, in []byte) {
		d, err := compress.NewReaderLimits(bytes.NewReader(in), "xz", compress.DecodeLimits{MaxSize: 16 << 20})
		if err != nil {
			return
		}
		got, err := io.ReadAll(d)
		if err != nil {
			return
		}
		x, err := xz.NewReader(bytes.NewReader(in))
		if err != nil {
			t.Fatalf("decoded %d bytes of what xz.NewReader refuses: %v", len(got), err)
		}
		want, err := io.ReadAll(x)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("decoded %d bytes; the library: %d bytes, %v", len(got), len(want), err)
		}
	})
}

// FuzzLzipReader: no input panics the lzip container reader (run with a
// 1 MiB dictionary bound, so no header makes it allocate more), and
// whatever decodes without error decodes the same a second time with the
// total size as a hint (the path a stored NAR is read by): the smaller
// dictionary of the hint changes nothing.
func FuzzLzipReader(f *testing.F) {
	for _, s := range lzipSeeds {
		f.Add(s)
	}
	f.Add([]byte("LZIP\x01\x1d"))
	f.Add([]byte("LZIP\x01\x0c\x00"))
	f.Fuzz(func(t *testing.T, in []byte) {
		got, err := readAll(in, "lzip", compress.DecodeLimits{MaxSize: 16 << 20, XZDict: 1 << 20})
		if err != nil {
			return
		}
		again, err := readAll(in, "lzip", compress.DecodeLimits{MaxSize: 16 << 20, XZDict: 1 << 20, SizeHint: int64(len(got))})
		if err != nil || !bytes.Equal(got, again) {
			t.Fatalf("decoded %d bytes; with the size hint %d bytes, %v", len(got), len(again), err)
		}
	})
}

// lzipSeeds are files lzip 1.23 wrote (of "", "a", "nix-archive-1 "
// 200 times at -0, and two files concatenated: two members), kept here so
// the fuzz target needs no lzip binary.
var lzipSeeds = [][]byte{
	[]byte("\x4c\x5a\x49\x50\x01\x0c\x00\x83\xff\xfb\xff\xff\xc0\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x24\x00\x00\x00\x00\x00\x00\x00"),
	[]byte("\x4c\x5a\x49\x50\x01\x0c\x00\x30\xc1\xfb\xff\xff\xff\xe0\x00\x00\x00\x43\xbe\xb7\xe8\x01\x00\x00\x00\x00\x00\x00\x00\x25\x00\x00\x00\x00\x00\x00\x00"),
	[]byte("\x4c\x5a\x49\x50\x01\x0c\x00\x37\x1a\x4b\x72\xfd\x70\x19\x6d\x2e\x27\xc1\xb5\x76\x54\x15\x93\x8f\xb6\x55\x9d\xc2\x73\xd1\xb6\xbc\x63\xf0\x6f\x26\xd5\x26\x12\x60\x0f\x55\x3f\xff\xff\xd7\x38\x00\x00\xcc\x22\x08\xae\xf0\x0a\x00\x00\x00\x00\x00\x00\x45\x00\x00\x00\x00\x00\x00\x00"),
	[]byte("\x4c\x5a\x49\x50\x01\x0c\x00\x37\x1a\x4b\x72\xfd\x70\x19\x6d\x2e\x27\xc1\xb5\x76\x54\x15\x93\x70\x57\xb8\xdc\x9f\xff\xfe\xea\x30\x00\xe4\x93\x50\x44\x18\x01\x00\x00\x00\x00\x00\x00\x35\x00\x00\x00\x00\x00\x00\x00\x4c\x5a\x49\x50\x01\x0c\x00\x14\x1d\x0b\x27\x22\x1b\x8d\x93\x6e\xb4\x35\x2d\xe8\x17\x68\x20\x26\x02\x3f\xff\xe4\xc2\x00\x00\x7c\x62\x53\xd3\x0e\x00\x00\x00\x00\x00\x00\x00\x33\x00\x00\x00\x00\x00\x00\x00"),
}
