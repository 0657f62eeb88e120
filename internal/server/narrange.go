package server

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bos55/concordia/internal/store"
)

// The identity NAR (nar/<hash>.nar), streamed from the store with byte
// ranges: what Nix resumes a download with, and what must never cost an
// anonymous client's range more than it is worth.

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
