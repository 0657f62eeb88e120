package server

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/mux"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/bos55/concordia/internal/store"
)

const narContentType = "application/x-nix-nar"

// narRequest is a parsed NAR URL.
type narRequest struct {
	out     string // 32-char hash part of the store path
	narHash string // 52-char nix32 NAR hash, "" for nix-serve's legacy form
	ext     string // "" for the uncompressed NAR, else "zst", "xz", ...
}

// parseNARPath understands, below /nar/:
//
//	<out>-<narhash>.nar[.<ext>]  Concordia; nix-serve (without ext)
//	<narhash>.nar?hash=<out>     Harmonia
//	<out>.nar                    nix-serve's legacy form
//
// Anything else is not a read-side NAR URL (the upload side owns
// /nar/<filehash>.nar.<ext>).
func parseNARPath(r *http.Request) (narRequest, bool) {
	rest, ok := strings.CutPrefix(r.URL.Path, "/nar/")
	if !ok || len(rest) > 128 {
		return narRequest{}, false
	}
	name, ext, ok := strings.Cut(rest, ".nar")
	if !ok {
		return narRequest{}, false
	}
	if ext != "" {
		if ext[0] != '.' || len(ext) < 3 || len(ext) > 6 || !isLowerAlnum(ext[1:]) {
			return narRequest{}, false
		}
		ext = ext[1:]
	}
	switch {
	case len(name) == 32+1+52 && name[32] == '-' && validHashPart(name[:32]) && validNix32(name[33:]):
		return narRequest{out: name[:32], narHash: name[33:], ext: ext}, true
	case len(name) == 52 && ext == "" && validNix32(name):
		out := r.URL.Query().Get("hash")
		if !validHashPart(out) {
			return narRequest{}, false
		}
		return narRequest{out: out, narHash: name}, true
	case len(name) == 32 && ext == "" && validHashPart(name):
		return narRequest{out: name}, true
	}
	return narRequest{}, false
}

func isLowerAlnum(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

func (s *Server) matchNAR(r *http.Request, _ *mux.RouteMatch) bool {
	_, ok := parseNARPath(r)
	return ok
}

// handleNAR serves a NAR in the form the URL asks for.
func (s *Server) handleNAR(w http.ResponseWriter, r *http.Request) {
	if !s.authorize(w, r) {
		return
	}
	req, _ := parseNARPath(r)
	ctx := r.Context()
	info, idx, err := s.lookup(ctx, req.out)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if req.narHash != "" && narHash32(info.NarHash) != req.narHash {
		// The path was re-created with other contents since the
		// narinfo was fetched: the client must not get these bytes.
		s.fail(w, r, fmt.Errorf("nar hash of %s changed: %w", req.out, store.ErrNotFound))
		return
	}
	st := s.stores[idx]
	s.metrics.narRequest(idx == s.upstreamIdx)
	switch {
	case req.ext == "":
		if s.opts.NegotiateEncoding && r.Header.Get("Range") == "" && acceptsZstd(r.Header.Get("Accept-Encoding")) {
			if s.opts.Cache != nil {
				s.serveZstd(w, r, st, info, true)
				return
			}
			select {
			case s.zsem <- struct{}{}:
				defer func() { <-s.zsem }()
				s.serveZstd(w, r, st, info, true)
				return
			default: // every encoder busy: identity is an acceptable answer
			}
		}
		s.serveIdentity(w, r, st, info)
	default:
		if fn, ok := st.(store.FileNAR); ok && s.serveFileNAR(w, r, fn, info, req.ext, idx == s.upstreamIdx) {
			return
		}
		if req.ext == "zst" {
			s.serveZstd(w, r, st, info, false)
			return
		}
		s.fail(w, r, fmt.Errorf("no .nar.%s for %s: %w", req.ext, req.out, store.ErrNotFound))
	}
}

// serveFileNAR serves a store's ready-made file when its compression is
// the one asked for; it reports whether it answered. upstream says the
// store is the pull-through one, whose file is an upstream download.
func (s *Server) serveFileNAR(w http.ResponseWriter, r *http.Request, fn store.FileNAR, info *store.PathInfo, ext string, upstream bool) bool {
	comp, _, size, ok, err := statFileNAR(r.Context(), fn, info)
	if err != nil || !ok {
		if err != nil {
			s.fail(w, r, err)
		}
		return err != nil
	}
	// Checked before the file is opened: opening a pull-through path's
	// file starts its download, which a URL of another form (404 or
	// another encoding) must not.
	if narExt(comp) != ".nar."+ext {
		return false
	}
	h := w.Header()
	h.Set("Content-Type", narContentType)
	h.Set("ETag", `"`+narHash32(info.NarHash)+"-"+ext+`"`)
	h["Cache-Control"] = s.ccForever
	if upstream && r.Method == http.MethodHead && size > 0 {
		// A HEAD reads nothing, so it starts no download either: the
		// headers http.ServeContent would send, from the description.
		h.Set("Accept-Ranges", "bytes")
		h.Set("Content-Length", strconv.FormatInt(size, 10))
		w.WriteHeader(http.StatusOK)
		return true
	}
	if rd, ok := fn.(store.NARRedirector); ok && !upstream {
		if to, err := rd.NARRedirect(r.Context(), info); err != nil || to != "" {
			if err != nil {
				s.fail(w, r, err)
				return true
			}
			// The bucket's URL expires: the redirect is not cached.
			delete(h, "Cache-Control")
			h.Del("Content-Type")
			h.Del("ETag")
			http.Redirect(w, r, to, http.StatusFound)
			return true
		}
	}
	f, _, _, _, err := fn.OpenFileNAR(r.Context(), info)
	if err != nil {
		for _, k := range []string{"Content-Type", "ETag", "Cache-Control"} {
			h.Del(k)
		}
		s.fail(w, r, err)
		return true
	}
	defer f.Close()
	s.metrics.activeStreams.Inc()
	defer s.metrics.activeStreams.Dec()
	http.ServeContent(&countingWriter{ResponseWriter: w, c: s.narCounter(comp)}, r, "", time.Time{}, f)
	if fe, ok := f.(interface{ Err() error }); ok && fe.Err() != nil {
		// A file that failed as it was read (a pull-through download
		// that broke off or did not verify): the client must see a
		// failed transfer, not a body short of its Content-Length.
		s.abort(r, fe.Err())
	}
	return true
}

func (s *Server) narCounter(encoding string) prometheus.Counter {
	return s.metrics.narBytes.WithLabelValues(encoding)
}

// abort ends a response whose headers (and some body) are out: the
// connection is cut so the client sees a failed transfer, never a clean
// short 200.
func (s *Server) abort(r *http.Request, err error) {
	if r.Context().Err() != nil {
		s.logger(r).Debug("client went away mid-stream", "path", r.URL.Path)
	} else {
		s.logger(r).Error("aborting response mid-stream", "path", r.URL.Path, "err", err)
	}
	panic(http.ErrAbortHandler)
}

// countingWriter counts body bytes into a metric. It keeps ReadFrom, so
// a compressed cache file (which exposes SyscallConn) still goes out by
// sendfile through http.ServeContent.
type countingWriter struct {
	http.ResponseWriter
	c prometheus.Counter
}

func (cw *countingWriter) Write(p []byte) (int, error) {
	n, err := cw.ResponseWriter.Write(p)
	cw.c.Add(float64(n))
	return n, err
}

func (cw *countingWriter) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := cw.ResponseWriter.(io.ReaderFrom); ok {
		n, err := rf.ReadFrom(r)
		cw.c.Add(float64(n))
		return n, err
	}
	return io.Copy(struct{ io.Writer }{cw}, r)
}
