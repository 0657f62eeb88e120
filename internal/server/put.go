package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/gorilla/mux"

	"github.com/bos55/concordia/internal/auth"
	"github.com/bos55/concordia/internal/compress"
	"github.com/bos55/concordia/internal/limits"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/upload"
)

// Uploads is what Options.Upload must be for the upload routes to accept
// writes: the upload store and the tokens allowed to write. Options.Upload
// set to a bare store (with no Tokens here or in Options) installs the
// routes but refuses every write with 401, so a missing tokens file never
// means an open cache.
//
// Who may do what (auth.Perm): uploads need write; pinning needs pin, and
// unpinning needs pin and the pin to be the token's own (same token name)
// unless the token has admin; garbage collection, verify/repair, the pin
// list and forgetting a collected path's tombstone need admin.
type Uploads struct {
	*upload.Store
	Tokens *auth.Tokens
	// MaxNARSize bounds one NAR upload's request body (default: what
	// the server's limits allow, limits.Limits.UploadBody).
	MaxNARSize int64
}

// uploadTarget is the store behind Options.Upload, as it appears in
// Options.Stores.
func uploadTarget(u store.Store) store.Store {
	if up, ok := u.(*Uploads); ok && up.Store != nil {
		return up.Store
	}
	return u
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

// putRoutes installs the upload routes (PUT of NARs, narinfos, listings,
// logs, realisations, and the HEAD/GET of uploaded /nar/<filehash> files)
// and the pin API. Called from routes() when Options.Upload is set.
func (s *Server) putRoutes(r *mux.Router) {
	u, _ := s.upload.(*Uploads)
	if u == nil {
		if st, ok := s.upload.(*upload.Store); ok {
			u = &Uploads{Store: st}
		} else {
			s.log.Error("upload routes: Options.Upload is neither *server.Uploads nor *upload.Store; uploads disabled")
			return
		}
	}
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
	for _, c := range u.Collectors() {
		if err := s.reg.Register(c); err != nil {
			s.log.Warn("upload metric not registered", "err", err)
		}
	}
	if toks != nil {
		s.isWriter = func(r *http.Request) bool {
			_, err := toks.Authorize(r, auth.Write)
			return err == nil
		}
	}
	h := &putHandler{s: s, u: u, tokens: toks}
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
	// The pin list is an index of every deployed system: admin only.
	r.HandleFunc("/api/pins", h.guard(auth.Admin, h.listPins)).Methods(http.MethodGet).Name("pins")
	r.HandleFunc("/api/pins/{hash}", h.guard(auth.Pin, h.pin)).Methods(http.MethodPost, put).Name("pin")
	r.HandleFunc("/api/pins/{hash}", h.guard(auth.Pin, h.unpin)).Methods(http.MethodDelete).Name("unpin")
	r.HandleFunc("/api/gc", h.guard(auth.Admin, h.gc)).Methods(http.MethodPost).Name("gc")
	r.HandleFunc("/api/tombstones/{hash}", h.guard(auth.Admin, h.forget)).Methods(http.MethodDelete).Name("forget")
	r.HandleFunc("/api/verify", h.guard(auth.Admin, h.verify)).Methods(http.MethodPost).Name("verify")
}

type putHandler struct {
	s      *Server
	u      *Uploads
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
	return func(w http.ResponseWriter, r *http.Request) {
		var c caller
		err := auth.ErrNoCredentials
		if h.tokens != nil {
			c.name, c.perm, err = h.tokens.Authenticate(r)
			if err == nil && !c.perm.Has(need) {
				err = fmt.Errorf("%w: %q has %s, needs %s", auth.ErrForbidden, c.name, c.perm, need)
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

// body returns the request body, limited to max bytes and decoded per
// its Content-Encoding (Nix 2.32 and later may compress narinfo, .ls and
// log bodies).
func (h *putHandler) body(w http.ResponseWriter, r *http.Request, max int64) (io.ReadCloser, error) {
	limited := http.MaxBytesReader(w, r.Body, max)
	enc := strings.ToLower(strings.TrimSpace(r.Header.Get("Content-Encoding")))
	switch enc {
	case "", "identity":
		return limited, nil
	case "zstd", "xz", "gzip", "x-gzip", "bzip2", "br":
		if enc == "x-gzip" {
			enc = "gzip"
		}
		dec, err := compress.NewReaderLimits(limited, enc, h.s.limits.Decode(0))
		if err != nil {
			if errors.Is(err, compress.ErrUnknownCompression) {
				return nil, &statusError{http.StatusUnsupportedMediaType, fmt.Errorf("Content-Encoding %q is not supported (use zstd, xz, gzip or bzip2)", enc)}
			}
			return nil, fmt.Errorf("%w: Content-Encoding %s: %v", store.ErrInvalid, enc, err)
		}
		return dec, nil
	}
	return nil, &statusError{http.StatusUnsupportedMediaType, fmt.Errorf("Content-Encoding %q is not supported (use zstd, xz, gzip or bzip2)", enc)}
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
	if _, _, err := upload.ParseNARName(name); err != nil {
		io.Copy(io.Discard, io.LimitReader(r.Body, 1<<20))
		return err
	}
	body, err := h.body(w, r, h.u.MaxNARSize)
	if err != nil {
		return err
	}
	defer body.Close()
	start := time.Now()
	info, err := h.u.PutNAR(r.Context(), name, body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) && mbe.Limit == h.u.MaxNARSize {
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
	if _, _, err := upload.ParseNARName(name); err != nil {
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

// pinRequest is the optional JSON body of POST /api/pins/<hash>.
type pinRequest struct {
	StorePath string `json:"storePath"`
	Note      string `json:"note"`
}

// pin pins a path by hash part: POST /api/pins/<hash> with a pin token,
// optionally {"storePath": ..., "note": ...}. The deployer calls it for
// each host's running system. The pin is recorded under the token's name;
// a path pinned already by another token keeps that pin.
//
// A pin keeps GC from freeing space, so a pin token may pin only what the
// cache has (in any store it serves; 404 otherwise) and at most
// limits.max_pins_per_token paths (403 past that); an admin may pin paths
// before they are uploaded, and any number.
func (h *putHandler) pin(w http.ResponseWriter, r *http.Request) error {
	c := callerOf(r)
	admin := c.perm.Has(auth.Admin)
	hash := mux.Vars(r)["hash"]
	var req pinRequest
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 64<<10))
	if err != nil {
		return bodyErr(err)
	}
	if len(strings.TrimSpace(string(data))) > 0 {
		if err := json.Unmarshal(data, &req); err != nil {
			return fmt.Errorf("%w: pin body must be JSON {\"storePath\":..., \"note\":...}: %v", store.ErrInvalid, err)
		}
	}
	target := hash
	if req.StorePath != "" {
		if !strings.HasPrefix(basename(req.StorePath), hash+"-") {
			return fmt.Errorf("%w: storePath %s does not have hash %s", store.ErrInvalid, req.StorePath, hash)
		}
		target = req.StorePath
	}
	info, _, err := h.s.lookup(r.Context(), hash)
	switch {
	case err == nil && req.StorePath != "" && info.StorePath != req.StorePath && !admin:
		return pinAbsent(req.StorePath)
	case err == nil && req.StorePath == "" && (h.s.opts.Authorize == nil || c.perm.Has(auth.Read)):
		// Naming the path is a read: not for a pin-only token of a
		// private cache.
		target = info.StorePath
	case errors.Is(err, store.ErrNotFound) && !admin:
		return pinAbsent(target)
	case err != nil && !errors.Is(err, store.ErrNotFound):
		return err
	}
	if req.Note == "" {
		req.Note = "pinned over HTTP"
	}
	maxPins := h.s.limits.MaxPinsPerToken
	if admin {
		maxPins = 0
	}
	existing, err := h.u.PinWith(r.Context(), target, req.Note, c.name, maxPins)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	if existing != nil {
		h.s.logger(r).Info("pin kept: pinned already by another token", "path", target, "token", c.name, "owner", existing.Owner)
		fmt.Fprintf(w, "pinned %s (already, by another token: only that token or an admin can unpin it)\n", target)
		return nil
	}
	h.s.logger(r).Info("pinned", "path", target, "note", req.Note, "token", c.name)
	fmt.Fprintf(w, "pinned %s\n", target)
	return nil
}

// pinAbsent is the refusal of a pin of a path the cache does not have.
// Its text is sent (unlike a read path's 404): the deployer tells it from
// a cache without the pin API by "the cache does not have".
func pinAbsent(what string) error {
	return &apiNotFound{fmt.Sprintf("pin refused: the cache does not have %s (upload it first; only an admin token may pin a path the cache does not have)", what)}
}

// unpin removes a pin: the token's own, or any with admin.
func (h *putHandler) unpin(w http.ResponseWriter, r *http.Request) error {
	c := callerOf(r)
	hash := mux.Vars(r)["hash"]
	if err := h.u.UnpinAs(r.Context(), hash, c.name, c.perm.Has(auth.Admin)); err != nil {
		return err
	}
	h.s.logger(r).Info("unpinned", "hash", hash, "token", c.name)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// gc runs a garbage collection: POST /api/gc?dry-run=true with optional
// max-size (bytes) and max-age (Go duration) overriding the configured
// policy, answering the report as JSON.
func (h *putHandler) gc(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	p := upload.Policy{}
	dry := q.Get("dry-run") == "true" || q.Get("dry-run") == "1"
	if v := q.Get("max-size"); v != "" {
		if _, err := fmt.Sscan(v, &p.MaxSize); err != nil || p.MaxSize < 0 {
			return fmt.Errorf("%w: max-size %q is not a byte count", store.ErrInvalid, v)
		}
	}
	if v := q.Get("max-age"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return fmt.Errorf("%w: max-age %q is not a duration", store.ErrInvalid, v)
		}
		p.MaxAge = d
	}
	var rep *upload.Report
	var err error
	if p == (upload.Policy{}) {
		rep, err = h.u.GC(r.Context(), dry)
	} else {
		rep, err = h.u.GCWith(r.Context(), p, dry)
	}
	if err != nil {
		return err
	}
	if !dry {
		// Stop answering for collected paths now, not after the
		// narinfo cache's TTL (periodic GC relies on the TTL).
		for _, p := range rep.Deleted {
			if b := basename(p); len(b) > 32 {
				h.s.narinfos.remove(b[:32])
			}
		}
	}
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(rep)
}

// forget removes the tombstone of a collected path (DELETE
// /api/tombstones/<hash>, admin): the store path may then be uploaded
// with another NAR. 204, or 404 when there is none.
func (h *putHandler) forget(w http.ResponseWriter, r *http.Request) error {
	hash := mux.Vars(r)["hash"]
	path, err := h.u.Forget(r.Context(), hash)
	if errors.Is(err, store.ErrNotFound) {
		return &apiNotFound{"no tombstone for " + hash + ": nothing collected under it is remembered (never collected, forgotten, or past gc.remember)"}
	}
	if err != nil {
		return err
	}
	h.s.logger(r).Warn("tombstone forgotten: the path may be uploaded with another NAR", "path", path, "token", callerOf(r).name)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// verify re-hashes the upload store on a running server (whose lock keeps
// `cache verify` out): POST /api/verify?repair=true. The answer streams
// as text: progress lines while it runs, then what `cache verify` prints.
func (h *putHandler) verify(w http.ResponseWriter, r *http.Request) error {
	repair := r.URL.Query().Get("repair") == "true" || r.URL.Query().Get("repair") == "1"
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	var last time.Time
	rep, err := h.u.Verify(r.Context(), repair, func(done, total int64) {
		if time.Since(last) >= time.Second || done == total {
			last = time.Now()
			fmt.Fprintf(w, "progress %d %d\n", done, total)
			rc.Flush()
		}
	})
	if err != nil {
		// The status is sent; say it in the body, which the CLI checks.
		// Like every answer, without the server's paths (the log has them).
		fmt.Fprintf(w, "ERROR %s (details in the server log, request %s)\n", h.s.redact(err.Error()), RequestID(r.Context()))
		h.s.logger(r).Error("verify failed", "err", err)
		return nil
	}
	for _, b := range rep.Bad {
		reason := h.s.redact(b.Reason)
		if reason != b.Reason {
			h.s.logger(r).Warn("verify: damaged NAR file (its answer line without the path)", "blob", b.Name, "reason", b.Reason)
		}
		fmt.Fprintf(w, "DAMAGED %s: %s\n", b.Name, reason)
		for _, p := range b.Paths {
			verb := "affects"
			if rep.Repaired {
				verb = "dropped"
				if b := basename(p); len(b) > 32 {
					h.s.narinfos.remove(b[:32])
				}
			}
			fmt.Fprintf(w, "  %s %s\n", verb, p)
		}
	}
	for _, p := range rep.Broken {
		if b := basename(p); len(b) > 32 {
			h.s.narinfos.remove(b[:32])
		}
		fmt.Fprintf(w, "dropped %s (a reference was damaged)\n", p)
	}
	fmt.Fprintf(w, "checked %d NAR files (%d bytes): %d damaged\n", rep.Checked, rep.Bytes, len(rep.Bad))
	return nil
}

// listPins answers GET /api/pins (admin): every pin, with its owner.
func (h *putHandler) listPins(w http.ResponseWriter, r *http.Request) error {
	pins, err := h.u.Pins(r.Context())
	if err != nil {
		return err
	}
	if pins == nil {
		pins = []upload.Pin{}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	return json.NewEncoder(w).Encode(pins)
}
