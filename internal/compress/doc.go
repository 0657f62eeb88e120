package compress

import (
	"io"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// DocWindow is the zstd window of the documents the cache compresses once
// for itself and then decodes for many readers (build logs): small, so a
// reader being sent one holds little memory however slowly it reads (the
// decoder keeps a window of history and a block), while text still
// compresses nearly as well as with a large window.
const DocWindow = 128 << 10

var docEncoders sync.Pool

// NewDocWriter returns a zstd writer of frames with a DocWindow window
// (zstd's default level, the frame checksum on). Close finishes the frame
// and gives the encoder back; it does not close w.
func NewDocWriter(w io.Writer) (io.WriteCloser, error) {
	if enc, ok := docEncoders.Get().(*zstd.Encoder); ok {
		enc.Reset(w)
		return &docWriter{enc}, nil
	}
	enc, err := zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1),
		zstd.WithWindowSize(DocWindow), zstd.WithEncoderCRC(true), zstd.WithZeroFrames(true))
	if err != nil {
		return nil, err
	}
	return &docWriter{enc}, nil
}

// NewDocReader decodes what NewDocWriter wrote, refusing frames with a
// larger window (a file changed on disk) and more than maxSize bytes (0:
// no bound). Close gives the decoder back; it does not close r.
func NewDocReader(r io.Reader, maxSize int64) (io.ReadCloser, error) {
	return NewReaderLimits(r, "zstd", DecodeLimits{ZstdWindow: DocWindow, MaxSize: maxSize})
}

type docWriter struct{ enc *zstd.Encoder }

func (w *docWriter) Write(p []byte) (int, error) {
	if w.enc == nil {
		return 0, ErrClosed
	}
	return w.enc.Write(p)
}

func (w *docWriter) ReadFrom(r io.Reader) (int64, error) {
	if w.enc == nil {
		return 0, ErrClosed
	}
	return w.enc.ReadFrom(r)
}

func (w *docWriter) Close() error {
	if w.enc == nil {
		return nil
	}
	err := w.enc.Close()
	w.enc.Reset(nil)
	docEncoders.Put(w.enc)
	w.enc = nil
	return err
}
