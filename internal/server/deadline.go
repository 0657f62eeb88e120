package server

import (
	"errors"
	"io"
	"net/http"
	"os"
	"sync/atomic"
	"time"
)

// Progress deadlines. A whole-request timeout would cut a 10 GB NAR on a
// slow link, and no timeout lets a client hold a goroutine (and a file, and
// an encoder) for as long as it likes by sending or reading nothing. So the
// server gives each step its own deadline, renewed as bytes flow: a request
// body read that brings nothing for ReadProgress fails, and a response that
// cannot send one chunk (at most writeChunk bytes) within WriteProgress is
// dropped. A client that keeps moving, however slowly, is never cut; one
// slower than writeChunk per WriteProgress (about 4 KiB/s with the
// defaults) counts as stopped.
const (
	// DefaultProgressTimeout is the default of both progress timeouts.
	DefaultProgressTimeout = 30 * time.Second
	// writeChunk is the most one write deadline covers; larger writes,
	// and ReadFrom (sendfile), are split into chunks of this size.
	writeChunk = 128 << 10
	// refuseGrace is how long a refused request's unread body is still
	// read (and discarded, up to net/http's 256 KiB) after the answer was
	// sent, so an honest client that sent it whole reads the answer
	// instead of a reset; a slow one is cut when it ends.
	refuseGrace = time.Second
)

// deadliner is what net/http's HTTP/1 and HTTP/2 response writers offer
// (http.ResponseController uses the same methods).
type deadliner interface {
	SetReadDeadline(time.Time) error
	SetWriteDeadline(time.Time) error
}

// progressBody renews the connection's read deadline before each read of
// a request body, until the first error. After EOF it never touches the
// deadline again: net/http's background read of the next request starts
// there and must not inherit one.
type progressBody struct {
	io.ReadCloser
	dl       deadliner
	d        time.Duration
	done     bool
	timedOut atomic.Bool // read by fail, perhaps on another goroutine
}

func (b *progressBody) Read(p []byte) (int, error) {
	if b.done {
		return b.ReadCloser.Read(p)
	}
	_ = b.dl.SetReadDeadline(time.Now().Add(b.d))
	n, err := b.ReadCloser.Read(p)
	if err != nil {
		b.done = true
		if errors.Is(err, os.ErrDeadlineExceeded) {
			b.timedOut.Store(true)
			err = &bodyTimeout{b.d}
		}
	}
	return n, err
}

// stalled returns the error to answer for a request whose body stopped
// coming, or nil. net/http cancels the request's context when a read of
// the connection fails, so the handler's error may be only that; the
// stalled body is the reason.
func stalled(r *http.Request) error {
	if b, ok := r.Body.(*progressBody); ok && b.timedOut.Load() {
		return &bodyTimeout{b.d}
	}
	return nil
}

// bodyTimeout is a request body that stopped coming: 408, which Nix
// retries.
type bodyTimeout struct{ d time.Duration }

func (e *bodyTimeout) Error() string {
	return "request body: nothing received for " + e.d.String()
}
func (e *bodyTimeout) Unwrap() error   { return os.ErrDeadlineExceeded }
func (e *bodyTimeout) HTTPStatus() int { return http.StatusRequestTimeout }

// setDeadlines arms the deadlines of a request that goes through the mux
// (instrument): the write deadline for what net/http itself writes (a 100
// Continue) and, when there is a body, the read deadline, which also
// bounds net/http's own discarding of a body the handler left unread.
func (s *Server) setDeadlines(rec *recorder, r *http.Request) {
	dl, ok := rec.ResponseWriter.(deadliner)
	if !ok {
		return // e.g. httptest.ResponseRecorder
	}
	if s.wd > 0 {
		rec.dl, rec.wd = dl, s.wd
		rec.extend()
	}
	if s.rd > 0 && r.ContentLength != 0 && r.Body != nil && r.Body != http.NoBody {
		_ = dl.SetReadDeadline(time.Now().Add(s.rd))
		r.Body = &progressBody{ReadCloser: r.Body, dl: dl, d: s.rd}
	}
}

// refuseBody prepares the answer to a request refused before its body was
// read: the connection ends after the answer (Connection: close, so a
// client cannot keep it open with an unread body), and the body is read for
// at most refuseGrace more.
func refuseBody(w http.ResponseWriter, r *http.Request) {
	if r.ContentLength == 0 || r.Body == nil || r.Body == http.NoBody {
		return
	}
	if r.ProtoMajor == 1 {
		w.Header().Set("Connection", "close")
	}
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(refuseGrace))
}

// extend renews the write deadline for the next chunk.
func (rec *recorder) extend() {
	if rec.dl != nil {
		_ = rec.dl.SetWriteDeadline(time.Now().Add(rec.wd))
	}
}

// write sends p in chunks, each with its own deadline.
func (rec *recorder) write(p []byte) (int, error) {
	if len(p) == 0 {
		rec.extend()
		return rec.ResponseWriter.Write(p)
	}
	n := 0
	for len(p) > 0 {
		c := p
		if len(c) > writeChunk {
			c = c[:writeChunk]
		}
		rec.extend()
		m, err := rec.ResponseWriter.Write(c)
		n += m
		if err != nil {
			return n, err
		}
		p = p[m:]
	}
	return n, nil
}

// readFrom copies src with a deadline per chunk. An *os.File, or one in an
// *io.LimitedReader (what http.ServeContent passes), stays an
// *io.LimitedReader of the file per chunk, so net/http still uses sendfile.
func (rec *recorder) readFrom(rf io.ReaderFrom, src io.Reader) (int64, error) {
	base, remain := src, int64(1<<63-1)
	lr, limited := src.(*io.LimitedReader)
	if limited {
		base, remain = lr.R, lr.N
	}
	var total int64
	for remain > 0 {
		c := min(remain, writeChunk)
		rec.extend()
		n, err := rf.ReadFrom(&io.LimitedReader{R: base, N: c})
		total += n
		remain -= n
		if limited {
			lr.N = remain
		}
		if err != nil || n < c {
			return total, err
		}
	}
	return total, nil
}
