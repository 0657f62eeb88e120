package server

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/gorilla/mux"

	"github.com/bos55/concordia/internal/compress"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/pkg/narinfo"
)

func (s *Server) handleCacheInfo(w http.ResponseWriter, r *http.Request) {
	if !s.authorize(w, r) {
		return
	}
	h := w.Header()
	h["Content-Type"] = hdrCacheInfoType
	h.Set("Content-Length", strconv.Itoa(len(s.cacheInfo)))
	if r.Method != http.MethodHead {
		_, _ = w.Write(s.cacheInfo)
	}
}

func (s *Server) handleVersion(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	io.WriteString(w, "concordia "+s.opts.Version+"\n")
}

// handleHealth answers 200 while the process serves; it deliberately
// does not touch the stores, so a slow disk does not flap a load
// balancer's view of a server that can still answer from memory. Below
// "OK" it reports a tokens file that cannot be read or has refused lines
// (by line number only: /health needs no credentials), which leaves
// tokens not working but the cache serving.
func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	io.WriteString(w, "OK\n")
	if s.opts.Tokens == nil {
		return
	}
	st := s.opts.Tokens.FileStatus()
	if st.Err != nil {
		io.WriteString(w, "tokens file: cannot be read, no token works (see the server log)\n")
	}
	for _, p := range st.Refused {
		fmt.Fprintf(w, "tokens file: line %d refused, its token does not work: %s\n", p.Line, p.Reason)
	}
}

// handleLog serves /log/<drv basename> from the first store with the
// Logger capability that has it. A log is streamed, never held whole: a
// store that keeps it compressed in a file (LogFiles, the upload store's
// zstd) sends that file as it is, with Content-Encoding, to a client whose
// Accept-Encoding names it, and the log decoded to the others; a bzip2 log
// (the machine's own log directory) likewise goes as it is only to clients
// that ask for bzip2 (Nix decodes that), decoded to everyone else, like
// Harmonia. The progress deadlines drop a client that stops reading.
func (s *Server) handleLog(w http.ResponseWriter, r *http.Request) {
	if !s.authorize(w, r) {
		return
	}
	drv := mux.Vars(r)["drv"]
	if _, _, err := narinfo.ParseDerivation(drv); err != nil {
		s.fail(w, r, store.ErrNotFound)
		return
	}
	ae := r.Header.Get("Accept-Encoding")
	rc, comp, served, err := s.findLog(w, r, drv, ae)
	if served {
		return
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	defer rc.Close()
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Vary", "Accept-Encoding")
	var body io.Reader = rc
	switch comp {
	case "":
	case "bz2", "bzip2":
		if acceptsCodec(ae, "bzip2") {
			h.Set("Content-Encoding", "bzip2")
			break
		}
		dec, err := compress.NewReaderLimits(rc, "bzip2", s.limits.Decode(0))
		if err != nil {
			s.fail(w, r, err)
			return
		}
		defer dec.Close()
		body = dec
	default:
		s.fail(w, r, fmt.Errorf("log %s: unknown compression %q", drv, comp))
		return
	}
	if r.Method == http.MethodHead {
		return
	}
	if _, err := io.Copy(w, body); err != nil {
		s.abort(r, err)
	}
}

// findLog asks the stores in order for the log of drv. A stored zstd
// file goes out as it is to a client that takes zstd (served reports
// that the response is done); otherwise the log is returned as the store
// streams it, in its compression comp, for the caller to send.
func (s *Server) findLog(w http.ResponseWriter, r *http.Request, drv, ae string) (rc io.ReadCloser, comp string, served bool, err error) {
	err = store.ErrNotFound
	for _, st := range s.stores {
		lg, ok := st.(store.Logger)
		if !ok {
			continue
		}
		if lf, ok := st.(store.LogFiles); ok && acceptsCodec(ae, "zstd") {
			var f store.ReadSeekCloser
			var enc string
			var size int64
			f, enc, size, err = lf.OpenLogFile(r.Context(), drv)
			if err == nil && enc == "zstd" {
				s.sendLogFile(w, r, f, size)
				return nil, "", true, nil
			}
			if err == nil {
				f.Close() // another encoding: decoded by the caller
			} else if errors.Is(err, store.ErrNotFound) {
				continue
			} else {
				return nil, "", false, err
			}
		}
		rc, comp, err = lg.BuildLog(r.Context(), drv)
		if err == nil || !errors.Is(err, store.ErrNotFound) {
			return rc, comp, false, err
		}
	}
	return nil, "", false, err
}

// sendLogFile sends a zstd log file as its own Content-Encoding, and
// closes it.
func (s *Server) sendLogFile(w http.ResponseWriter, r *http.Request, f store.ReadSeekCloser, size int64) {
	defer f.Close()
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Vary", "Accept-Encoding")
	h.Set("Content-Encoding", "zstd")
	h.Set("Content-Length", strconv.FormatInt(size, 10))
	if r.Method == http.MethodHead {
		return
	}
	if _, err := io.Copy(w, io.LimitReader(f, size)); err != nil {
		s.abort(r, err)
	}
}

// validOutputName checks a derivation output name (Nix's store path name
// characters).
func validOutputName(s string) bool {
	if s == "" || len(s) > 211 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("+-._?=", c) >= 0) {
			return false
		}
	}
	return s[0] != '.'
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// handleRealisation serves realisations/<algo>:<hash>!<output>.doi, the id
// Nix writes for a content-addressed derivation output.
func (s *Server) handleRealisation(w http.ResponseWriter, r *http.Request) {
	id := mux.Vars(r)["id"]
	hash, output, ok := strings.Cut(id, "!")
	digest, isSHA := strings.CutPrefix(hash, "sha256:")
	if !ok || !isSHA || !validOutputName(output) ||
		!(len(digest) == 64 && isHex(digest) || len(digest) == 52 && validNix32(digest)) {
		if s.authorize(w, r) {
			s.fail(w, r, store.ErrNotFound)
		}
		return
	}
	s.serveRealisation(w, r, id)
}

// handleBuildTrace serves build-trace-v2/<drv basename>/<output>.doi (Nix
// 2.35). The store's Realisations capability is asked for
// "<drv basename>!<output>".
func (s *Server) handleBuildTrace(w http.ResponseWriter, r *http.Request) {
	v := mux.Vars(r)
	drv, output := v["drv"], v["output"]
	if _, _, err := narinfo.ParseBaseName(drv); err != nil || !validOutputName(output) {
		if s.authorize(w, r) {
			s.fail(w, r, store.ErrNotFound)
		}
		return
	}
	s.serveRealisation(w, r, drv+"!"+output)
}

func (s *Server) serveRealisation(w http.ResponseWriter, r *http.Request, id string) {
	if !s.authorize(w, r) {
		return
	}
	doc, err := firstDoc(s.stores, func(rs store.Realisations) ([]byte, error) { return rs.Realisation(r.Context(), id) })
	if err != nil {
		s.fail(w, r, err)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(doc)))
	if r.Method != http.MethodHead {
		_, _ = w.Write(doc)
	}
}

// firstDoc asks the stores that have capability C, in order, for a
// document; the first answer that is not ErrNotFound wins (ErrNotFound
// when none has it).
func firstDoc[C any](stores []store.Store, get func(C) ([]byte, error)) ([]byte, error) {
	for _, st := range stores {
		c, ok := st.(C)
		if !ok {
			continue
		}
		doc, err := get(c)
		if err == nil || !errors.Is(err, store.ErrNotFound) {
			return doc, err
		}
	}
	return nil, store.ErrNotFound
}
