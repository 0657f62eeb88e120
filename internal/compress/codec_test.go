package compress_test

import (
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"os/exec"
	"sync"
	"testing"

	"github.com/bos55/concordia/internal/compress"
)

func compressWith(t *testing.T, data []byte, level int) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := compress.NewWriter(&buf, level)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("x")); !errors.Is(err, compress.ErrClosed) {
		t.Fatalf("Write after Close: %v", err)
	}
	return buf.Bytes()
}

func TestNewWriterRoundTrip(t *testing.T) {
	data := testData(1<<20, 70)
	for _, tc := range []struct {
		name  string
		level int
		data  []byte
	}{
		{"default", 0, data},
		{"fastest", 1, data},
		{"default-level", 3, data},
		{"better", 7, data},
		{"best", 19, data[:256<<10]},
		{"empty", 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Twice, so the second stream runs on a pooled encoder.
			for range 2 {
				z := compressWith(t, tc.data, tc.level)
				if len(z) == 0 {
					t.Fatal("no zstd frame for empty input")
				}
				if got := unzstd(t, z); !bytes.Equal(got, tc.data) {
					t.Fatal("round trip mismatch")
				}
			}
		})
	}
}

// TestNewWriterConcurrentStreams runs many streams at once over the
// shared pool: no stream may see another one's bytes.
func TestNewWriterConcurrentStreams(t *testing.T) {
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			data := testData(128<<10, int64(80+i))
			var buf bytes.Buffer
			w, err := compress.NewWriter(&buf, 1)
			if err != nil {
				t.Error(err)
				return
			}
			for off := 0; off < len(data); off += 10000 {
				w.Write(data[off:min(off+10000, len(data))])
			}
			if err := w.Close(); err != nil {
				t.Error(err)
				return
			}
			if got := unzstd(t, buf.Bytes()); !bytes.Equal(got, data) {
				t.Errorf("stream %d: mismatch", i)
			}
		}()
	}
	wg.Wait()
}

// TestNewWriterReadableByZstdCLI proves interop with the reference
// decoder, which is what Nix links against.
func TestNewWriterReadableByZstdCLI(t *testing.T) {
	if _, err := exec.LookPath("zstd"); err != nil {
		t.Skip("zstd CLI not installed")
	}
	data := testData(512<<10, 90)
	cmd := exec.Command("zstd", "-dc")
	cmd.Stdin = bytes.NewReader(compressWith(t, data, 0))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("zstd -dc: %v", err)
	}
	if !bytes.Equal(out, data) {
		t.Fatal("zstd CLI decoded different bytes")
	}
}

func TestNewReader(t *testing.T) {
	data := testData(256<<10, 100)
	viaCLI := func(name string, args ...string) func(t *testing.T) []byte {
		return func(t *testing.T) []byte {
			if _, err := exec.LookPath(name); err != nil {
				t.Skipf("%s not installed", name)
			}
			cmd := exec.Command(name, args...)
			cmd.Stdin = bytes.NewReader(data)
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			return out
		}
	}
	stdGzip := func(t *testing.T) []byte {
		var b bytes.Buffer
		w := gzip.NewWriter(&b)
		w.Write(data)
		w.Close()
		return b.Bytes()
	}
	ours := func(t *testing.T) []byte { return compressWith(t, data, 0) }
	plain := func(*testing.T) []byte { return data }
	for _, tc := range []struct {
		codec string
		make  func(*testing.T) []byte
	}{
		{"none", plain},
		{"", plain},
		{"zstd", viaCLI("zstd", "-3", "-c")},
		{"zstd", ours},
		{"xz", viaCLI("xz", "-6", "-c")},
		{"xz", viaCLI("xz", "-0", "-T2", "-c")},
		{"bzip2", viaCLI("bzip2", "-c")},
		{"bz2", viaCLI("bzip2", "-1", "-c")},
		{"gzip", viaCLI("gzip", "-c")},
		{"gzip", viaCLI("pigz", "-c")},
		{"gzip", viaCLI("pigz", "-9", "-p", "2", "-c")},
		{"gzip", stdGzip},
		// What Nix links (libbrotli, and libarchive's lz4 and lzip
		// filters over liblz4 and its own LZMA) writes what these
		// reference tools write.
		{"br", viaCLI("brotli", "-c")},
		{"br", viaCLI("brotli", "-q", "5", "-w", "24", "-c")},
		{"br", viaCLI("brotli", "-q", "0", "-w", "10", "-c")},
		{"lz4", viaCLI("lz4", "-c")},
		{"lz4", viaCLI("lz4", "-9", "-B4", "-BD", "--content-size", "-c")},
		{"lz4", viaCLI("lz4", "-1", "-B7", "--no-frame-crc", "-c")},
		{"lz4", viaCLI("lz4", "-l", "-c")}, // the legacy format
		{"lzip", viaCLI("lzip", "-c")},
		{"lzip", viaCLI("lzip", "-0", "-c")},
		{"lzip", viaCLI("lzip", "-9", "-c")},
		{"lzip", viaCLI("lzip", "-1", "-b", "100KiB", "-c")}, // three members
		{"lzma", viaCLI("xz", "--format=lzma", "-c")},
	} {
		t.Run(tc.codec, func(t *testing.T) {
			r, err := compress.NewReader(bytes.NewReader(tc.make(t)), tc.codec)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(r)
			if err != nil {
				t.Fatal(err)
			}
			if err := r.Close(); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("decoded %d bytes, want the %d original ones", len(got), len(data))
			}
		})
	}
}

func TestNewReaderErrors(t *testing.T) {
	// The methods Nix names that no NAR or document is written in.
	for _, codec := range []string{"compress", "grzip", "lrzip", "lzop", "deflate"} {
		if _, err := compress.NewReader(bytes.NewReader(nil), codec); !errors.Is(err, compress.ErrUnknownCompression) {
			t.Fatalf("%s: %v, want ErrUnknownCompression", codec, err)
		}
	}
	for _, codec := range []string{"zstd", "xz", "bzip2", "gzip", "br", "lz4", "lzip", "lzma"} {
		t.Run(codec, func(t *testing.T) {
			r, err := compress.NewReader(bytes.NewReader([]byte("this is not compressed data at all")), codec)
			if err == nil {
				_, err = io.ReadAll(r)
				r.Close()
			}
			if err == nil {
				t.Fatal("garbage decoded without error")
			}
		})
	}
}

// TestPooledZstdDecoders: decoders are reused after Close, so a stream
// abandoned half-way, a corrupt one, or one read concurrently with others
// must leave nothing behind for the next user; and a reader used after
// Close fails instead of racing the decoder's next user.
func TestPooledZstdDecoders(t *testing.T) {
	a, b := testData(512<<10, 7), testData(300<<10, 50)
	za, zb := compressWith(t, a, 0), compressWith(t, b, 0)
	for i := range 20 {
		// Abandon a stream after a few bytes, or a corrupt one.
		in := za
		if i%2 == 1 {
			in = append(bytes.Clone(za[:len(za)/2]), bytes.Repeat([]byte{0xff}, 100)...)
		}
		r, err := compress.NewReader(bytes.NewReader(in), "zstd")
		if err != nil {
			t.Fatal(err)
		}
		io.CopyN(io.Discard, r, 1000)
		r.Close()
		r.Close() // twice is harmless
		if _, err := r.Read(make([]byte, 10)); !errors.Is(err, compress.ErrClosed) {
			t.Fatalf("Read after Close: %v", err)
		}
	}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			src, want := za, a
			if i%2 == 1 {
				src, want = zb, b
			}
			r, err := compress.NewReader(bytes.NewReader(src), "zstd")
			if err != nil {
				t.Error(err)
				return
			}
			defer r.Close()
			got, err := io.ReadAll(r)
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("stream %d: %d bytes, err %v", i, len(got), err)
			}
		}()
	}
	wg.Wait()
}

// FuzzNewReader feeds arbitrary bytes (upload bodies come from the
// network) to every decoder: errors are fine, panics and hangs are not.
func FuzzNewReader(f *testing.F) {
	codecs := []string{"zstd", "xz", "bzip2", "gzip"}
	var b bytes.Buffer
	w, _ := compress.NewWriter(&b, 0)
	w.Write([]byte("nix-archive-1"))
	w.Close()
	f.Add(uint8(0), b.Bytes())
	f.Add(uint8(0), []byte{})
	var g bytes.Buffer
	gw := gzip.NewWriter(&g)
	gw.Write([]byte("nix-archive-1"))
	gw.Close()
	f.Add(uint8(3), g.Bytes())
	f.Add(uint8(1), []byte("\xfd7zXZ\x00\x00"))
	f.Add(uint8(2), []byte("BZh91AY&SY"))
	f.Fuzz(func(t *testing.T, codec uint8, in []byte) {
		r, err := compress.NewReader(bytes.NewReader(in), codecs[int(codec)%len(codecs)])
		if err != nil {
			return
		}
		io.Copy(io.Discard, io.LimitReader(r, 64<<20))
		r.Close()
	})
}
