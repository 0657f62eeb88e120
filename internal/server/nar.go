package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/mux"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/bos55/concordia/internal/compress"
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
		if fn, ok := st.(store.FileNAR); ok && s.serveFileNAR(w, r, fn, info, req.ext) {
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
// the one asked for; it reports whether it answered.
func (s *Server) serveFileNAR(w http.ResponseWriter, r *http.Request, fn store.FileNAR, info *store.PathInfo, ext string) bool {
	f, comp, _, _, err := fn.OpenFileNAR(r.Context(), info)
	if err != nil {
		s.fail(w, r, err)
		return true
	}
	defer f.Close()
	if narExt(comp) != ".nar."+ext {
		return false
	}
	h := w.Header()
	h.Set("Content-Type", narContentType)
	h.Set("ETag", `"`+narHash32(info.NarHash)+"-"+ext+`"`)
	h["Cache-Control"] = s.ccForever
	s.metrics.activeStreams.Inc()
	defer s.metrics.activeStreams.Dec()
	http.ServeContent(&countingWriter{ResponseWriter: w, c: s.narCounter(comp)}, r, "", time.Time{}, f)
	return true
}

func (s *Server) narCounter(encoding string) prometheus.Counter {
	return s.metrics.narBytes.WithLabelValues(encoding)
}

// serveIdentity streams the uncompressed NAR from the store, with byte
// ranges (the NAR size is known from the path info).
//
// A range must not cost more than it is worth: Nix resumes a dropped
// download with "Range: bytes=N-" (N what it has), but an anonymous
// "bytes=-1" asks for one byte of a NAR the store would have to produce
// whole. So a range starting at N > 0 is served by the store from N when
// it can start there cheaply (store.RangeNAR: the local store skips the
// contents before N unread, an uncompressed upload seeks), else by
// producing and dropping the first N bytes only when they are no more than
// the range itself (or a few MiB), and otherwise the Range is ignored and
// the whole NAR sent with 200, as RFC 9110 allows. Every answer then
// costs at most twice what the client must take, and the resumption real
// clients do is always served: their identity URLs are the local store's.
func (s *Server) serveIdentity(w http.ResponseWriter, r *http.Request, st store.Store, info *store.PathInfo) {
	size := int64(info.NarSize)
	etag := `"` + narHash32(info.NarHash) + `"`
	h := w.Header()
	h.Set("Content-Type", narContentType)
	h.Set("Accept-Ranges", "bytes")
	h.Set("ETag", etag)
	h["Cache-Control"] = s.ccForever
	if s.opts.NegotiateEncoding {
		h.Set("Vary", "Accept-Encoding")
	}
	start, length, status := int64(0), size, http.StatusOK
	rn, seekable := st.(store.RangeNAR)
	if rh := r.Header.Get("Range"); rh != "" && ifRangeMatches(r, etag) {
		rs, rl, ok, satisfiable := parseRange(rh, size)
		if !satisfiable {
			h.Set("Content-Range", "bytes */"+strconv.FormatInt(size, 10))
			h.Del("ETag")
			http.Error(w, "range not satisfiable", http.StatusRequestedRangeNotSatisfiable)
			return
		}
		if ok && (seekable || rs <= max(rl, maxRangeSkip)) {
			start, length, status = rs, rl, http.StatusPartialContent
			h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", rs, rs+rl-1, size))
		}
	}
	h.Set("Content-Length", strconv.FormatInt(length, 10))
	if r.Method == http.MethodHead {
		w.WriteHeader(status)
		return
	}
	s.metrics.activeStreams.Inc()
	defer s.metrics.activeStreams.Dec()
	nw := &narWriter{w: w, status: status, size: size, skip: start, remain: length,
		bytes: s.metrics.narBytes.WithLabelValues(CompressionNone), source: s.metrics.narSource}
	var err error
	if start > 0 && seekable {
		nw.skip, nw.total = 0, start
		err = rn.NARFrom(r.Context(), info, start, nw)
		if errors.Is(err, errors.ErrUnsupported) && !nw.started && nw.total == start {
			// Not from this path after all (a compressed upload):
			// produce and drop, or send it all, as for other stores.
			if start > max(length, maxRangeSkip) {
				start, length, nw.status = 0, size, http.StatusOK
				h.Del("Content-Range")
				h.Set("Content-Length", strconv.FormatInt(size, 10))
			}
			nw.skip, nw.remain, nw.total = start, length, 0
			err = st.NAR(r.Context(), info, nw)
		}
	} else {
		err = st.NAR(r.Context(), info, nw)
	}
	if nw.stopped {
		return // the range was sent; the rest of the dump was cut short on purpose
	}
	if err == nil && nw.remain != 0 {
		err = fmt.Errorf("store sent %d of %d NAR bytes for %s", nw.total, size, info.StorePath)
	}
	if err != nil {
		if !nw.started {
			s.fail(w, r, err)
			return
		}
		s.abort(r, err)
	}
}

// maxRangeSkip is how many bytes before a range a store without
// RangeNAR may produce and drop to serve it, however short the range.
const maxRangeSkip = 4 << 20

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

var errRangeDone = errors.New("range sent")
var errNARTooLong = errors.New("store sent more bytes than the NAR size")

// narWriter sits between the store's NAR dump and the response: it sends
// the headers on the first byte (so an error before it can still be a
// clean 404/500), drops the bytes before a range and stops the dump after
// it, and refuses a NAR longer than its recorded size.
type narWriter struct {
	w       http.ResponseWriter
	status  int
	size    int64 // the whole NAR
	skip    int64 // bytes still to drop before the range
	remain  int64 // bytes still to send
	total   int64 // bytes the store produced (from the range start with RangeNAR)
	started bool
	stopped bool
	bytes   prometheus.Counter
	source  prometheus.Counter
}

func (nw *narWriter) Write(p []byte) (int, error) {
	n := len(p)
	nw.total += int64(n)
	nw.source.Add(float64(n))
	if nw.total > nw.size {
		return 0, errNARTooLong
	}
	if nw.skip > 0 {
		if int64(len(p)) <= nw.skip {
			nw.skip -= int64(len(p))
			return n, nil
		}
		p = p[nw.skip:]
		nw.skip = 0
	}
	if int64(len(p)) > nw.remain {
		p = p[:nw.remain]
	}
	if len(p) > 0 {
		if !nw.started {
			nw.started = true
			nw.w.WriteHeader(nw.status)
		}
		m, err := nw.w.Write(p)
		nw.remain -= int64(m)
		nw.bytes.Add(float64(m))
		if err != nil {
			return 0, err
		}
	}
	if nw.remain == 0 && nw.total < nw.size {
		nw.stopped = true
		return 0, errRangeDone
	}
	return n, nil
}

// serveZstd sends the zstd-compressed NAR: as the body of a .nar.zst URL,
// or (encoded) as Content-Encoding: zstd of the identity URL. Complete
// cache files are served with ranges for .nar.zst.
func (s *Server) serveZstd(w http.ResponseWriter, r *http.Request, st store.Store, info *store.PathInfo, encoded bool) {
	h := w.Header()
	h.Set("Content-Type", narContentType)
	h["Cache-Control"] = s.ccForever
	if encoded {
		h.Set("Content-Encoding", "zstd")
		h.Set("Vary", "Accept-Encoding")
	}
	if r.Method == http.MethodHead {
		w.WriteHeader(http.StatusOK)
		return
	}
	ctx := r.Context()
	// The cache runs produce on its own goroutine, detached from this
	// request; it takes a compression slot too, so cold compressions of
	// many different NARs queue instead of each holding an encoder (CPU
	// bound anyway). A slot is held only while compressing, never while
	// a slow client reads.
	produce := func(ctx context.Context, w io.Writer) error {
		select {
		case s.zsem <- struct{}{}:
			defer func() { <-s.zsem }()
		case <-ctx.Done():
			return ctx.Err()
		}
		return pipelinedNAR(ctx, st, info, w)
	}
	counter := s.metrics.narBytes.WithLabelValues(CompressionZstd)
	s.metrics.activeStreams.Inc()
	defer s.metrics.activeStreams.Dec()
	if s.opts.Cache == nil {
		if !encoded { // the caller of the encoded form holds a slot already
			select {
			case s.zsem <- struct{}{}:
				defer func() { <-s.zsem }()
			case <-ctx.Done():
				return
			}
		}
		lw := &lazyWriter{w: w, bytes: counter}
		enc, err := compress.NewEncoder(lw, s.opts.ZstdLevel)
		if err == nil {
			err = pipelinedNAR(ctx, st, info, enc)
			if err == nil {
				err = enc.Close()
			}
		}
		if err != nil {
			if !lw.started {
				s.fail(w, r, err)
				return
			}
			s.abort(r, err)
		}
		return
	}
	e, err := s.opts.Cache.Get(ctx, narHash32(info.NarHash), produce)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	defer e.Close()
	if size, known := e.Size(); e.Complete() && known {
		if !encoded {
			h.Set("ETag", `"`+narHash32(info.NarHash)+`-zst"`)
			http.ServeContent(&countingWriter{ResponseWriter: w, c: counter}, r, "", time.Time{}, e)
			return
		}
		h.Set("Content-Length", strconv.FormatInt(size, 10))
	}
	// Read the first chunk before answering, so a store error that
	// happens before any byte (a path gone since the lookup) is a clean
	// 404 rather than a 200 cut short.
	buf := make([]byte, 32<<10)
	n, err := io.ReadFull(e, buf)
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		s.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusOK)
	if _, werr := w.Write(buf[:n]); werr != nil {
		s.abort(r, werr)
	}
	counter.Add(float64(n))
	if err != nil { // the whole entry fitted in buf
		return
	}
	if _, err := io.CopyBuffer(&countingWriter{ResponseWriter: w, c: counter}, e, buf); err != nil {
		s.abort(r, err)
	}
}

// pipelinedNAR runs the store's NAR dump on its own goroutine, feeding w
// through a pipe: reading files for the next chunk overlaps compressing
// the previous one, so a cold compression uses a second core for the
// dump instead of alternating between the two on one.
func pipelinedNAR(ctx context.Context, st store.Store, info *store.PathInfo, w io.Writer) error {
	derr, cerr := pipeNAR(ctx, st, info, func(r io.Reader) error {
		_, err := io.Copy(w, r)
		return err
	})
	if derr != nil {
		return derr // the store's error first: it decides 404 versus 500
	}
	return cerr
}

// pipeNAR runs the store's NAR dump of info on its own goroutine and
// consume on the other end of a pipe. When consume returns, the pipe is
// closed and the dump cancelled (it may stop early: consume had what it
// needed, or failed), and both errors are returned.
func pipeNAR(ctx context.Context, st store.Store, info *store.PathInfo, consume func(io.Reader) error) (dumpErr, consumeErr error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pr, pw := io.Pipe()
	dumped := make(chan error, 1)
	go func() {
		err := st.NAR(ctx, info, pw)
		pw.CloseWithError(err)
		dumped <- err
	}()
	consumeErr = consume(pr)
	pr.CloseWithError(errors.New("consumer done")) // unblocks the dump
	cancel()
	return <-dumped, consumeErr
}

// lazyWriter sends the 200 header on the first byte.
type lazyWriter struct {
	w       http.ResponseWriter
	started bool
	bytes   prometheus.Counter
}

func (lw *lazyWriter) Write(p []byte) (int, error) {
	if !lw.started {
		lw.started = true
		lw.w.WriteHeader(http.StatusOK)
	}
	n, err := lw.w.Write(p)
	lw.bytes.Add(float64(n))
	return n, err
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

// acceptsZstd reports whether an Accept-Encoding value lists zstd with a
// non-zero quality. "*" is not taken as zstd: only a client that names
// the codec gets it.
func acceptsZstd(v string) bool { return acceptsCodec(v, "zstd") }

// acceptsCodec reports whether an Accept-Encoding value names codec with
// a non-zero quality.
func acceptsCodec(v, codec string) bool {
	for v != "" {
		var part string
		part, v, _ = strings.Cut(v, ",")
		name, params, _ := strings.Cut(part, ";")
		if !strings.EqualFold(strings.TrimSpace(name), codec) {
			continue
		}
		for params != "" {
			var p string
			p, params, _ = strings.Cut(params, ";")
			k, val, _ := strings.Cut(strings.TrimSpace(p), "=")
			if strings.EqualFold(strings.TrimSpace(k), "q") {
				q, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
				return err == nil && q > 0
			}
		}
		return true
	}
	return false
}

// parseRange parses a single-range "bytes=" header against size. ok is
// false when the header is to be ignored (malformed or several ranges:
// the full body is sent, as RFC 9110 allows); satisfiable is false for a
// well-formed range that lies outside the NAR (416).
func parseRange(v string, size int64) (start, length int64, ok, satisfiable bool) {
	spec, found := strings.CutPrefix(v, "bytes=")
	if !found || strings.Contains(spec, ",") {
		return 0, 0, false, true
	}
	first, last, found := strings.Cut(strings.TrimSpace(spec), "-")
	if !found {
		return 0, 0, false, true
	}
	if first == "" { // suffix: the last N bytes
		n, err := strconv.ParseInt(last, 10, 64)
		if err != nil || n < 0 {
			return 0, 0, false, true
		}
		if n == 0 || size == 0 {
			return 0, 0, false, false
		}
		if n > size {
			n = size
		}
		return size - n, n, true, true
	}
	a, err := strconv.ParseInt(first, 10, 64)
	if err != nil || a < 0 {
		return 0, 0, false, true
	}
	if a >= size {
		return 0, 0, false, false
	}
	b := size - 1
	if last != "" {
		b, err = strconv.ParseInt(last, 10, 64)
		if err != nil || b < a {
			return 0, 0, false, true
		}
		if b >= size {
			b = size - 1
		}
	}
	return a, b - a + 1, true, true
}

// ifRangeMatches implements If-Range for our strong ETags; a date (or a
// different tag) means the client's partial copy may be of something
// else, so the full body is sent.
func ifRangeMatches(r *http.Request, etag string) bool {
	ir := r.Header.Get("If-Range")
	return ir == "" || ir == etag
}
