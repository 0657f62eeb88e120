package compress

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// Documents the cache compresses once for itself and then serves to many
// readers (build logs) are written as a run of independent zstd frames of
// at most DocFrame bytes of text each. A run of frames is one valid zstd
// stream, so the file is sent as it is to clients that accept zstd. A
// reader that wants the text (NewDocReader) decodes one frame at a time
// with a pooled decoder it gives back before handing the text out: a
// client that stops reading holds one frame of text and one of compressed
// bytes, not a decoder with its window and block buffers (several hundred
// KiB each, measured: twenty such clients cost the server 12 MiB).

// DocFrame is the most text one frame of a document holds. Logs compress
// about as well in 64 KiB frames as with a 64 KiB window.
const DocFrame = 64 << 10

// maxDocFrameBytes bounds one compressed frame: zstd never expands a
// block by more than its 3-byte header, and the frame header is under 20.
const maxDocFrameBytes = DocFrame + 1<<10

// ErrNotDoc is a stream NewDocReader refuses: frames larger than its
// writer makes, or not zstd.
var ErrNotDoc = errors.New("not a document of independent zstd frames")

var (
	docEncoders sync.Pool
	docDecoders sync.Pool
)

func docEncoder() (*zstd.Encoder, error) {
	if enc, ok := docEncoders.Get().(*zstd.Encoder); ok {
		return enc, nil
	}
	return zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1),
		zstd.WithWindowSize(DocFrame), zstd.WithEncoderCRC(true))
}

func docDecoder() (*zstd.Decoder, error) {
	if dec, ok := docDecoders.Get().(*zstd.Decoder); ok {
		return dec, nil
	}
	return zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(DocFrame),
		zstd.WithDecoderMaxMemory(2*DocFrame))
}

// NewDocWriter returns a writer of a document to w, in frames of DocFrame
// bytes of text (zstd's default level, each with its checksum). Close
// writes the last frame (an empty document is one empty frame); it does
// not close w.
func NewDocWriter(w io.Writer) (io.WriteCloser, error) {
	enc, err := docEncoder()
	if err != nil {
		return nil, err
	}
	return &docWriter{w: w, enc: enc, buf: make([]byte, 0, DocFrame)}, nil
}

type docWriter struct {
	w      io.Writer
	enc    *zstd.Encoder
	buf    []byte // text of the frame being filled
	out    []byte // the last frame, compressed
	frames int
	err    error
}

func (d *docWriter) Write(p []byte) (int, error) {
	if d.enc == nil {
		return 0, ErrClosed
	}
	n := 0
	for len(p) > 0 {
		if d.err != nil {
			return n, d.err
		}
		c := min(len(p), DocFrame-len(d.buf))
		d.buf = append(d.buf, p[:c]...)
		n += c
		p = p[c:]
		if len(d.buf) == DocFrame {
			d.flush()
		}
	}
	return n, d.err
}

func (d *docWriter) flush() {
	d.out = d.enc.EncodeAll(d.buf, d.out[:0])
	d.buf = d.buf[:0]
	d.frames++
	if _, err := d.w.Write(d.out); err != nil && d.err == nil {
		d.err = err
	}
}

func (d *docWriter) Close() error {
	if d.enc == nil {
		return d.err
	}
	if len(d.buf) > 0 || d.frames == 0 {
		d.flush()
	}
	docEncoders.Put(d.enc)
	d.enc = nil
	return d.err
}

// NewDocReader returns the text of a document NewDocWriter wrote to r,
// refusing one of more than maxSize bytes (0: no bound) and frames it
// would not have written (ErrNotDoc). It implements io.WriterTo, so
// io.Copy hands each frame's text straight to the destination. Close does
// not close r.
func NewDocReader(r io.Reader, maxSize int64) (io.ReadCloser, error) {
	return &docReader{r: bufio.NewReaderSize(r, 16<<10), max: maxSize}, nil
}

type docReader struct {
	r     *bufio.Reader
	max   int64
	n     int64
	frame []byte // compressed
	text  []byte
	off   int
	err   error
}

func (d *docReader) Read(p []byte) (int, error) {
	for d.off == len(d.text) {
		if d.err != nil {
			return 0, d.err
		}
		d.next()
	}
	n := copy(p, d.text[d.off:])
	d.off += n
	return n, nil
}

func (d *docReader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		if d.off < len(d.text) {
			n, err := w.Write(d.text[d.off:])
			d.off += n
			total += int64(n)
			if err != nil {
				return total, err
			}
		}
		if d.err == io.EOF {
			return total, nil
		}
		if d.err != nil {
			return total, d.err
		}
		d.next()
	}
}

func (d *docReader) Close() error {
	d.err, d.text, d.frame = ErrClosed, nil, nil
	return nil
}

// next decodes the next frame into text, or sets err.
func (d *docReader) next() {
	d.text, d.off = d.text[:0], 0
	for {
		var skip bool
		d.frame, skip, d.err = readFrame(d.r, d.frame[:0])
		if d.err != nil {
			return
		}
		if !skip {
			break
		}
	}
	dec, err := docDecoder()
	if err != nil {
		d.err = err
		return
	}
	d.text, err = dec.DecodeAll(d.frame, d.text)
	docDecoders.Put(dec)
	switch {
	case err != nil:
		d.err = fmt.Errorf("%w: %v", ErrNotDoc, err)
	case len(d.text) > DocFrame:
		d.err = fmt.Errorf("%w: a frame of %d bytes", ErrNotDoc, len(d.text))
	}
	d.n += int64(len(d.text))
	if d.err == nil && d.max > 0 && d.n > d.max {
		d.err = &LimitError{Limit: LimitSize, Max: d.max, Got: d.n}
	}
	if d.err != nil {
		d.text = d.text[:0]
	}
}

// readFrame appends the next zstd frame of r to buf, walking its header
// and block headers (RFC 8878, section 3.1), so a frame is read whole
// without decoding it. skip reports a skippable frame. io.EOF at the end
// of the stream.
func readFrame(r *bufio.Reader, buf []byte) (frame []byte, skip bool, err error) {
	take := func(n int) error {
		if len(buf)+n > maxDocFrameBytes {
			return fmt.Errorf("%w: a frame over %d bytes", ErrNotDoc, maxDocFrameBytes)
		}
		start := len(buf)
		buf = slices.Grow(buf, n)[:start+n]
		_, err := io.ReadFull(r, buf[start:])
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return fmt.Errorf("%w: truncated", ErrNotDoc)
		}
		return err
	}
	if _, err := r.Peek(1); err == io.EOF {
		return buf, false, io.EOF
	}
	if err := take(4); err != nil {
		return buf, false, err
	}
	magic := binary.LittleEndian.Uint32(buf)
	if magic&0xFFFFFFF0 == 0x184D2A50 { // skippable: its size, then data
		if err := take(4); err != nil {
			return buf, false, err
		}
		n := binary.LittleEndian.Uint32(buf[4:])
		if n > maxDocFrameBytes {
			return buf, false, fmt.Errorf("%w: a skippable frame of %d bytes", ErrNotDoc, n)
		}
		return buf, true, take(int(n))
	}
	if magic != 0xFD2FB528 {
		return buf, false, fmt.Errorf("%w: no zstd frame", ErrNotDoc)
	}
	if err := take(1); err != nil {
		return buf, false, err
	}
	fhd := buf[4]
	single := fhd&0x20 != 0
	n := []int{0, 1, 2, 4}[fhd&3] + []int{0, 2, 4, 8}[fhd>>6] // dictionary id, content size
	if single {
		if fhd>>6 == 0 {
			n++ // a one-byte content size
		}
	} else {
		n++ // window descriptor
	}
	if err := take(n); err != nil {
		return buf, false, err
	}
	for {
		if err := take(3); err != nil {
			return buf, false, err
		}
		h := buf[len(buf)-3:]
		bh := uint32(h[0]) | uint32(h[1])<<8 | uint32(h[2])<<16
		last, typ, size := bh&1 != 0, (bh>>1)&3, int(bh>>3)
		switch typ {
		case 1: // RLE: one byte
			size = 1
		case 3:
			return buf, false, fmt.Errorf("%w: reserved block type", ErrNotDoc)
		}
		if err := take(size); err != nil {
			return buf, false, err
		}
		if last {
			break
		}
	}
	if fhd&4 != 0 { // content checksum
		if err := take(4); err != nil {
			return buf, false, err
		}
	}
	return buf, false, nil
}
