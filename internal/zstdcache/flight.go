package zstdcache

import (
	"context"
	"os"
	"sync"
)

// flight is one running production. Readers open their own descriptor on
// its file and wait on wake, a channel closed and replaced at every bit of
// progress: a broadcast that, unlike sync.Cond, a reader can abandon when
// its request context ends.
type flight struct {
	key string

	mu      sync.Mutex
	path    string // temp file, then the final name once published
	written int64  // compressed bytes in the file so far
	done    bool   // production ended (see err)
	err     error  // why production failed; readers get it instead of EOF
	gone    error  // publishing failed and the file is gone: no new joiners
	wake    chan struct{}
}

func newFlight(key, path string) *flight {
	return &flight{key: key, path: path, wake: make(chan struct{})}
}

// open gives a joining reader its own descriptor. It runs under f.mu so
// that the rename to the final name cannot slip in between.
func (f *flight) open() (*os.File, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	if f.gone != nil {
		return nil, f.gone
	}
	return os.Open(f.path)
}

func (f *flight) broadcastLocked() {
	close(f.wake)
	f.wake = make(chan struct{})
}

// progress records that the file now holds n bytes.
func (f *flight) progress(n int64) {
	f.mu.Lock()
	f.written = n
	f.broadcastLocked()
	f.mu.Unlock()
}

// fail ends the production with err and removes its file; descriptors
// already open stay valid but readers stop at err.
func (f *flight) fail(err error) {
	f.mu.Lock()
	os.Remove(f.path)
	f.err = err
	f.done = true
	f.broadcastLocked()
	f.mu.Unlock()
}

// complete ends the production successfully with size bytes written.
func (f *flight) complete(size int64) {
	f.mu.Lock()
	f.written = size
	f.done = true
	f.broadcastLocked()
	f.mu.Unlock()
}

// state is a snapshot for a reader; wake is closed at the next change.
func (f *flight) state() (written int64, done bool, err error, wake <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.written, f.done, f.err, f.wake
}

// progressWriter is the file end of the encoder: it writes compressed
// bytes to the temp file, then tells readers they are there.
type progressWriter struct {
	ctx context.Context
	f   *os.File
	fl  *flight
	m   *counters
	n   int64
}

func (w *progressWriter) Write(p []byte) (int, error) {
	// A produce that ignores its context still stops at the next write
	// once the cache closes, so Close does not wait for a whole NAR.
	if err := w.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := w.f.Write(p)
	if n > 0 {
		w.n += int64(n)
		w.m.written.Add(int64(n))
		w.fl.progress(w.n)
	}
	return n, err
}
