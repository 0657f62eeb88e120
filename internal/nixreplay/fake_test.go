package nixreplay

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bos55/concordia/pkg/narinfo"
)

// fakeCache is a binary cache small enough to trust: it stores PUTs,
// serves GET and HEAD (with Range, through http.ServeContent), and records
// every request as the server saw it, so a client's trace can be checked
// from the other side of the wire.
type fakeCache struct {
	t   testing.TB
	srv *httptest.Server

	mu      sync.Mutex
	files   map[string][]byte
	owners  map[string]string // NAR URL path -> hash part of the narinfo naming it
	entries []Entry
	// status, when it returns non-zero, answers the request with that
	// status instead of serving it.
	status func(r *http.Request) int
	// cut: the next GET of this path sends its full Content-Length but
	// only this many body bytes, then drops the connection.
	cut map[string]int
	// encode: serve bodies with this Content-Encoding (compressed on the
	// fly), as a cache with transparent compression does.
	encode string
}

func newFakeCache(t testing.TB) *fakeCache {
	f := &fakeCache{t: t, files: map[string][]byte{}, owners: map[string]string{}, cut: map[string]int{}}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeCache) URL() string { return f.srv.URL }

func (f *fakeCache) serve(w http.ResponseWriter, r *http.Request) {
	e := Entry{Method: r.Method, Path: r.URL.Path, AcceptEncoding: r.Header.Get("Accept-Encoding"),
		ContentType: r.Header.Get("Content-Type"), ContentEncoding: r.Header.Get("Content-Encoding"),
		Expect: r.Header.Get("Expect"), Range: r.Header.Get("Range")}
	// Go's server consumes the Expect header; r.Header keeps it.
	f.mu.Lock()
	statusFn, encode := f.status, f.encode
	f.mu.Unlock()
	status := 0
	if statusFn != nil {
		status = statusFn(r)
	}
	defer func() {
		e.Status = status
		f.mu.Lock()
		f.entries = append(f.entries, e)
		f.mu.Unlock()
	}()
	if status != 0 {
		w.WriteHeader(status)
		return
	}
	switch r.Method {
	case http.MethodPut:
		b, err := io.ReadAll(r.Body)
		if err != nil {
			status = 400
			w.WriteHeader(status)
			return
		}
		if ce := r.Header.Get("Content-Encoding"); ce != "" {
			if b, err = Decompress(r.Context(), ce, b); err != nil {
				status = 400
				w.WriteHeader(status)
				return
			}
		}
		f.mu.Lock()
		f.files[r.URL.Path] = b
		if strings.HasSuffix(r.URL.Path, ".narinfo") {
			if ni, err := narinfo.Parse(bytes.NewReader(b)); err == nil {
				f.owners["/"+ni.URL] = ni.HashPart()
			}
		}
		f.mu.Unlock()
		status = http.StatusOK
		return
	case http.MethodGet, http.MethodHead:
	default:
		status = http.StatusMethodNotAllowed
		w.WriteHeader(status)
		return
	}
	f.mu.Lock()
	b, ok := f.files[r.URL.Path]
	cut, cutting := f.cut[r.URL.Path]
	if cutting && r.Method == http.MethodGet {
		delete(f.cut, r.URL.Path)
	}
	f.mu.Unlock()
	if !ok {
		status = http.StatusNotFound
		http.NotFound(w, r)
		return
	}
	if encode != "" {
		enc, err := Compress(r.Context(), encode, b)
		if err != nil {
			f.t.Error(err)
		}
		b = enc
		w.Header().Set("Content-Encoding", encode)
	}
	w.Header().Set("ETag", `"x"`)
	if cutting && r.Method == http.MethodGet {
		status = http.StatusOK
		w.Header().Set("Accept-Ranges", "bytes")
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		w.WriteHeader(status)
		w.Write(b[:cut])
		w.(http.Flusher).Flush()
		if c, _, err := http.NewResponseController(w).Hijack(); err == nil {
			c.Close()
		}
		return
	}
	rec := &statusWriter{ResponseWriter: w}
	http.ServeContent(rec, r, "", time.Time{}, bytes.NewReader(b))
	status = rec.status
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(c int) { s.status = c; s.ResponseWriter.WriteHeader(c) }
func (s *statusWriter) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = 200
	}
	return s.ResponseWriter.Write(b)
}

// set changes the fake's behaviour under its lock: the requests it races
// with may come from a subprocess, invisible to the race detector.
func (f *fakeCache) set(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn()
}

func (f *fakeCache) Entries() []Entry {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Entry(nil), f.entries...)
}

func (f *fakeCache) Reset() {
	f.mu.Lock()
	f.entries = nil
	f.mu.Unlock()
}

func (f *fakeCache) Owner(p string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.owners[p]
}

func (f *fakeCache) file(p string) ([]byte, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, ok := f.files[p]
	return b, ok
}
