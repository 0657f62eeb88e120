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
