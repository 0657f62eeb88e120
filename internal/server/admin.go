package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"strings"
	"time"

	"github.com/gorilla/mux"

	"github.com/bos55/concordia/internal/auth"
	"github.com/bos55/concordia/internal/store"
)

// adminHandler is the cache's own API beside the Nix protocol: pins,
// garbage collection, verify/repair and tombstones, each served when the
// upload store has the capability (a nil field: it has not).
type adminHandler struct {
	*putHandler
	pins      store.Pinner
	collector store.Collector
	verifier  store.Verifier
	forgetter store.Forgetter
}

// adminRoutes installs the admin API for the capabilities the upload store
// has. One it lacks has no route (404, like a server without the API, which
// is what the deployer and the cache command take it for), and is said once
// at startup.
func (h *putHandler) adminRoutes(r *mux.Router) {
	a := &adminHandler{putHandler: h}
	a.pins, _ = h.u.(store.Pinner)
	a.collector, _ = h.u.(store.Collector)
	a.verifier, _ = h.u.(store.Verifier)
	a.forgetter, _ = h.u.(store.Forgetter)
	var missing []string
	if a.pins != nil {
		// The pin list is an index of every deployed system: admin only.
		r.HandleFunc("/api/pins", h.guard(auth.Admin, a.listPins)).Methods(http.MethodGet).Name("pins")
		r.HandleFunc("/api/pins/{hash}", h.guard(auth.Pin, a.pin)).Methods(http.MethodPost, http.MethodPut).Name("pin")
		r.HandleFunc("/api/pins/{hash}", h.guard(auth.Pin, a.unpin)).Methods(http.MethodDelete).Name("unpin")
	} else {
		missing = append(missing, "pins (/api/pins)")
	}
	if a.collector != nil {
		r.HandleFunc("/api/gc", h.guard(auth.Admin, a.gc)).Methods(http.MethodPost).Name("gc")
	} else {
		missing = append(missing, "garbage collection (/api/gc)")
	}
	if a.forgetter != nil {
		r.HandleFunc("/api/tombstones/{hash}", h.guard(auth.Admin, a.forget)).Methods(http.MethodDelete).Name("forget")
	} else {
		missing = append(missing, "tombstones (/api/tombstones)")
	}
	if a.verifier != nil {
		r.HandleFunc("/api/verify", h.guard(auth.Admin, a.verify)).Methods(http.MethodPost).Name("verify")
	} else {
		missing = append(missing, "verify (/api/verify)")
	}
	if len(missing) > 0 {
		h.s.log.Warn("the upload store cannot do everything the admin API offers: those routes are not served", "missing", missing)
	}
	h.s.deployRoutes(r, h)
}

// forgetNarinfo stops answering from the narinfo cache for a store path
// the upload store dropped, now rather than after the cache's TTL.
func (s *Server) forgetNarinfo(storePath string) {
	if b := path.Base(storePath); len(b) > 32 {
		s.narinfos.remove(b[:32])
	}
}

// pinRequest is the optional JSON body of POST /api/pins/<hash>.
type pinRequest struct {
	StorePath string `json:"storePath"`
	Note      string `json:"note"`
	// Upstream also pulls the closure's paths that only an upstream
	// has, so the pin keeps them here (see pullPinned).
	Upstream bool `json:"upstream"`
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
func (h *adminHandler) pin(w http.ResponseWriter, r *http.Request) error {
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
		if base := req.StorePath[strings.LastIndexByte(req.StorePath, '/')+1:]; !strings.HasPrefix(base, hash+"-") {
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
	existing, err := h.pins.PinWith(r.Context(), target, req.Note, c.name, maxPins)
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
	if req.Upstream && h.s.pullPinned(r, hash) {
		fmt.Fprintf(w, "pulling the paths of its closure that only an upstream has, in the background\n")
	}
	return nil
}

// closurePuller is the pull-through store's power to pull a whole closure.
type closurePuller interface {
	PullClosure(ctx context.Context, hashPart string) (int, error)
}

// pullPinTimeout bounds the background pull of a pinned closure.
const pullPinTimeout = 6 * time.Hour

// pullPinned starts pulling the upstream paths of a pinned path's closure
// into the upload store, where the pin keeps them through GC, so a pinned
// system can be rebuilt from the cache alone. It reports whether there is
// a pull-through store to do it. The pull outlives the request: a closure
// is gigabytes.
func (s *Server) pullPinned(r *http.Request, hash string) bool {
	cp, ok := s.opts.Upstream.(closurePuller)
	if !ok {
		return false
	}
	log := s.logger(r)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), pullPinTimeout)
		defer cancel()
		n, err := cp.PullClosure(ctx, hash)
		if err != nil {
			log.Warn("pulling a pinned closure's upstream paths failed", "hash", hash, "pulled", n, "err", err)
			return
		}
		log.Info("pulled a pinned closure's upstream paths", "hash", hash, "pulled", n)
	}()
	return true
}

// pinAbsent is the refusal of a pin of a path the cache does not have.
// Its text is sent (unlike a read path's 404): the deployer tells it from
// a cache without the pin API by "the cache does not have".
func pinAbsent(what string) error {
	return &apiNotFound{fmt.Sprintf("pin refused: the cache does not have %s (upload it first; only an admin token may pin a path the cache does not have)", what)}
}

// unpin removes a pin: the token's own, or any with admin.
func (h *adminHandler) unpin(w http.ResponseWriter, r *http.Request) error {
	c := callerOf(r)
	hash := mux.Vars(r)["hash"]
	if err := h.pins.UnpinAs(r.Context(), hash, c.name, c.perm.Has(auth.Admin)); err != nil {
		return err
	}
	h.s.logger(r).Info("unpinned", "hash", hash, "token", c.name)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// gc runs a garbage collection: POST /api/gc?dry-run=true with optional
// max-size (bytes) and max-age (Go duration) overriding the configured
// policy, answering the report as JSON.
func (h *adminHandler) gc(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	p := store.Policy{}
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
	var rep *store.GCReport
	var err error
	if p == (store.Policy{}) {
		rep, err = h.collector.GC(r.Context(), dry)
	} else {
		rep, err = h.collector.GCWith(r.Context(), p, dry)
	}
	if err != nil {
		return err
	}
	if !dry {
		// Stop answering for collected paths now, not after the
		// narinfo cache's TTL (periodic GC relies on the TTL).
		for _, p := range rep.Deleted {
			h.s.forgetNarinfo(p)
		}
	}
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(rep)
}

// forget removes the tombstone of a collected path (DELETE
// /api/tombstones/<hash>, admin): the store path may then be uploaded
// with another NAR. 204, or 404 when there is none.
func (h *adminHandler) forget(w http.ResponseWriter, r *http.Request) error {
	hash := mux.Vars(r)["hash"]
	forgotten, err := h.forgetter.Forget(r.Context(), hash)
	if errors.Is(err, store.ErrNotFound) {
		return &apiNotFound{"no tombstone for " + hash + ": nothing collected under it is remembered (never collected, forgotten, or past gc.remember)"}
	}
	if err != nil {
		return err
	}
	h.s.logger(r).Warn("tombstone forgotten: the path may be uploaded with another NAR", "path", forgotten, "token", callerOf(r).name)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// verify re-hashes the upload store on a running server (whose lock keeps
// `cache verify` out): POST /api/verify?repair=true. The answer streams
// as text: progress lines while it runs, then what `cache verify` prints.
func (h *adminHandler) verify(w http.ResponseWriter, r *http.Request) error {
	repair := r.URL.Query().Get("repair") == "true" || r.URL.Query().Get("repair") == "1"
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	var last time.Time
	rep, err := h.verifier.Verify(r.Context(), repair, func(done, total int64) {
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
				h.s.forgetNarinfo(p)
			}
			fmt.Fprintf(w, "  %s %s\n", verb, p)
		}
	}
	for _, p := range rep.Broken {
		h.s.forgetNarinfo(p)
		fmt.Fprintf(w, "dropped %s (a reference was damaged)\n", p)
	}
	fmt.Fprintf(w, "checked %d NAR files (%d bytes): %d damaged\n", rep.Checked, rep.Bytes, len(rep.Bad))
	return nil
}

// listPins answers GET /api/pins (admin): every pin, with its owner.
func (h *adminHandler) listPins(w http.ResponseWriter, r *http.Request) error {
	pins, err := h.pins.Pins(r.Context())
	if err != nil {
		return err
	}
	if pins == nil {
		pins = []store.Pin{}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	return json.NewEncoder(w).Encode(pins)
}
