package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gorilla/mux"

	"github.com/bos55/concordia/internal/store"
)

type ctxKey int

const requestIDKey ctxKey = 0

// RequestID returns the id the server gave the request, or "".
func RequestID(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey).(string)
	return id
}

var (
	idPrefix = func() string {
		b := make([]byte, 4)
		_, _ = rand.Read(b)
		return hex.EncodeToString(b) + "-"
	}()
	idCounter atomic.Uint64
)

// withRequestID attaches a fresh id (process prefix + counter: unique,
// cheap, sortable within a process) to r and to the response headers.
func withRequestID(w http.ResponseWriter, r *http.Request) *http.Request {
	if RequestID(r.Context()) != "" {
		return r
	}
	id := idPrefix + strconv.FormatUint(idCounter.Add(1), 10)
	w.Header().Set("X-Request-Id", id)
	return r.WithContext(context.WithValue(r.Context(), requestIDKey, id))
}

// recorder remembers the status and route of a response for metrics. It
// forwards ReadFrom (so file bodies keep sendfile) and Flush, and renews
// the write deadline per chunk (deadline.go).
type recorder struct {
	http.ResponseWriter
	status int
	route  string
	dl     deadliner     // nil: no write deadlines
	wd     time.Duration // the write progress timeout
	dog    *watchdog     // HTTP/2 (see deadline.go)
}

func (rec *recorder) WriteHeader(code int) {
	if rec.status == 0 {
		rec.status = code
	}
	rec.ResponseWriter.WriteHeader(code)
}

func (rec *recorder) Write(p []byte) (int, error) {
	if rec.status == 0 {
		rec.status = http.StatusOK
	}
	if rec.dl == nil {
		return rec.ResponseWriter.Write(p)
	}
	return rec.write(p)
}

func (rec *recorder) ReadFrom(r io.Reader) (int64, error) {
	if rec.status == 0 {
		rec.status = http.StatusOK
	}
	rf, ok := rec.ResponseWriter.(io.ReaderFrom)
	switch {
	case ok && rec.dl == nil:
		return rf.ReadFrom(r)
	case ok:
		return rec.readFrom(rf, r)
	}
	// Through rec.Write, so the chunks get their deadlines.
	return io.Copy(struct{ io.Writer }{rec}, r)
}

func (rec *recorder) Flush() {
	if f, ok := rec.ResponseWriter.(http.Flusher); ok {
		rec.begin()
		f.Flush()
		rec.end()
	}
}

func (rec *recorder) Unwrap() http.ResponseWriter { return rec.ResponseWriter }

// instrument runs the mux router with a request id, a recorder and the
// request metrics (also when the handler aborts with a panic).
func (s *Server) instrument(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	r = withRequestID(w, r)
	rec := &recorder{ResponseWriter: w, route: "other"}
	s.setDeadlines(rec, r)
	defer func() {
		code := rec.status
		if p := recover(); p != nil {
			if p != http.ErrAbortHandler {
				s.logger(r).Error("handler panic", "path", r.URL.Path, "panic", p)
			}
			s.metrics.observe(rec.route, 0, time.Since(start).Seconds())
			panic(p)
		}
		if code == 0 {
			code = http.StatusOK
		}
		d := time.Since(start)
		s.metrics.observe(rec.route, code, d.Seconds())
		if s.log.Enabled(r.Context(), slog.LevelDebug) {
			s.logger(r).Debug("request", "method", r.Method, "path", r.URL.Path, "route", rec.route,
				"status", code, "duration", d, "remote", r.RemoteAddr, "proto", r.Proto)
		}
	}()
	if refusePath(r.URL.Path) {
		rec.route = "refused"
		refuseBody(rec, r)
		s.fail(rec, r, store.ErrNotFound)
		return
	}
	s.router.ServeHTTP(rec, r)
	finalDeadline(w, r, s.wd)
}

// maxPathLen is far above any URL a Nix client makes (a log URL with a
// 211-character name is under 300 bytes).
const maxPathLen = 1024

// refusePath reports paths no route may see: over-long, with NUL, or
// with a dot-dot segment. They get a 404 before any handler runs, so no
// store or file system is touched for them.
func refusePath(p string) bool {
	return len(p) > maxPathLen || strings.IndexByte(p, 0) >= 0 ||
		strings.Contains(p, "/../") || strings.HasSuffix(p, "/..") || strings.Contains(p, "\\")
}

// routeName is mux middleware telling the recorder which route matched.
func (s *Server) routeName(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if rt := mux.CurrentRoute(r); rt != nil {
			s.setRoute(w, rt.GetName())
		}
		next.ServeHTTP(w, r)
	})
}

func (s *Server) setRoute(w http.ResponseWriter, name string) {
	if rec, ok := w.(*recorder); ok && name != "" {
		rec.route = name
	}
}
