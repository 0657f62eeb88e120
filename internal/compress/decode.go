package compress

import (
	"bufio"
	"compress/bzip2"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

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
		d, err := getDecoder(r)
		if err != nil {
			return nil, fmt.Errorf("zstd decoder: %w", err)
		}
		return &zstdReader{d: d}, nil
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

// Decoders are pooled: a new one allocates its history buffers (about a
// millisecond of page clearing for every small NAR of an uploaded closure,
// the largest cost of such an upload after its fsyncs), a reset one keeps
// them. Concurrency 1: an upload is one stream among many, and the
// default (GOMAXPROCS goroutines per decoder) does not pay off. The window
// cap (128 MiB, what `zstd --ultra -22` uses) bounds the memory one
// upload can make us allocate.
var decoders sync.Pool

func getDecoder(r io.Reader) (*zstd.Decoder, error) {
	if d, ok := decoders.Get().(*zstd.Decoder); ok {
		if err := d.Reset(r); err == nil {
			return d, nil
		}
		d.Close()
	}
	return zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(maxDecoderWindow))
}

// zstdReader adapts a pooled *zstd.Decoder: Close returns it to the pool
// (once), and reading after Close is an error rather than a race with
// the decoder's next user.
type zstdReader struct{ d *zstd.Decoder }

func (z *zstdReader) Read(p []byte) (int, error) {
	if z.d == nil {
		return 0, ErrClosed
	}
	return z.d.Read(p)
}

func (z *zstdReader) Close() error {
	if z.d == nil {
		return nil
	}
	// Reset(nil) drops the reference to the input and any block in
	// flight, keeping the buffers.
	if err := z.d.Reset(nil); err == nil {
		decoders.Put(z.d)
	} else {
		z.d.Close()
	}
	z.d = nil
	return nil
}
