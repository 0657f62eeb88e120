package server

import (
	"errors"
	"io"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Progress deadlines. A whole-request timeout would cut a 10 GB NAR on a
// slow link, and no timeout lets a client hold a goroutine (and a file, and
// an encoder) for as long as it likes by sending or reading nothing. So the
// server gives each step its own deadline: a read of a request body that
// brings nothing for ReadProgress fails, and a response write of one chunk
// (at most writeChunk bytes) that cannot complete within WriteProgress
// drops the response. A client that keeps moving, however slowly, is never
// cut; one slower than writeChunk per WriteProgress (about 4 KiB/s with the
// defaults) counts as stopped.
//
// On HTTP/1 the deadlines are the connection's, renewed before each read
// and write: an expired deadline only fails an operation in progress or
// later, and net/http clears it after each request. On HTTP/2 a deadline is
// a timer that resets the stream when it fires, even while the handler is
// busy with something else, so there a watchdog sets one only when a read
// or write has been blocked for the whole timeout.
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

// aLongTimeAgo is a deadline that has passed: it fails a blocked operation
// at once.
var aLongTimeAgo = time.Unix(1, 0)

// deadliner is what net/http's HTTP/1 and HTTP/2 response writers offer
// (http.ResponseController uses the same methods).
type deadliner interface {
	SetReadDeadline(time.Time) error
	SetWriteDeadline(time.Time) error
}

// watchdog calls expire when one operation (between start and stop) has
// been running for d.
type watchdog struct {
	d      time.Duration
	expire func()

	mu    sync.Mutex
	timer *time.Timer
	busy  bool
	since time.Time
}

func (w *watchdog) start() {
	w.mu.Lock()
	w.busy, w.since = true, time.Now()
	if w.timer == nil {
		w.timer = time.AfterFunc(w.d, w.fire)
	} else {
		w.timer.Reset(w.d)
	}
	w.mu.Unlock()
}

func (w *watchdog) stop() {
	w.mu.Lock()
	w.busy = false
	w.mu.Unlock()
	w.timer.Stop()
}

// fire runs on the timer's goroutine; a firing left over from an earlier
// operation finds the current one too young and does nothing.
func (w *watchdog) fire() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.busy && time.Since(w.since) >= w.d-time.Millisecond {
		w.expire()
	}
}

// progressBody gives each read of a request body its deadline, until the
// first error. After EOF it never touches the deadline again: net/http's
// background read of the next request starts there and must not inherit
// one.
type progressBody struct {
	io.ReadCloser
	dl       deadliner
	d        time.Duration
	dog      *watchdog // HTTP/2
	done     bool
	timedOut atomic.Bool // read by fail, perhaps on another goroutine
}

func (b *progressBody) Read(p []byte) (n int, err error) {
	switch {
	case b.done:
		return b.ReadCloser.Read(p)
	case b.dog != nil:
		b.dog.start()
		n, err = b.ReadCloser.Read(p)
		b.dog.stop()
	default:
		_ = b.dl.SetReadDeadline(time.Now().Add(b.d))
		n, err = b.ReadCloser.Read(p)
	}
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
// (instrument). On HTTP/1 the write deadline also covers what net/http
// writes itself (a 100 Continue), and the read deadline, set at once when
// there is a body, also bounds net/http's own discarding of a body the
// handler left unread.
func (s *Server) setDeadlines(rec *recorder, r *http.Request) {
	dl, ok := rec.ResponseWriter.(deadliner)
	if !ok {
		return // e.g. httptest.ResponseRecorder
	}
	h2 := r.ProtoMajor >= 2
	if s.wd > 0 {
		rec.dl, rec.wd = dl, s.wd
		if h2 {
			rec.dog = &watchdog{d: s.wd, expire: func() { _ = dl.SetWriteDeadline(aLongTimeAgo) }}
		} else {
			rec.begin()
		}
	}
	if s.rd > 0 && r.ContentLength != 0 && r.Body != nil && r.Body != http.NoBody {
		b := &progressBody{ReadCloser: r.Body, dl: dl, d: s.rd}
		if h2 {
			b.dog = &watchdog{d: s.rd, expire: func() { _ = dl.SetReadDeadline(aLongTimeAgo) }}
		} else {
			_ = dl.SetReadDeadline(time.Now().Add(s.rd))
		}
		r.Body = b
	}
}

// finalDeadline covers what net/http sends after the handler returned (the
// buffered end of the response) on HTTP/1; net/http clears it after the
// request. On HTTP/2 the stream is not touched after the handler (its
// writer goes back to a pool): Run's WriteByteTimeout covers a client that
// stops reading there.
func finalDeadline(w http.ResponseWriter, r *http.Request, d time.Duration) {
	if d <= 0 || r.ProtoMajor >= 2 {
		return
	}
	if dl, ok := w.(deadliner); ok {
		_ = dl.SetWriteDeadline(time.Now().Add(d))
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

// begin and end bracket one write (chunk) of the response.
func (rec *recorder) begin() {
	if rec.dog != nil {
		rec.dog.start()
	} else if rec.dl != nil {
		_ = rec.dl.SetWriteDeadline(time.Now().Add(rec.wd))
	}
}

func (rec *recorder) end() {
	if rec.dog != nil {
		rec.dog.stop()
	}
}

// write sends p in chunks, each with its own deadline.
func (rec *recorder) write(p []byte) (int, error) {
	if len(p) == 0 {
		rec.begin()
		defer rec.end()
		return rec.ResponseWriter.Write(p)
	}
	n := 0
	for len(p) > 0 {
		c := p
		if len(c) > writeChunk {
			c = c[:writeChunk]
		}
		rec.begin()
		m, err := rec.ResponseWriter.Write(c)
		rec.end()
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
		rec.begin()
		n, err := rf.ReadFrom(&io.LimitedReader{R: base, N: c})
		rec.end()
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
