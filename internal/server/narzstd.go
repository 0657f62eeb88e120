package server

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bos55/concordia/internal/compress"
	"github.com/bos55/concordia/internal/store"
)

// The zstd NAR (nar/<hash>.nar.zst, or Content-Encoding: zstd of the
// identity URL): compressed once into the cache where there is one, on
// the fly otherwise, with the store's dump on its own goroutine.

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
	counter := s.metrics.narBytes.WithLabelValues(CompressionZstd)
	s.metrics.activeStreams.Inc()
	defer s.metrics.activeStreams.Dec()
	if s.opts.Cache == nil {
		s.zstdLive(w, r, st, info, encoded, counter)
		return
	}
	s.zstdCached(w, r, st, info, encoded, counter)
}

// zstdLive compresses the NAR for this response alone (no cache).
func (s *Server) zstdLive(w http.ResponseWriter, r *http.Request, st store.Store, info *store.PathInfo, encoded bool, counter prometheus.Counter) {
	ctx := r.Context()
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
}

// zstdCached serves the NAR from the compression cache, compressing it
// into the cache first when no client asked for it before.
func (s *Server) zstdCached(w http.ResponseWriter, r *http.Request, st store.Store, info *store.PathInfo, encoded bool, counter prometheus.Counter) {
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
	e, err := s.opts.Cache.Get(ctx, narHash32(info.NarHash), produce)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	defer e.Close()
	h := w.Header()
	if size, known := e.Size(); e.Complete() && known {
		if !encoded {
			h.Set("ETag", `"`+narHash32(info.NarHash)+`-zst"`)
			http.ServeContent(&countingWriter{ResponseWriter: w, c: counter}, r, "", time.Time{}, e)
			return
		}
		h.Set("Content-Length", strconv.FormatInt(size, 10))
	}
	// A store error that happens before any byte (a path gone since the
	// lookup) is a clean 404 rather than a 200 cut short.
	s.sendAfterFirstChunk(w, r, &countingWriter{ResponseWriter: w, c: counter}, e)
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
