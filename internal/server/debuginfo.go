package server

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/gorilla/mux"

	"github.com/bos55/concordia/internal/store"
)

// debuginfo/<build id>: Nix's index of DWARF debug info files
// (index-debug-info=true, see store.DebugInfo). nix copy --to HEADs and
// PUTs debuginfo/<build id>.debug: its key is "debuginfo/" + s1 + s2 of
// the directory levels <2 hex>/<38 hex>.debug, the suffix included
// (binary-cache-store.cc 2.8.0:256-259, 2.32.0:258-261; seen here with
// 2.8), while its comment and dwarffs, the reader, say debuginfo/<build
// id> (dwarffs.cc toBuildId and tryUri(server + "/" + buildId)). Both
// names are one document here, so what Nix writes is what dwarffs
// finds. Reads follow the cache's read permission like every document;
// a malformed build ID is 404 on reads (a reader asking for one Nix
// never indexes finds nothing) and 400 on upload.

// maxDebugInfoBody bounds the request body of a debuginfo upload (the
// store bounds the decoded document again).
const maxDebugInfoBody = 64 << 10

// validBuildID: 40 lowercase hex digits, what Nix indexes.
func validBuildID(id string) bool { return len(id) == 40 && isHex(id) }

func (s *Server) handleDebugInfo(w http.ResponseWriter, r *http.Request) {
	if !s.authorize(w, r) {
		return
	}
	id := strings.TrimSuffix(mux.Vars(r)["id"], ".debug")
	doc, err := []byte(nil), error(store.ErrNotFound)
	if validBuildID(id) {
		doc, err = firstDoc(s.stores, func(d store.DebugInfo) ([]byte, error) { return d.DebugInfo(r.Context(), id) })
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(doc)))
	// Not immutable: the document goes when GC collects its NAR, and a
	// later upload may name another; a private cache's answer is for
	// its reader alone.
	if s.opts.Authorize != nil {
		h.Set("Cache-Control", "private, no-cache")
	} else {
		h.Set("Cache-Control", "no-cache")
	}
	if r.Method != http.MethodHead {
		_, _ = w.Write(doc)
	}
}

func (h *putHandler) debugInfo(w http.ResponseWriter, r *http.Request) error {
	d, ok := h.u.(store.DebugInfo)
	if !ok {
		return store.ErrNotFound
	}
	body, err := h.body(w, r, maxDebugInfoBody)
	if err != nil {
		return err
	}
	defer body.Close()
	if err := d.PutDebugInfo(r.Context(), strings.TrimSuffix(mux.Vars(r)["id"], ".debug"), body); err != nil {
		return bodyErr(err)
	}
	return created(w)
}
