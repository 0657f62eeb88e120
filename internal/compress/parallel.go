package compress

import (
	"fmt"
	"io"
	"runtime"
	"sync"

	ddzstd "github.com/DataDog/zstd"
	"github.com/klauspost/compress/zstd"
)

// frameSize is the input of one frame of a ParallelWriter. Each frame is
// compressed on its own, without the history of the one before, so it
// trades a little ratio for parallelism: on a GOROOT NAR at SpeedFastest,
// 1 MiB frames came out 1.6% larger than one stream and still 0.2%
// smaller than `zstd -1`; 512 KiB frames were 3% larger, 4 MiB ones
// were no faster.
const frameSize = 1 << 20

// helpers bounds the frames being compressed off their producer's
// goroutine, across all productions at once: parallelism only pays while
// cores are idle, and the bound is also what caps the memory of many
// concurrent productions (two frame buffers per helper).
var helpers = make(chan struct{}, runtime.GOMAXPROCS(0))

// ParallelWriter compresses what is written to it as a sequence of zstd
// frames of frameSize input bytes each, several at once, and writes them
// to w in order. Concatenated frames are one valid zstd stream: the zstd
// CLI, libzstd's streaming decoder, libarchive (which every Nix version
// decompresses with) and klauspost's decoder all read on to the end. At
// SpeedFastest each frame is libzstd's level 1 (encodeLevel1), as `zstd
// -1`; one stream of one encoder alone could not keep up with the CLI
// while the same stream is also dumped and sent.
//
// The goroutine calling Write compresses a frame itself when no helper
// is free, so a busy server degrades to one frame at a time per
// production, with the memory of one. Frames go out on a goroutine of
// their own as soon as they and those before them are done, so readers
// tailing the output see a frame compressed by a helper even while the
// producer is stalled.
type ParallelWriter struct {
	level   zstd.EncoderLevel
	buf     *[]byte     // the frame being filled
	ordered chan *frame // to the output goroutine, in stream order
	out     chan struct{}
	wrote   bool // a frame was started (else Close writes an empty one)
	closed  bool

	mu      sync.Mutex
	err     error // the first error, of the destination or an encoder
	aborted bool
}

type frame struct {
	in, out *[]byte
	done    chan struct{} // closed when out is ready
	err     error
}

var (
	inBufs  = sync.Pool{New: func() any { b := make([]byte, 0, frameSize); return &b }}
	outBufs = sync.Pool{New: func() any { b := make([]byte, 0, frameSize+frameSize/128+64); return &b }}
)

// NewParallelWriter returns a ParallelWriter at level l writing to w.
func NewParallelWriter(w io.Writer, l zstd.EncoderLevel) *ParallelWriter {
	p := &ParallelWriter{
		level: l,
		// Room for a frame per helper and one compressed inline: past
		// that, Write waits, so a slow destination bounds memory.
		ordered: make(chan *frame, cap(helpers)+1),
		out:     make(chan struct{}),
	}
	go p.output(w)
	return p
}

// output writes frames in order until ordered is closed.
func (p *ParallelWriter) output(w io.Writer) {
	defer close(p.out)
	for f := range p.ordered {
		<-f.done
		p.mu.Lock()
		if p.err == nil {
			p.err = f.err
		}
		skip := p.err != nil || p.aborted
		p.mu.Unlock()
		if !skip {
			if _, err := w.Write(*f.out); err != nil {
				p.fail(err)
			}
		}
		inBufs.Put(f.in)
		outBufs.Put(f.out)
	}
}

func (p *ParallelWriter) fail(err error) {
	p.mu.Lock()
	if p.err == nil {
		p.err = err
	}
	p.mu.Unlock()
}

func (p *ParallelWriter) failed() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

func (p *ParallelWriter) Write(b []byte) (int, error) {
	if p.closed {
		return 0, ErrClosed
	}
	if err := p.failed(); err != nil {
		return 0, err
	}
	n := 0
	for len(b) > 0 {
		if p.buf == nil {
			p.buf = inBufs.Get().(*[]byte)
			*p.buf = (*p.buf)[:0]
		}
		k := min(len(b), frameSize-len(*p.buf))
		*p.buf = append(*p.buf, b[:k]...)
		b, n = b[k:], n+k
		if len(*p.buf) == frameSize {
			p.submit()
			if err := p.failed(); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

// submit starts compressing the current frame, on a helper if one is
// free, else right here, and queues it for output.
func (p *ParallelWriter) submit() {
	f := &frame{in: p.buf, out: outBufs.Get().(*[]byte), done: make(chan struct{})}
	p.buf, p.wrote = nil, true
	select {
	case helpers <- struct{}{}:
		go func() {
			f.err = p.encode(f)
			<-helpers // before done: a closed writer holds no helper
			close(f.done)
		}()
	default:
		f.err = p.encode(f)
		close(f.done)
	}
	p.ordered <- f
}

func (p *ParallelWriter) encode(f *frame) error {
	if p.level == zstd.SpeedFastest {
		return encodeLevel1(f)
	}
	enc, err := getEncoder(p.level, streamConc, nil)
	if err != nil {
		return err
	}
	*f.out = enc.EncodeAll(*f.in, (*f.out)[:0])
	putEncoder(p.level, streamConc, enc)
	return nil
}

// Close compresses the last frame and returns once every frame is
// written. An empty input still makes one (empty) frame, which decoders
// that refuse zero bytes need. Close or Abort must be called even after
// an error: they are what wait for the helpers and the output goroutine.
func (p *ParallelWriter) Close() error {
	if p.closed {
		return nil
	}
	if p.failed() == nil && (p.buf != nil && len(*p.buf) > 0 || !p.wrote) {
		if p.buf == nil {
			p.buf = inBufs.Get().(*[]byte)
			*p.buf = (*p.buf)[:0]
		}
		p.submit()
	}
	p.finish()
	return p.failed()
}

// Abort drops what is not written yet and waits for the frames in flight.
func (p *ParallelWriter) Abort() {
	if p.closed {
		return
	}
	p.mu.Lock()
	p.aborted = true
	p.mu.Unlock()
	p.finish()
}

func (p *ParallelWriter) finish() {
	p.closed = true
	if p.buf != nil {
		inBufs.Put(p.buf)
		p.buf = nil
	}
	close(p.ordered)
	<-p.out
}

// level1 are libzstd compression contexts, one per frame being encoded.
//
// libzstd (the C library, built from the sources github.com/DataDog/zstd
// bundles, so only a C compiler is needed, as for go-sqlite3) compresses
// a 1 MiB frame of a NAR at level 1 in 0.6x the CPU time of klauspost's
// SpeedFastest (475 against 297 MB/s on one core here, for 1.4% more
// bytes), and the cold path of a zstd download is CPU-bound: dumping,
// compressing and sending on two cores. Frames carry no content checksum:
// a client checks the NarHash of what it decompresses, and every frame
// still carries its content size.
var level1 = sync.Pool{New: func() any { return ddzstd.NewCtx() }}

// encodeLevel1 compresses f as one libzstd level-1 frame.
func encodeLevel1(f *frame) error {
	c := level1.Get().(ddzstd.Ctx)
	out, err := c.CompressLevel((*f.out)[:0], *f.in, 1)
	level1.Put(c)
	if err != nil {
		return fmt.Errorf("zstd level 1: %w", err)
	}
	*f.out = out
	return nil
}
