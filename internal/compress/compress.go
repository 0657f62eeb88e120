// Package compress holds the codecs of the binary cache: a pooled
// streaming zstd encoder for answers compressed on the fly, a parallel one
// (ParallelWriter) for the compress-once cache, the zstd document frames
// build logs are kept in, and a decoder, with limits, for every codec a Nix
// client may upload with. The cache that compresses each NAR once and
// serves the result to every later reader is package zstdcache; this
// package keeps no state on disk.
//
// When the disk cache is off, NewWriter still keeps the per-stream cost low
// by reusing encoders and pinning each stream to one goroutine, so several
// streams spread over the cores instead of each one starting GOMAXPROCS
// workers.
package compress

import (
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// Level maps a zstd CLI style level (the [zstd] level key, as Harmonia
// takes it) to the encoder level of klauspost/compress. Zero and negative
// values mean "unset" and pick SpeedFastest, the closest to `zstd -1`:
// serving speed matters more than the last percent of size.
func Level(level int) zstd.EncoderLevel {
	if level <= 0 {
		return zstd.SpeedFastest
	}
	return zstd.EncoderLevelFromZstd(level)
}

// encoderOptions are shared by NewWriter and the cache's frames. conc is
// the encoder's concurrency; both use 1, which makes Write compress
// synchronously on the caller's goroutine: NewWriter's streams go straight
// to an HTTP response, and an async encoder could still be writing to it
// after a handler gave up mid-stream. The cache's production gets its
// parallelism from compressing independent frames at once instead (see
// parallelWriter).
func encoderOptions(l zstd.EncoderLevel, conc int) []zstd.EOption {
	opts := []zstd.EOption{
		zstd.WithEncoderLevel(l),
		zstd.WithEncoderConcurrency(conc),
		// The frame checksum costs a few percent but catches a torn or
		// rotten blob at the client; zstd -1 writes one too.
		zstd.WithEncoderCRC(true),
		// An empty NAR does not exist, but an empty stream must still be a
		// valid zstd frame for decoders that refuse zero bytes.
		zstd.WithZeroFrames(true),
	}
	if l == zstd.SpeedFastest {
		// zstd -1 uses a 512 KiB window. 1 MiB (instead of the 4 MiB
		// default) keeps each concurrent stream's history small and
		// cache-friendly; on a GOROOT NAR it measured as fast or faster
		// in CPU time, and the output is still smaller than zstd -1's.
		// Higher levels keep their default windows: who picks them wants
		// the ratio.
		opts = append(opts, zstd.WithWindowSize(1<<20))
	}
	return opts
}

// pools holds one sync.Pool of *zstd.Encoder per encoder level: an
// encoder allocates its tables (MBs at high levels) once and is reused.
var pools sync.Map // poolKey -> *sync.Pool

type poolKey struct {
	level zstd.EncoderLevel
	conc  int
}

// streamConc is the concurrency of every pooled encoder (see
// encoderOptions).
const streamConc = 1

func pool(l zstd.EncoderLevel, conc int) *sync.Pool {
	k := poolKey{l, conc}
	if p, ok := pools.Load(k); ok {
		return p.(*sync.Pool)
	}
	p, _ := pools.LoadOrStore(k, &sync.Pool{})
	return p.(*sync.Pool)
}

func getEncoder(l zstd.EncoderLevel, conc int, w io.Writer) (*zstd.Encoder, error) {
	if enc, ok := pool(l, conc).Get().(*zstd.Encoder); ok {
		enc.Reset(w)
		return enc, nil
	}
	enc, err := zstd.NewWriter(w, encoderOptions(l, conc)...)
	if err != nil {
		return nil, fmt.Errorf("zstd encoder level %s: %w", l, err)
	}
	return enc, nil
}

// putEncoder returns enc to its pool. It drops the reference to the
// destination first so a pooled encoder does not pin a response writer.
func putEncoder(l zstd.EncoderLevel, conc int, enc *zstd.Encoder) {
	enc.Reset(nil)
	pool(l, conc).Put(enc)
}

// writer is a pooled encoder that gives itself back on Close.
type writer struct {
	enc   *zstd.Encoder
	level zstd.EncoderLevel
}

// NewWriter returns a zstd stream writer to w at the given CLI-style level
// (see Level). Close must be called to finish the frame; it does not close
// w. The encoder comes from a pool and returns to it on Close.
func NewWriter(w io.Writer, level int) (io.WriteCloser, error) {
	l := Level(level)
	enc, err := getEncoder(l, streamConc, w)
	if err != nil {
		return nil, err
	}
	return &writer{enc: enc, level: l}, nil
}

// NewEncoder is NewWriter under the name the cache contract uses.
func NewEncoder(w io.Writer, level int) (io.WriteCloser, error) { return NewWriter(w, level) }

func (w *writer) Write(p []byte) (int, error) {
	if w.enc == nil {
		return 0, ErrClosed
	}
	return w.enc.Write(p)
}

// ReadFrom lets io.Copy hand the encoder large reads directly.
func (w *writer) ReadFrom(r io.Reader) (int64, error) {
	if w.enc == nil {
		return 0, ErrClosed
	}
	return w.enc.ReadFrom(r)
}

func (w *writer) Close() error {
	if w.enc == nil {
		return ErrClosed
	}
	err := w.enc.Close()
	// An encoder whose Close failed holds the error; Reset clears it, so
	// it is still fit for the pool.
	putEncoder(w.level, streamConc, w.enc)
	w.enc = nil
	return err
}
