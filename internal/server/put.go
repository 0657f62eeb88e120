package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/gorilla/mux"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/bos55/concordia/internal/auth"
	"github.com/bos55/concordia/internal/compress"
	"github.com/bos55/concordia/internal/limits"
	"github.com/bos55/concordia/internal/store"
)

// Uploads is what Options.Upload is: the store that takes uploads and the
// tokens allowed to write. Its Store gets the upload routes (this file)
// and the admin API of whatever else it can do (admin.go: store.Pinner,
// store.Collector, store.Verifier, store.Forgetter). Uploads with no Tokens
// (here or in Options) installs the routes but refuses every write with
// 401, so a missing tokens file never means an open cache.
//
// Who may do what (auth.Perm): uploads need write; pinning needs pin, and
// unpinning needs pin and the pin to be the token's own (same token name)
// unless the token has admin; garbage collection, verify/repair, the pin
// list and forgetting a collected path's tombstone need admin.
type Uploads struct {
	// Store takes the uploads; it is also one of Options.Stores, where
	// its place decides whether it answers before the others.
	Store  store.Uploader
	Tokens *auth.Tokens
	// MaxNARSize bounds one NAR upload's request body (default: what
	// the server's limits allow, limits.Limits.UploadBody).
	MaxNARSize int64
}

// Request body limit for the small documents (the store bounds them again
// after decoding a Content-Encoding). Narinfos and logs have their own
// (limits.max_narinfo_size, limits.max_log_size).
const maxDocBody = 64 << 20

// statusError gives an error its own status (Status honours HTTPStatus).
type statusError struct {
	code int
	err  error
}

func (e *statusError) Error() string   { return e.err.Error() }
func (e *statusError) Unwrap() error   { return e.err }
func (e *statusError) HTTPStatus() int { return e.code }

// metricsSource is a store that exports its own metrics (the upload
// store's counters and sizes), registered with the server's.
type metricsSource interface {
	Collectors() []prometheus.Collector
}

// putRoutes installs the upload routes (PUT of NARs, narinfos, listings,
// logs, realisations, and the HEAD/GET of uploaded /nar/<filehash> files)
// and the admin API. Called from routes() when Options.Upload is set.
func (s *Server) putRoutes(r *mux.Router) {
	u := *s.opts.Upload
	if u.MaxNARSize == 0 {
		u.MaxNARSize = s.limits.UploadBody()
	}
	toks := u.Tokens
	if toks == nil {
		toks = s.opts.Tokens
	}
	if toks == nil {
		s.log.Warn("uploads are enabled without a tokens file: every write is refused (set [upload] tokens_file)")
	}
	if m, ok := u.Store.(metricsSource); ok {
		for _, c := range m.Collectors() {
			if err := s.reg.Register(c); err != nil {
				s.log.Warn("upload metric not registered", "err", err)
			}
		}
	}
	if toks != nil {
		s.isWriter = func(r *http.Request) bool {
			_, err := toks.Authorize(r, auth.Write)
			return err == nil
		}
	}
	h := &putHandler{s: s, u: u.Store, maxNAR: u.MaxNARSize, tokens: toks}
	put := http.MethodPut
	write := func(f func(w http.ResponseWriter, r *http.Request) error) http.HandlerFunc {
		return h.guard(auth.Write, f)
	}
	r.HandleFunc("/nix-cache-info", write(h.cacheInfo)).Methods(put).Name("put-cache-info")
	r.HandleFunc("/nar/{name}", write(h.nar)).Methods(put).Name("put-nar")
	r.HandleFunc("/nar/{name}", h.getNAR).Methods(http.MethodGet, http.MethodHead).Name("upload-nar")
	r.HandleFunc("/{hash}.narinfo", write(h.narinfo)).Methods(put).Name("put-narinfo")
	r.HandleFunc("/{hash}.ls", write(h.listing)).Methods(put).Name("put-ls")
	r.HandleFunc("/log/{drv}", write(h.log)).Methods(put).Name("put-log")
	r.HandleFunc("/realisations/{id}.doi", write(h.realisation)).Methods(put).Name("put-realisation")
	r.HandleFunc("/build-trace-v2/{drv}/{output}.doi", write(h.buildTrace)).Methods(put).Name("put-build-trace")
	r.HandleFunc("/debuginfo/{id}", write(h.debugInfo)).Methods(put).Name("put-debuginfo")
	// Only the upload store keeps debuginfo documents, so they are read
	// where uploads are taken.
	r.HandleFunc("/debuginfo/{id}", h.s.handleDebugInfo).Methods(http.MethodGet, http.MethodHead).Name("debuginfo")
	h.adminRoutes(r)
}

type putHandler struct {
	s      *Server
	u      store.Uploader
	maxNAR int64
	tokens *auth.Tokens
}

// caller is the token a request that passed guard was made with.
type caller struct {
	name string
	perm auth.Perm
}

type callerKey struct{}

func callerOf(r *http.Request) caller {
	c, _ := r.Context().Value(callerKey{}).(caller)
	return c
}

// guard runs f only for requests whose token has need, and answers f's
// error. Anything else is answered 401/403 at once, before a byte of the
// body is read, and the connection ends after that answer (refuseBody): a
// client without the permission cannot hold a connection or a goroutine
// by sending its body slowly.
func (h *putHandler) guard(need auth.Perm, f func(w http.ResponseWriter, r *http.Request) error) http.HandlerFunc {
	return h.guardAny(f, need)
}

// guardAny is guard for requests whose token has any one of needs.
func (h *putHandler) guardAny(f func(w http.ResponseWriter, r *http.Request) error, needs ...auth.Perm) http.HandlerFunc {
	var words []string
	for _, n := range needs {
		words = append(words, n.String())
	}
	want := strings.Join(words, " or ")
	return func(w http.ResponseWriter, r *http.Request) {
		var c caller
		err := auth.ErrNoCredentials
		if h.tokens != nil {
			c.name, c.perm, err = h.tokens.Authenticate(r)
			if err == nil && !slices.ContainsFunc(needs, c.perm.Has) {
				err = fmt.Errorf("%w: %q has %s, needs %s", auth.ErrForbidden, c.name, c.perm, want)
			}
		}
		if err != nil {
			if c.name != "" {
				// A known token reaching past its permissions.
				h.s.logger(r).Warn("request refused", "method", r.Method, "path", r.URL.Path, "token", c.name, "err", err)
			}
			refuseBody(w, r)
			h.s.fail(w, r, err)
			return
		}
		r = r.WithContext(context.WithValue(r.Context(), callerKey{}, c))
		who := c.name
		if err := f(w, r); err != nil {
			if code := Status(err); code < 500 {
				// A conflict is a token trying to change what the
				// cache serves: worth an operator's attention.
				level := slog.LevelInfo
				if code == http.StatusConflict {
					level = slog.LevelWarn
				}
				h.s.logger(r).Log(r.Context(), level, "upload refused", "path", r.URL.Path, "token", who, "err", err)
			}
			h.s.fail(w, r, err)
		}
	}
}

// contentEncodings are the Content-Encoding values a PUT body may have:
// Nix 2.32 and later compress narinfo, .ls and log bodies with the
// narinfo-compression, ls-compression and log-compression methods and
// send the method's name as the Content-Encoding
// (http-binary-cache-store.cc 2.32.0:149-162, 2.34.0:158-170), so the
// values are Nix's compression method names (compression-algo.hh
// 2.34.0:10-23), "none" included, with HTTP's "identity" and "x-gzip".
// Each is decoded with the bounded decoders of internal/compress. Nix's
// "compress", "grzip", "lrzip" and "lzop" have no decoder here (415).
var contentEncodings = map[string]string{
	"": "none", "identity": "none", "none": "none",
	"zstd": "zstd", "xz": "xz", "gzip": "gzip", "x-gzip": "gzip", "bzip2": "bzip2",
	"br": "br", "lz4": "lz4", "lzip": "lzip", "lzma": "lzma",
}

// body returns the request body, limited to max bytes and decoded per
// its Content-Encoding (see contentEncodings).
func (h *putHandler) body(w http.ResponseWriter, r *http.Request, max int64) (io.ReadCloser, error) {
	limited := http.MaxBytesReader(w, r.Body, max)
	enc := strings.ToLower(strings.TrimSpace(r.Header.Get("Content-Encoding")))
	codec, ok := contentEncodings[enc]
	if !ok {
		return nil, &statusError{http.StatusUnsupportedMediaType,
			fmt.Errorf("Content-Encoding %q is not supported (use zstd, br, gzip, xz, bzip2, lz4, lzip, lzma or none)", enc)}
	}
	if codec == "none" {
		return limited, nil
	}
	dec, err := compress.NewReaderLimits(limited, codec, h.s.limits.Decode(0))
	if err != nil {
		return nil, fmt.Errorf("%w: Content-Encoding %s: %v", store.ErrInvalid, enc, err)
	}
	return dec, nil
}

// bodyErr turns a body over its limit into 413.
func bodyErr(err error) error {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return &statusError{http.StatusRequestEntityTooLarge, fmt.Errorf("request body larger than %d bytes", mbe.Limit)}
	}
	return err
}

func created(w http.ResponseWriter) error {
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	return nil
}

// cacheInfo accepts the nix-cache-info nix copy PUTs when GET said 404
// (which never happens here, but a client may PUT anyway): ours stands.
func (h *putHandler) cacheInfo(w http.ResponseWriter, r *http.Request) error {
	io.Copy(io.Discard, io.LimitReader(r.Body, 64<<10))
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (h *putHandler) nar(w http.ResponseWriter, r *http.Request) error {
	name := mux.Vars(r)["name"]
	if _, _, err := store.ParseNARName(name); err != nil {
		io.Copy(io.Discard, io.LimitReader(r.Body, 1<<20))
		return err
	}
	body, err := h.body(w, r, h.maxNAR)
	if err != nil {
		return err
	}
	defer body.Close()
	start := time.Now()
	info, err := h.u.PutNAR(r.Context(), name, body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) && mbe.Limit == h.maxNAR {
			return &limits.Error{Key: limits.KeyNARSize, Max: h.s.limits.MaxNARSize, Size: true,
				Err: fmt.Errorf("NAR upload body larger than %d bytes", mbe.Limit)}
		}
		return bodyErr(h.s.limits.Check(err))
	}
	h.s.logger(r).Debug("NAR uploaded", "name", info.Name, "bytes", info.FileSize, "nar", info.NarSize,
		"existed", info.Existed, "took", time.Since(start))
	return created(w)
}

// getNAR answers HEAD /nar/<filehash>.nar.<ext> for every NAR received,
// pending ones included (nix copy HEADs before PUTting and skips the
// upload on 200), and GET only for NARs a narinfo has claimed.
func (h *putHandler) getNAR(w http.ResponseWriter, r *http.Request) {
	if !h.s.authorize(w, r) {
		return
	}
	name := mux.Vars(r)["name"]
	if _, _, err := store.ParseNARName(name); err != nil {
		h.s.fail(w, r, store.ErrNotFound)
		return
	}
	if r.Method == http.MethodHead {
		ok, err := h.u.HasNAR(r.Context(), name)
		if err != nil {
			h.s.fail(w, r, err)
			return
		}
		if !ok {
			h.s.fail(w, r, store.ErrNotFound)
			return
		}
		w.Header().Set("Content-Type", narContentType)
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusOK)
		return
	}
	f, _, err := h.u.OpenBlob(r.Context(), name)
	if err != nil {
		h.s.fail(w, r, err)
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", narContentType)
	w.Header()["Cache-Control"] = h.s.ccForever // "private" on a private cache
	http.ServeContent(w, r, "", time.Time{}, f)
}

func (h *putHandler) narinfo(w http.ResponseWriter, r *http.Request) error {
	hash := mux.Vars(r)["hash"]
	max := h.s.limits.MaxNarinfoSize
	body, err := h.body(w, r, max)
	if err != nil {
		return err
	}
	defer body.Close()
	if err := h.u.PutNarInfo(r.Context(), hash, body); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) && mbe.Limit == max {
			return h.s.limits.NarinfoTooLarge(fmt.Errorf("narinfo upload body larger than %d bytes", max))
		}
		return bodyErr(err)
	}
	// The read side may hold this hash's narinfo from another store or
	// an older upload; the new one must be served from now on.
	h.s.narinfos.remove(hash)
	return created(w)
}

func (h *putHandler) listing(w http.ResponseWriter, r *http.Request) error {
	body, err := h.body(w, r, maxDocBody)
	if err != nil {
		return err
	}
	defer body.Close()
	if err := h.u.PutListing(r.Context(), mux.Vars(r)["hash"], body); err != nil {
		return bodyErr(err)
	}
	return created(w)
}

func (h *putHandler) log(w http.ResponseWriter, r *http.Request) error {
	// The store counts the log's bytes after any Content-Encoding; on
	// the wire it cannot be much larger than that.
	max := h.s.limits.MaxLogSize + h.s.limits.MaxLogSize/64 + 64<<10
	body, err := h.body(w, r, max)
	if err != nil {
		return err
	}
	defer body.Close()
	if err := h.u.PutLog(r.Context(), mux.Vars(r)["drv"], body); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) && mbe.Limit == max {
			return h.s.limits.LogTooLarge(fmt.Errorf("build log upload body larger than %d bytes", max))
		}
		return bodyErr(err)
	}
	return created(w)
}

func (h *putHandler) realisation(w http.ResponseWriter, r *http.Request) error {
	body, err := h.body(w, r, maxDocBody)
	if err != nil {
		return err
	}
	defer body.Close()
	if err := h.u.PutRealisation(r.Context(), mux.Vars(r)["id"], body); err != nil {
		return bodyErr(err)
	}
	return created(w)
}

func (h *putHandler) buildTrace(w http.ResponseWriter, r *http.Request) error {
	body, err := h.body(w, r, maxDocBody)
	if err != nil {
		return err
	}
	defer body.Close()
	v := mux.Vars(r)
	if err := h.u.PutBuildTrace(r.Context(), v["drv"], v["output"], body); err != nil {
		return bodyErr(err)
	}
	return created(w)
}
