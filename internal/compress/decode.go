package compress

import (
	"bufio"
	"compress/bzip2"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/andybalholm/brotli"
	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/ulikunitz/xz/lzma"
)

// Sentinel errors of the package.
var (
	// ErrUnknownCompression is returned by NewReader for a codec name it
	// does not decode. Callers answering an upload map it to a client error.
	ErrUnknownCompression = errors.New("unknown compression")
	// ErrClosed is returned when a writer, entry or cache is used after Close.
	ErrClosed = errors.New("compress: closed")
)

// DecodeLimits bound the memory a decoder may allocate and the bytes it may
// produce, so that a small hostile stream cannot make the server allocate
// gigabytes or decompress for hours. The zero value applies the default
// memory bounds and no bound on the output.
type DecodeLimits struct {
	// XZDict bounds the dictionary an xz block, an lzip member or an
	// lzma stream may ask for: each is LZMA, whose decoder allocates
	// the dictionary whole before decoding a byte. 0: DefaultXZDict.
	XZDict int64
	// ZstdWindow bounds a zstd frame's window, the history its decoder
	// keeps. 0: DefaultZstdWindow.
	ZstdWindow int64
	// MaxSize bounds the decompressed bytes. 0: no bound.
	MaxSize int64
	// MaxRatio bounds the decompressed bytes per compressed byte read,
	// once more than RatioFloor bytes came out. 0: no bound.
	MaxRatio int64
	// RatioFloor is where MaxRatio starts to apply. 0: DefaultRatioFloor.
	RatioFloor int64
	// SizeHint is the decompressed size when the caller knows it (a
	// stored NAR's NarSize): xz then allocates no larger dictionary than
	// that data can use. 0: unknown.
	SizeHint int64
}

// Defaults of DecodeLimits.
const (
	// DefaultXZDict is what `xz -9` uses; Nix's default (preset 6)
	// uses 8 MiB.
	DefaultXZDict = 64 << 20
	// DefaultZstdWindow is what `zstd --ultra -22` and `--long` use.
	DefaultZstdWindow = 128 << 20
	// DefaultRatioFloor is how much any stream may decompress to before
	// MaxRatio applies, so small inputs of very regular data (a file of
	// zeros) are never refused: a third of a second of bzip2, the
	// slowest decoder per output byte.
	DefaultRatioFloor = 64 << 20
)

// Names of the DecodeLimits bounds, as LimitError.Limit reports them.
const (
	LimitXZDict     = "xz dictionary"
	LimitLzipDict   = "lzip dictionary"
	LimitLZMADict   = "lzma dictionary"
	LimitZstdWindow = "zstd window"
	LimitSize       = "decompressed size"
	LimitRatio      = "decompression ratio"
)

// LimitError says a compressed stream exceeds a DecodeLimits bound. Got is
// 0 when the decoder does not say how far over the bound the stream is.
type LimitError struct {
	Limit string
	Max   int64
	Got   int64
}

func (e *LimitError) Error() string {
	if e.Got == 0 {
		return fmt.Sprintf("%s over the limit of %d", e.Limit, e.Max)
	}
	return fmt.Sprintf("%s of %d exceeds the limit of %d", e.Limit, e.Got, e.Max)
}

// NewReader returns a reader of the plain bytes of r, which are compressed
// with the codec named as in a narinfo Compression field ("none", "zstd",
// "xz", "bzip2", "gzip", "br", "lz4", "lzip", "lzma"; "bz2" and "gz" are
// accepted as aliases and the empty string means "none"), with the
// default DecodeLimits. These are every method Nix names (its
// CompressionAlgo, compression-algo.hh 2.34.0:10-23) but the four no NAR
// or document is ever written in outside Nix's own tests: "compress",
// "grzip", "lrzip" and "lzop" are ErrUnknownCompression. Close releases
// decoder resources; it does not close r.
func NewReader(r io.Reader, compression string) (io.ReadCloser, error) {
	return NewReaderLimits(r, compression, DecodeLimits{})
}

// NewReaderLimits is NewReader with the bounds of l. A stream exceeding
// them fails with a *LimitError, before the memory is allocated for the
// memory bounds.
//
// xz is read by this package's own container reader over
// github.com/ulikunitz/xz/lzma, a pure Go decoder (the standard library
// has none and only internal/nixcli may run programs), see xzReader;
// lzip likewise (lzipReader). Brotli is github.com/andybalholm/brotli,
// whose window is at most 16 MiB (lgwin 24): the large-window variant
// (RFC 9841, up to 1 GiB) is refused, as Nix's decoder refuses it
// (BrotliDecoderCreateInstance without BROTLI_DECODER_PARAM_LARGE_WINDOW,
// compression.cc 2.32.0:140-145). lz4 is the frame format, read by
// github.com/pierrec/lz4/v4 one block (at most 4 MiB; 8 MiB in the
// legacy format) at a time.
func NewReaderLimits(r io.Reader, compression string, l DecodeLimits) (io.ReadCloser, error) {
	if l.XZDict <= 0 {
		l.XZDict = DefaultXZDict
	}
	if l.ZstdWindow <= 0 {
		l.ZstdWindow = DefaultZstdWindow
	}
	if l.RatioFloor <= 0 {
		l.RatioFloor = DefaultRatioFloor
	}
	cr, in := newCountReader(r)
	var dec io.ReadCloser
	switch strings.ToLower(compression) {
	case "", "none":
		if l.MaxSize == 0 {
			return io.NopCloser(r), nil
		}
		dec = io.NopCloser(cr)
		l.MaxRatio = 0
	case "zstd", "zst":
		d, err := getDecoder(cr, l.ZstdWindow)
		if err != nil {
			return nil, fmt.Errorf("zstd decoder: %w", zstdErr(err, l.ZstdWindow))
		}
		dec = &zstdReader{d: d, window: l.ZstdWindow}
	case "xz":
		x, err := newXZReader(cr, l.XZDict, l.SizeHint)
		if err != nil {
			return nil, fmt.Errorf("xz decoder: %w", err)
		}
		dec = x
	case "bzip2", "bz2":
		dec = io.NopCloser(bzip2.NewReader(cr))
	case "gzip", "gz":
		g, err := gzip.NewReader(cr)
		if err != nil {
			return nil, fmt.Errorf("gzip decoder: %w", err)
		}
		dec = g
	case "br":
		dec = &brotliReader{r: brotli.NewReader(cr)}
	case "lz4":
		z := lz4.NewReader(cr)
		if err := z.Apply(lz4.ConcurrencyOption(1)); err != nil {
			return nil, fmt.Errorf("lz4 decoder: %w", err)
		}
		dec = &lz4Reader{r: z}
	case "lzip":
		z, err := newLzipReader(cr, l.XZDict, l.SizeHint)
		if err != nil {
			return nil, fmt.Errorf("lzip decoder: %w", err)
		}
		dec = z
	case "lzma":
		z, err := newLZMAReader(cr, l.XZDict)
		if err != nil {
			return nil, fmt.Errorf("lzma decoder: %w", err)
		}
		dec = z
	default:
		return nil, fmt.Errorf("decode %q: %w", compression, ErrUnknownCompression)
	}
	if l.MaxSize == 0 && l.MaxRatio == 0 {
		return dec, nil
	}
	return &boundedReader{dec: dec, in: in, l: l}, nil
}

// boundedReader counts what a decoder consumes and produces and stops it
// at the first byte past MaxSize or MaxRatio.
type boundedReader struct {
	dec io.ReadCloser
	in  *countReader
	out int64
	l   DecodeLimits
	err error
}

func (b *boundedReader) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	n, err := b.dec.Read(p)
	b.out += int64(n)
	switch {
	case b.l.MaxSize > 0 && b.out > b.l.MaxSize:
		b.err = &LimitError{Limit: LimitSize, Max: b.l.MaxSize, Got: b.out}
	case b.l.MaxRatio > 0 && b.out > b.l.RatioFloor && b.out/max(b.in.n, 1) > b.l.MaxRatio:
		b.err = &LimitError{Limit: LimitRatio, Max: b.l.MaxRatio, Got: b.out / max(b.in.n, 1)}
	default:
		return n, err
	}
	return n, b.err
}

func (b *boundedReader) Close() error { return b.dec.Close() }

// Decoders are pooled, one pool per window bound: a new one allocates its
// history buffers (about a millisecond of page clearing for every small NAR
// of an uploaded closure, the largest cost of such an upload after its
// fsyncs), a reset one keeps them. Concurrency 1: an upload is one stream
// among many, and the default (GOMAXPROCS goroutines per decoder) does not
// pay off. The window bound is what bounds the memory one stream can make
// us allocate.
var decoders sync.Map // window bound -> *sync.Pool

func decoderPool(window int64) *sync.Pool {
	if p, ok := decoders.Load(window); ok {
		return p.(*sync.Pool)
	}
	p, _ := decoders.LoadOrStore(window, &sync.Pool{})
	return p.(*sync.Pool)
}

func getDecoder(r io.Reader, window int64) (*zstd.Decoder, error) {
	if d, ok := decoderPool(window).Get().(*zstd.Decoder); ok {
		err := d.Reset(r)
		if err == nil {
			return d, nil
		}
		d.Close()
		if errors.Is(err, zstd.ErrWindowSizeExceeded) {
			return nil, err
		}
	}
	return zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(uint64(window)))
}

// zstdErr turns the decoder's window refusal into a LimitError.
func zstdErr(err error, window int64) error {
	if errors.Is(err, zstd.ErrWindowSizeExceeded) {
		return &LimitError{Limit: LimitZstdWindow, Max: window}
	}
	return err
}

// zstdReader adapts a pooled *zstd.Decoder: Close returns it to the pool
// (once), and reading after Close is an error rather than a race with
// the decoder's next user.
type zstdReader struct {
	d      *zstd.Decoder
	window int64
}

func (z *zstdReader) Read(p []byte) (int, error) {
	if z.d == nil {
		return 0, ErrClosed
	}
	n, err := z.d.Read(p)
	if err != nil && err != io.EOF {
		err = zstdErr(err, z.window)
	}
	return n, err
}

func (z *zstdReader) Close() error {
	if z.d == nil {
		return nil
	}
	// Reset(nil) drops the reference to the input and any block in
	// flight, keeping the buffers.
	if err := z.d.Reset(nil); err == nil {
		decoderPool(z.window).Put(z.d)
	} else {
		z.d.Close()
	}
	z.d = nil
	return nil
}

// brotliReader names the decoder's errors and keeps the first one, io.EOF
// included: the decoder would read its source again on the next Read.
// Bytes after the end of the stream are an error ("excessive input").
type brotliReader struct {
	r   *brotli.Reader
	err error
}

func (b *brotliReader) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	n, err := b.r.Read(p)
	if err != nil {
		if err != io.EOF {
			err = fmt.Errorf("brotli: %w", err)
		}
		b.err = err
	}
	return n, err
}

func (b *brotliReader) Close() error { return nil }

// lz4Reader names the decoder's errors.
type lz4Reader struct{ r *lz4.Reader }

func (z *lz4Reader) Read(p []byte) (int, error) {
	n, err := z.r.Read(p)
	if err != nil && err != io.EOF {
		err = fmt.Errorf("lz4: %w", err)
	}
	return n, err
}

func (z *lz4Reader) Close() error { return nil }

// newLZMAReader reads the classic .lzma format (a 13-byte header, then
// one LZMA stream), which Nix 2.32 and later can send as a Content-Encoding
// of a narinfo, listing or log. Its header's dictionary is checked
// against maxDict before the decoder allocates it.
func newLZMAReader(r io.Reader, maxDict int64) (io.ReadCloser, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	h, err := br.Peek(lzma.HeaderLen)
	if err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil, fmt.Errorf("lzma: truncated header")
		}
		return nil, err
	}
	if dict := int64(binary.LittleEndian.Uint32(h[1:])); dict > maxDict {
		return nil, &LimitError{Limit: LimitLZMADict, Max: maxDict, Got: dict}
	}
	z, err := lzma.ReaderConfig{DictCap: int(maxDict)}.NewReader(br)
	if err != nil {
		return nil, fmt.Errorf("lzma: %w", err)
	}
	return io.NopCloser(z), nil
}
