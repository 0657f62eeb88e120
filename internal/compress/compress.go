// Package compress does the zstd work of the binary cache: a pooled
// streaming encoder for answers that are compressed on the fly, a decoder
// for every codec a Nix client may upload with, and Cache, which compresses
// each NAR once and serves the result to every later (or concurrent) reader.
//
// Ten hosts pulling the same closure should cost one compression: that is
// why Cache exists. When the disk cache is off, NewWriter still keeps the
// per-stream cost low by reusing encoders and pinning each stream to one
// goroutine, so several streams spread over the cores instead of each one
// starting GOMAXPROCS workers.
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

// encoderOptions are shared by the pool and the cache. Concurrency 2
// lets one stream compress its current block while the next one is being
// filled: on the GOROOT NAR a single stream went from 0.75x to 0.83-0.99x
// of `zstd -1 -T1` (whose own I/O thread makes it use ~1.2 cores), and two
// streams from 1.08x to 1.31x, for ~8% more CPU per byte. The server caps
// live compressions at GOMAXPROCS, so many streams do not oversubscribe.
func encoderOptions(l zstd.EncoderLevel) []zstd.EOption {
	opts := []zstd.EOption{
		zstd.WithEncoderLevel(l),
		zstd.WithEncoderConcurrency(2),
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
var pools sync.Map // zstd.EncoderLevel -> *sync.Pool

func pool(l zstd.EncoderLevel) *sync.Pool {
	if p, ok := pools.Load(l); ok {
		return p.(*sync.Pool)
	}
	p, _ := pools.LoadOrStore(l, &sync.Pool{})
	return p.(*sync.Pool)
}

func getEncoder(l zstd.EncoderLevel, w io.Writer) (*zstd.Encoder, error) {
	if enc, ok := pool(l).Get().(*zstd.Encoder); ok {
		enc.Reset(w)
		return enc, nil
	}
	enc, err := zstd.NewWriter(w, encoderOptions(l)...)
	if err != nil {
		return nil, fmt.Errorf("zstd encoder level %s: %w", l, err)
	}
	return enc, nil
}

// putEncoder returns enc to its pool. It drops the reference to the
// destination first so a pooled encoder does not pin a response writer.
func putEncoder(l zstd.EncoderLevel, enc *zstd.Encoder) {
	enc.Reset(nil)
	pool(l).Put(enc)
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
	enc, err := getEncoder(l, w)
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
	putEncoder(w.level, w.enc)
	w.enc = nil
	return err
}
