package server

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"

	"github.com/bos55/concordia/internal/auth"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/pkg/nar"
	"github.com/bos55/concordia/pkg/narinfo"
)

// StatusError lets an error choose its own status; Status honours it.
type StatusError interface {
	error
	HTTPStatus() int
}

// Status is the one mapping from errors to HTTP status codes, shared by
// the read and upload handlers:
//
//	store.ErrNotFound                    404 (never for I/O errors)
//	store.ErrInvalid, nar/narinfo.ErrInvalid 400
//	store.ErrConflict                    409 (an upload would change a served path)
//	store.ErrNoSpace                     507
//	store.ErrUnavailable                 503 (an upstream to check against did not answer)
//	auth: no/unknown credentials         401, lacking permission 403
//	store.ErrNotOwner                   403 (another token's pin)
//	store.ErrTooManyPins                403 (limits.max_pins_per_token)
//	an error with HTTPStatus()           that status
//	anything else                        500
func Status(err error) int {
	var se StatusError
	switch {
	case err == nil:
		return http.StatusOK
	case errors.As(err, &se):
		return se.HTTPStatus()
	case errors.Is(err, store.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, auth.ErrForbidden), errors.Is(err, store.ErrNotOwner), errors.Is(err, store.ErrTooManyPins):
		return http.StatusForbidden
	case errors.Is(err, auth.ErrNoCredentials), errors.Is(err, auth.ErrUnknownToken):
		return http.StatusUnauthorized
	case errors.Is(err, store.ErrConflict):
		return http.StatusConflict
	case errors.Is(err, store.ErrNoSpace):
		return http.StatusInsufficientStorage
	case errors.Is(err, store.ErrUnavailable):
		return http.StatusServiceUnavailable
	case errors.Is(err, store.ErrInvalid), errors.Is(err, nar.ErrInvalid), errors.Is(err, narinfo.ErrInvalid):
		return http.StatusBadRequest
	}
	return http.StatusInternalServerError
}

// fail answers err with its status. 5xx are logged with the request id
// (and the message kept generic, so paths of the server's disks do not
// leak); 4xx carry the error text, which is about the client's input,
// with any file-system path but a store path taken out (redact; the log
// keeps the whole text with the request id).
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	if st := stalled(r); st != nil {
		err = st
	}
	code := Status(err)
	h := w.Header()
	h.Del("Content-Length")
	h.Del("Content-Encoding")
	h.Del("Content-Range")
	h.Del("Accept-Ranges")
	h.Del("ETag")
	h.Set("Cache-Control", "no-store")
	msg := err.Error()
	if code == http.StatusUnauthorized || code == http.StatusForbidden {
		// Said here because the client often does not: most Nix versions
		// take a refused narinfo for a miss and remember it for an hour
		// (narinfo-cache-negative-ttl) without a word to their user.
		s.logger(r).Info("request refused", "method", r.Method, "path", r.URL.Path, "status", code, "reason", msg, "remote", r.RemoteAddr)
	}
	switch {
	case code == http.StatusUnauthorized:
		h.Set("WWW-Authenticate", `Basic realm="`+auth.Realm+`", charset="UTF-8"`)
	case errors.Is(err, store.ErrTooManyPins):
		h.Set(store.RefusalHeader, store.RefusalTooManyPins)
	case code == http.StatusNotFound && !errors.As(err, new(*apiNotFound)):
		msg = "not found"
	case code >= 500:
		if errors.Is(err, context.Canceled) || r.Context().Err() != nil {
			s.logger(r).Debug("request abandoned", "path", r.URL.Path, "err", err)
		} else {
			s.logger(r).Error("request failed", "method", r.Method, "path", r.URL.Path, "status", code, "err", err)
		}
		msg = http.StatusText(code)
	}
	if code < 500 && msg != "not found" {
		if red := s.redact(msg); red != msg {
			s.logger(r).Info("answer redacted", "method", r.Method, "path", r.URL.Path, "status", code, "err", err)
			msg = red + " (details in the server log, request " + RequestID(r.Context()) + ")"
		}
	}
	http.Error(w, msg, code)
}

// apiNotFound is a 404 of the admin and pin API whose text is sent: on
// the read paths a 404 says only "not found" (they answer for a cache's
// contents), but an API caller needs to know why.
type apiNotFound struct{ msg string }

func (e *apiNotFound) Error() string { return e.msg }
func (e *apiNotFound) Unwrap() error { return store.ErrNotFound }

// redact replaces every absolute file-system path in msg with "<path>",
// except paths in the served store directory (store paths are what
// clients name and ask for). Answers thus never show the server's own
// directories (upload dir, state dir, a chroot store, the tokens file),
// whatever error text reaches them.
func (s *Server) redact(msg string) string {
	if strings.IndexByte(msg, '/') < 0 {
		return msg
	}
	var b strings.Builder
	i := 0
	for i < len(msg) {
		c := msg[i]
		if c != '/' || (i > 0 && !strings.ContainsRune(" \t\n\"'(=,:[<", rune(msg[i-1]))) || i+1 < len(msg) && msg[i+1] == '/' {
			b.WriteByte(c)
			i++
			continue
		}
		j := i + 1
		for j < len(msg) && !strings.ContainsRune(" \t\n\"'),;:]>", rune(msg[j])) {
			j++
		}
		p := msg[i:j]
		if p == s.storeDir || strings.HasPrefix(p, s.storeDir+"/") && !strings.Contains(p, "/../") {
			b.WriteString(p)
		} else {
			b.WriteString("<path>")
		}
		i = j
	}
	return b.String()
}

// Fail is fail for handlers outside this package's files.
func (s *Server) Fail(w http.ResponseWriter, r *http.Request, err error) { s.fail(w, r, err) }

// logger returns the server logger with the request id attached.
func (s *Server) logger(r *http.Request) *slog.Logger {
	if id := RequestID(r.Context()); id != "" {
		return s.log.With("req", id)
	}
	return s.log
}

// sendAfterFirstChunk reads body's first 32 KiB before it sends the
// status, so an error before the first byte (a path gone since the
// lookup, a build that failed) is answered with its own status instead of
// a 200 cut short; then it streams the rest. Bytes go through dst, which
// is w or a wrapper of it (a byte counter).
func (s *Server) sendAfterFirstChunk(w http.ResponseWriter, r *http.Request, dst io.Writer, body io.Reader) {
	buf := make([]byte, 32<<10)
	n, err := io.ReadFull(body, buf)
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		s.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusOK)
	if _, werr := dst.Write(buf[:n]); werr != nil {
		s.abort(r, werr)
	}
	if err != nil { // the whole body fitted in buf
		return
	}
	if _, err := io.CopyBuffer(dst, body, buf); err != nil {
		s.abort(r, err)
	}
}
