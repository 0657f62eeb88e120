package zstdcache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"

	"github.com/bos55/concordia/internal/compress"
)

// Entry is one reader of a compressed NAR. An Entry that was complete when
// Get returned it reads a finished blob: Size is known and Seek works, so
// http.ServeContent can answer Range requests. Otherwise it follows a
// running production (streaming only) until that completes; from then on
// Complete reports true and Seek works too.
//
// An Entry is for one goroutine; Close it when done.
type Entry struct {
	c    *Cache
	f    *os.File
	fl   *flight         // nil when the blob was complete at Get
	ctx  context.Context // bounds waits for a running production
	size int64           // when fl == nil
	off  int64           // read offset when fl != nil
	hit  bool            // counts toward bytes served from the cache
	seg  int64           // fl == nil: file offset where unaccounted reads start

	closed bool
}

// Complete reports whether the whole blob exists, so Size and Seek work.
func (e *Entry) Complete() bool {
	_, ok := e.Size()
	return ok
}

// Size returns the compressed size and whether it is known yet.
func (e *Entry) Size() (int64, bool) {
	if e.fl == nil {
		return e.size, true
	}
	n, done, err, _ := e.fl.state()
	if done && err == nil {
		return n, true
	}
	return 0, false
}

// Read reads compressed bytes. While the production runs it waits for
// more; it returns io.EOF only after the production succeeded, and the
// production's error if it failed.
func (e *Entry) Read(p []byte) (int, error) {
	if e.closed {
		return 0, compress.ErrClosed
	}
	if e.fl == nil {
		return e.f.Read(p) // accounted by countServed
	}
	if len(p) == 0 {
		return 0, nil
	}
	for {
		written, done, err, wake := e.fl.state()
		if err != nil {
			return 0, err
		}
		if e.off < written {
			if avail := written - e.off; int64(len(p)) > avail {
				p = p[:avail]
			}
			n, rerr := e.f.ReadAt(p, e.off)
			e.off += int64(n)
			if e.hit {
				e.c.m.served.Add(int64(n))
			}
			if errors.Is(rerr, io.EOF) {
				// The producer said these bytes are in the file.
				rerr = fmt.Errorf("read %s: %w", e.fl.key, io.ErrUnexpectedEOF)
				if n > 0 {
					rerr = nil
				}
			}
			return n, rerr
		}
		if done {
			return 0, io.EOF
		}
		select {
		case <-wake:
		case <-e.ctx.Done():
			return 0, e.ctx.Err()
		}
	}
}

// Seek sets the read offset. It returns ErrIncomplete while the
// production is still running.
func (e *Entry) Seek(offset int64, whence int) (int64, error) {
	if e.closed {
		return 0, compress.ErrClosed
	}
	if e.fl == nil {
		e.countServed()
		n, err := e.f.Seek(offset, whence)
		e.seg = n
		return n, err
	}
	size, ok := e.Size()
	if !ok {
		return 0, fmt.Errorf("seek %s: %w", e.fl.key, ErrIncomplete)
	}
	var abs int64
	switch whence {
	case io.SeekStart:
		abs = offset
	case io.SeekCurrent:
		abs = e.off + offset
	case io.SeekEnd:
		abs = size + offset
	default:
		return 0, fmt.Errorf("seek %s: invalid whence %d", e.fl.key, whence)
	}
	if abs < 0 {
		return 0, fmt.Errorf("seek %s: negative position", e.fl.key)
	}
	e.off = abs
	return abs, nil
}

// Close releases the descriptor. Other readers and the production are not
// affected.
func (e *Entry) Close() error {
	if e.closed {
		return nil
	}
	e.closed = true
	if e.fl == nil {
		e.countServed()
	}
	return e.f.Close()
}

// countServed adds the bytes read since the last Seek, whether by Read or
// by sendfile(2) through SyscallConn, to the served counter: the file
// offset moved by exactly that much.
func (e *Entry) countServed() {
	if cur, err := e.f.Seek(0, io.SeekCurrent); err == nil && cur > e.seg {
		e.c.m.served.Add(cur - e.seg)
		e.seg = cur
	}
}

// SyscallConn exposes the descriptor of an entry that was complete at Get,
// so that io.Copy into a *net.TCPConn (http.ServeContent does that) sends
// the blob with sendfile(2) from the current offset instead of copying it
// through user space. Entries following a production return an error, which
// makes the copy fall back to Read.
func (e *Entry) SyscallConn() (syscall.RawConn, error) {
	if e.closed {
		return nil, compress.ErrClosed
	}
	if e.fl != nil {
		return nil, fmt.Errorf("syscall conn %s: %w", e.fl.key, ErrIncomplete)
	}
	return e.f.SyscallConn()
}
