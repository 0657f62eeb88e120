package compress

import (
	"bufio"
	"compress/bzip2"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// Sentinel errors of the package.
var (
	// ErrUnknownCompression is returned by NewReader for a codec name it
	// does not decode. Callers answering an upload map it to a client error.
	ErrUnknownCompression = errors.New("unknown compression")
	// ErrClosed is returned when a writer, entry or cache is used after Close.
	ErrClosed = errors.New("compress: closed")
)

// NewReader returns a reader of the plain bytes of r, which are compressed
// with the codec named as in a narinfo Compression field ("none", "zstd",
// "xz", "bzip2", "gzip"; "bz2" and "gz" are accepted as aliases and the
// empty string means "none"). Close releases decoder resources; it does not
// close r.
//
// xz uses github.com/ulikunitz/xz, a pure Go decoder, because the standard
// library has none and only internal/nixcli may run programs.
func NewReader(r io.Reader, compression string) (io.ReadCloser, error) {
	switch strings.ToLower(compression) {
	case "", "none":
		return io.NopCloser(r), nil
	case "zstd", "zst":
		// Concurrency 1: an upload is one stream among many, and the
		// default (GOMAXPROCS goroutines per decoder) does not pay off.
		// The window cap (128 MiB, what `zstd --ultra -22` uses) bounds
		// the memory one upload can make us allocate.
		d, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(maxDecoderWindow))
		if err != nil {
			return nil, fmt.Errorf("zstd decoder: %w", err)
		}
		return zstdReader{d}, nil
	case "xz":
		x, err := xz.NewReader(bufio.NewReaderSize(r, 64<<10))
		if err != nil {
			return nil, fmt.Errorf("xz decoder: %w", err)
		}
		return io.NopCloser(x), nil
	case "bzip2", "bz2":
		return io.NopCloser(bzip2.NewReader(r)), nil
	case "gzip", "gz":
		g, err := gzip.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("gzip decoder: %w", err)
		}
		return g, nil
	default:
		return nil, fmt.Errorf("decode %q: %w", compression, ErrUnknownCompression)
	}
}

const maxDecoderWindow = 128 << 20

// zstdReader adapts *zstd.Decoder, whose Close returns nothing.
type zstdReader struct{ d *zstd.Decoder }

func (z zstdReader) Read(p []byte) (int, error) { return z.d.Read(p) }
func (z zstdReader) Close() error               { z.d.Close(); return nil }
