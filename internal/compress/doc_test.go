package compress_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/bos55/concordia/internal/compress"
)

// docText is n bytes of build-log-like text.
func docText(n int) []byte {
	r := rand.New(rand.NewPCG(5, 6))
	var b bytes.Buffer
	for i := 0; b.Len() < n; i++ {
		fmt.Fprintf(&b, "[%6d] cc -O2 -c src/file%d.c -o obj/file%d.o %x\n", i, r.IntN(500), r.IntN(500), r.Uint64())
	}
	return b.Bytes()[:n]
}

func writeDoc(t testing.TB, text []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := compress.NewDocWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	// In uneven pieces, as io.Copy from a request body writes.
	for rest := text; len(rest) > 0; {
		n := min(len(rest), 1+len(rest)%40000)
		if _, err := w.Write(rest[:n]); err != nil {
			t.Fatal(err)
		}
		rest = rest[n:]
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestDocRoundTrip: a document of any length reads back through Read and
// through WriteTo, and is a valid zstd stream for any decoder (what a
// client accepting zstd is sent).
func TestDocRoundTrip(t *testing.T) {
	for _, n := range []int{0, 1, compress.DocFrame - 1, compress.DocFrame, compress.DocFrame + 1, 3<<20 + 17} {
		text := docText(n)
		file := writeDoc(t, text)
		r, _ := compress.NewDocReader(bytes.NewReader(file), 0)
		got, err := io.ReadAll(struct{ io.Reader }{r}) // Read only
		if err != nil || !bytes.Equal(got, text) {
			t.Fatalf("%d bytes, Read: %d bytes back, %v", n, len(got), err)
		}
		r, _ = compress.NewDocReader(bytes.NewReader(file), 0)
		var out bytes.Buffer
		if _, err := io.Copy(&out, r); err != nil || !bytes.Equal(out.Bytes(), text) {
			t.Fatalf("%d bytes, WriteTo: %d bytes back, %v", n, out.Len(), err)
		}
		dec, _ := zstd.NewReader(bytes.NewReader(file))
		if got, err := io.ReadAll(dec); err != nil || !bytes.Equal(got, text) {
			t.Fatalf("%d bytes: not one zstd stream: %v", n, err)
		}
		if n > 1<<20 && len(file) > n/2 {
			t.Fatalf("%d bytes of text compressed to %d", n, len(file))
		}
	}
}

// TestDocReaderRefuses: more text than maxSize is a LimitError; a zstd
// stream that is not of independent small frames, a truncated one and
// bytes that are not zstd are ErrNotDoc, without decoding big frames.
func TestDocReaderRefuses(t *testing.T) {
	text := docText(1 << 20)
	r, _ := compress.NewDocReader(bytes.NewReader(writeDoc(t, text)), 200_000)
	var le *compress.LimitError
	if _, err := io.Copy(io.Discard, r); !errors.As(err, &le) || le.Limit != compress.LimitSize {
		t.Fatalf("over maxSize: %v", err)
	}
	enc, _ := zstd.NewWriter(nil)
	oneFrame := enc.EncodeAll(text, nil)
	for name, bad := range map[string][]byte{
		"one big frame": oneFrame,
		"truncated":     writeDoc(t, text)[:5000],
		"not zstd":      []byte("plain text, never compressed\n"),
	} {
		r, _ := compress.NewDocReader(bytes.NewReader(bad), 0)
		if _, err := io.Copy(io.Discard, r); !errors.Is(err, compress.ErrNotDoc) {
			t.Errorf("%s: %v, want ErrNotDoc", name, err)
		}
	}
	// Skippable frames (metadata some tools add) are passed over.
	skip := []byte{0x50, 0x2A, 0x4D, 0x18, 3, 0, 0, 0, 'a', 'b', 'c'}
	doc := append(append(skip, writeDoc(t, text[:100])...), skip...)
	r, _ = compress.NewDocReader(bytes.NewReader(doc), 0)
	if got, err := io.ReadAll(r); err != nil || !bytes.Equal(got, text[:100]) {
		t.Fatalf("with skippable frames: %q %v", got, err)
	}
}

// TestDocReadersHoldLittle: twenty readers, each stopped after its first
// read (a client that stops reading), hold a frame each, not a decoder.
func TestDocReadersHoldLittle(t *testing.T) {
	file := writeDoc(t, docText(10<<20))
	runtime.GC()
	var a, b runtime.MemStats
	runtime.ReadMemStats(&a)
	var rs []io.ReadCloser
	for range 20 {
		r, _ := compress.NewDocReader(bytes.NewReader(file), 0)
		r.Read(make([]byte, 100))
		rs = append(rs, r)
	}
	runtime.GC()
	runtime.ReadMemStats(&b)
	held := int64(b.HeapInuse) - int64(a.HeapInuse)
	t.Logf("20 stopped readers hold %d KiB", held>>10)
	if held > 20*256<<10 {
		t.Fatalf("20 stopped readers hold %d KiB", held>>10)
	}
	for _, r := range rs {
		r.Close()
	}
}
