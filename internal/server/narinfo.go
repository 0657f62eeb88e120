package server

import (
	"bytes"
	"container/list"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/mux"

	"github.com/bos55/concordia/internal/limits"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/pkg/narinfo"
)

// Preallocated header values: assigning them to the header map costs no
// allocation on a cache hit. net/http never modifies header slices.
var (
	hdrNarinfoType   = []string{"text/x-nix-narinfo"}
	hdrCacheInfoType = []string{"text/x-nix-cache-info"}
)

// narinfoEntry is one signed, rendered narinfo.
type narinfoEntry struct {
	hash    string
	body    []byte
	clen    []string // Content-Length header value
	store   int      // index of the store that answered
	narHash []byte
	checked atomic.Int64 // unix nanoseconds of the last existence check
	elem    *list.Element
}

func (e *narinfoEntry) cost() int { return len(e.body) + len(e.hash) + len(e.narHash) + 200 }

// narinfoCache is a byte-bounded LRU of signed narinfos keyed by hash
// part. Store paths are immutable, so an entry never goes stale in
// content; it can only stop existing (GC), which the TTL re-check covers.
type narinfoCache struct {
	mu   sync.Mutex
	max  int
	size int
	m    map[string]*narinfoEntry
	lru  list.List // front = most recent
}

func newNarinfoCache(max int) *narinfoCache {
	return &narinfoCache{max: max, m: make(map[string]*narinfoEntry)}
}

func (c *narinfoCache) get(hash string) *narinfoEntry {
	c.mu.Lock()
	e := c.m[hash]
	if e != nil {
		c.lru.MoveToFront(e.elem)
	}
	c.mu.Unlock()
	return e
}

func (c *narinfoCache) put(e *narinfoEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := c.m[e.hash]; old != nil {
		c.lru.Remove(old.elem)
		c.size -= old.cost()
	}
	e.elem = c.lru.PushFront(e)
	c.m[e.hash] = e
	c.size += e.cost()
	for c.size > c.max && c.lru.Len() > 1 {
		last := c.lru.Back()
		victim := last.Value.(*narinfoEntry)
		c.lru.Remove(last)
		delete(c.m, victim.hash)
		c.size -= victim.cost()
	}
}

func (c *narinfoCache) remove(hash string) {
	c.mu.Lock()
	if e := c.m[hash]; e != nil {
		c.lru.Remove(e.elem)
		delete(c.m, hash)
		c.size -= e.cost()
	}
	c.mu.Unlock()
}

func (c *narinfoCache) bytes() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.size
}

func (c *narinfoCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

// lookup asks the stores in order. A store's ErrNotFound passes the
// question on; any other error stops it (an I/O error must not become a
// 404 just because a later store lacks the path).
func (s *Server) lookup(ctx context.Context, hash string) (*store.PathInfo, int, error) {
	for i, st := range s.stores {
		info, err := st.PathInfo(ctx, hash)
		if err == nil {
			if !strings.HasPrefix(path.Base(info.StorePath), hash+"-") {
				return nil, 0, fmt.Errorf("store %d answered %s for hash %s", i, info.StorePath, hash)
			}
			if i == s.uploadIdx {
				return s.unshadowed(ctx, hash, info, i)
			}
			return info, i, nil
		}
		if !errors.Is(err, store.ErrNotFound) {
			return nil, 0, fmt.Errorf("path info %s: %w", hash, err)
		}
	}
	return nil, 0, fmt.Errorf("path info %s: %w", hash, store.ErrNotFound)
}

// unshadowed keeps the upload store, asked first (prefer = "upload"),
// from hiding another NAR of the same path in a later store (the
// machine's /nix/store). Uploads that differ from what the cache serves
// are refused, but a record accepted before that rule, or a path the
// host's own Nix built after the upload (a build that is not
// reproducible), can still disagree. The later store's path is then
// served: the host's Nix put it there, not an upload token, and it is
// what the cache host itself runs. A warning, once per hash part, tells
// the operator; nothing is deleted, since either NAR is a build of the
// path and an operator may want to look. Only this order pays the extra
// lookup: with prefer = "local" the local store answers first anyway.
func (s *Server) unshadowed(ctx context.Context, hash string, up *store.PathInfo, idx int) (*store.PathInfo, int, error) {
	for j := idx + 1; j < len(s.stores) && j != s.upstreamIdx; j++ {
		info, err := s.stores[j].PathInfo(ctx, hash)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, 0, fmt.Errorf("path info %s: %w", hash, err)
		}
		if info.StorePath == up.StorePath && bytes.Equal(info.NarHash, up.NarHash) {
			return up, idx, nil
		}
		if !strings.HasPrefix(path.Base(info.StorePath), hash+"-") {
			return nil, 0, fmt.Errorf("store %d answered %s for hash %s", j, info.StorePath, hash)
		}
		if _, warned := s.shadowWarned.LoadOrStore(hash, true); !warned {
			s.log.Warn("an uploaded path has another NAR than the same path in another store; serving that store's",
				"uploaded", up.StorePath, "uploaded_nar_hash", narinfo.SHA256(up.NarHash).String(),
				"served", info.StorePath, "served_nar_hash", narinfo.SHA256(info.NarHash).String())
		}
		return info, j, nil
	}
	return up, idx, nil
}

func (s *Server) handleNarinfoSlow(w http.ResponseWriter, r *http.Request) {
	hash := mux.Vars(r)["hash"]
	if !validHashPart(hash) {
		s.fail(w, r, store.ErrNotFound)
		return
	}
	s.narinfoBody(w, r, hash, time.Now())
}

// serveNarinfo is the fast path: no mux, no request id unless something
// fails, metrics with pre-resolved labels.
func (s *Server) serveNarinfo(w http.ResponseWriter, r *http.Request, hash string) {
	start := time.Now()
	code := s.narinfoBody(w, r, hash, start)
	s.metrics.observe("narinfo", code, time.Since(start).Seconds())
}

// narinfoBody answers one narinfo request and returns the status sent.
// start is the request's arrival, reused for the TTL check: reading the
// clock is a measurable share of a cache hit on some VMs.
func (s *Server) narinfoBody(w http.ResponseWriter, r *http.Request, hash string, start time.Time) int {
	if s.opts.Authorize != nil {
		if err := s.opts.Authorize(r); err != nil {
			s.fail(w, withRequestID(w, r), err)
			return Status(err)
		}
	}
	if s.isWriter != nil && len(r.Header["Authorization"]) > 0 && s.isWriter(r) {
		return s.writerNarinfo(w, r, hash)
	}
	now := start.UnixNano()
	e := s.narinfos.get(hash)
	if e != nil && now-e.checked.Load() <= int64(s.opts.NarInfoTTL) {
		s.metrics.cacheHit.Inc()
	} else {
		var err error
		e, err = s.refreshNarinfo(r.Context(), hash, e, now)
		if err != nil {
			s.fail(w, withRequestID(w, r), err)
			return Status(err)
		}
	}
	h := w.Header()
	h["Content-Type"] = hdrNarinfoType
	h["Content-Length"] = e.clen
	h["Cache-Control"] = s.ccDay
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(e.body)
	}
	return http.StatusOK
}

// refreshNarinfo looks the path up again. An entry that still matches is
// only re-stamped (no signing); otherwise the narinfo is rendered and
// signed anew.
func (s *Server) refreshNarinfo(ctx context.Context, hash string, old *narinfoEntry, now int64) (*narinfoEntry, error) {
	info, idx, err := s.lookup(ctx, hash)
	if err != nil {
		if old != nil && errors.Is(err, store.ErrNotFound) {
			s.narinfos.remove(hash)
		}
		return nil, err
	}
	if old != nil && old.store == idx && bytes.Equal(old.narHash, info.NarHash) {
		old.checked.Store(now)
		s.metrics.cacheHit.Inc()
		return old, nil
	}
	s.metrics.cacheMiss.Inc()
	ni, err := s.buildNarinfo(ctx, s.stores[idx], hash, info)
	if err != nil {
		return nil, err
	}
	body := []byte(ni.String())
	e := &narinfoEntry{
		hash:    hash,
		body:    body,
		clen:    []string{strconv.Itoa(len(body))},
		store:   idx,
		narHash: info.NarHash,
	}
	e.checked.Store(now)
	s.narinfos.put(e)
	return e, nil
}

// narExt is the file extension of a NAR compressed with c (pkg/narinfo's
// table; ".nar.<c>" for a compression it does not know).
func narExt(c string) string {
	if ext, ok := narinfo.NARSuffix(c); ok {
		return ext
	}
	return ".nar." + c
}

// narHash32 is the nix32 text of a raw SHA-256 NAR digest.
func narHash32(digest []byte) string {
	return strings.TrimPrefix(narinfo.SHA256(digest).String(), "sha256:")
}

// NarURL is Concordia's NAR URL for a path: nar/<out hash>-<nar hash>.nar
// plus the compression's extension. The out hash finds the path without
// any narhash index; the nar hash makes the URL change if the path is
// ever re-created with other contents (so a stale URL 404s instead of
// serving a NAR that does not match its narinfo). For .nar it is exactly
// nix-serve's form.
func NarURL(hashPart string, narHash []byte, compression string) string {
	return "nar/" + hashPart + "-" + narHash32(narHash) + narExt(compression)
}

// buildNarinfo renders and signs the narinfo of info, served by st.
func (s *Server) buildNarinfo(ctx context.Context, st store.Store, hash string, info *store.PathInfo) (*narinfo.NarInfo, error) {
	if len(info.NarHash) != 32 || info.NarSize == 0 {
		return nil, fmt.Errorf("path %s: store gave nar hash of %d bytes, size %d", info.StorePath, len(info.NarHash), info.NarSize)
	}
	ni := &narinfo.NarInfo{
		StorePath: info.StorePath,
		NarHash:   narinfo.SHA256(info.NarHash),
		NarSize:   info.NarSize,
		Sigs:      append([]string(nil), info.Sigs...),
		CA:        info.CA,
	}
	if info.Deriver != "" {
		ni.Deriver = path.Base(info.Deriver)
	}
	ni.References = make([]string, len(info.References))
	for i, ref := range info.References {
		ni.References[i] = path.Base(ref)
	}
	if comp, fileHash, fileSize, ok, err := statFileNAR(ctx, st, info); err != nil {
		return nil, err
	} else if ok {
		ni.Compression = comp
		ni.URL = NarURL(hash, info.NarHash, comp)
		if len(fileHash) == 32 {
			fh := narinfo.SHA256(fileHash)
			ni.FileHash = &fh
		}
		ni.FileSize = uint64(fileSize)
	} else if s.opts.Compression == CompressionZstd {
		ni.Compression = CompressionZstd
		ni.URL = NarURL(hash, info.NarHash, CompressionZstd)
	} else {
		ni.Compression = CompressionNone
		ni.URL = NarURL(hash, info.NarHash, CompressionNone)
		fh := ni.NarHash
		ni.FileHash = &fh
		ni.FileSize = info.NarSize
	}
	ni.Sign(s.keys...)
	s.boundSigs(ni)
	if err := ni.Validate(); err != nil {
		return nil, fmt.Errorf("narinfo of %s would be corrupt: %v", info.StorePath, err)
	}
	return ni, nil
}

// statFileNAR describes the ready-made file a store keeps of info's path:
// by FileNARStat when the store has it (a pull-through path's file must
// not be downloaded for a narinfo), else by opening it. ok is false when
// the store keeps no file (FileNARStat's ErrNotFound, or no FileNAR).
func statFileNAR(ctx context.Context, st any, info *store.PathInfo) (comp string, fileHash []byte, fileSize int64, ok bool, err error) {
	if fs, is := st.(store.FileNARStat); is {
		comp, fileHash, fileSize, err = fs.StatFileNAR(ctx, info)
		if errors.Is(err, store.ErrNotFound) {
			return "", nil, 0, false, nil
		}
		if err != nil {
			return "", nil, 0, false, fmt.Errorf("nar file of %s: %w", info.StorePath, err)
		}
		return comp, fileHash, fileSize, true, nil
	}
	fn, is := st.(store.FileNAR)
	if !is {
		return "", nil, 0, false, nil
	}
	f, comp, fileHash, fileSize, err := fn.OpenFileNAR(ctx, info)
	if err != nil {
		return "", nil, 0, false, fmt.Errorf("nar file of %s: %w", info.StorePath, err)
	}
	f.Close()
	return comp, fileHash, fileSize, true, nil
}

// boundSigs trims the signatures of a narinfo over the limits (a record
// stored before they existed, or a store that holds many) to what
// limits.BoundSigs keeps, the server's own first: the document stays
// within limits.max_narinfo_size, which clients and the deployer's closure
// check read whole.
func (s *Server) boundSigs(ni *narinfo.NarInfo) {
	n := 0
	for _, sig := range ni.Sigs {
		n += limits.SigLineCost(sig)
	}
	if len(ni.Sigs) <= s.limits.MaxSignatures && int64(n) <= s.limits.MaxNarinfoSize/4 {
		return // the common case: no rendering
	}
	sigs := ni.Sigs
	ni.Sigs = nil
	base := len(ni.String())
	if s.limits.SigsWithin(base, sigs) {
		ni.Sigs = sigs
		return
	}
	own := make([]string, len(s.keys))
	for i, k := range s.keys {
		own[i] = k.Name()
	}
	kept, dropped := s.limits.BoundSigs(base, own, sigs)
	slices.Sort(kept)
	ni.Sigs = kept
	s.log.Debug("narinfo served without some signatures (limits.max_signatures, limits.max_narinfo_size)",
		"path", ni.StorePath, "kept", len(kept), "dropped", len(dropped))
}

// writerNarinfo answers an uploader (a request with a write token) from
// the upload store alone. `nix copy --to` asks for every path's narinfo and
// skips those it gets; if the machine's own /nix/store answered, paths
// that happen to exist on the cache host would never be uploaded, and an
// uploaded closure would then depend on paths the host's Nix may garbage
// collect at any time. Asking the upload store only makes the client
// upload the whole closure, so uploads stay complete on their own.
// Writers are rare, so these answers are neither cached nor cacheable.
func (s *Server) writerNarinfo(w http.ResponseWriter, r *http.Request, hash string) int {
	r = withRequestID(w, r)
	var st store.Store = s.upload
	info, err := s.upload.PathInfo(r.Context(), hash)
	if errors.Is(err, store.ErrNotFound) && s.opts.UpstreamCheck != nil {
		// An upstream has it: the client need not upload it, and the
		// closure check counts it present (the upload store asks the
		// same upstreams). One that cannot be asked now is a miss: the
		// client uploads the path, which is then checked.
		st = s.opts.UpstreamCheck
		if info, err = st.PathInfo(r.Context(), hash); errors.Is(err, store.ErrUnavailable) {
			err = fmt.Errorf("%s: %w", err, store.ErrNotFound)
		}
	}
	if err != nil {
		s.fail(w, r, err)
		return Status(err)
	}
	ni, err := s.buildNarinfo(r.Context(), st, hash, info)
	if err != nil {
		s.fail(w, r, err)
		return Status(err)
	}
	if t, ok := s.upload.(store.WriterTold); ok && st == s.upload {
		// The client keeps this answer in its disk cache: GC keeps
		// the path while that lasts.
		t.ToldWriter(hash)
	}
	body := ni.String()
	h := w.Header()
	h.Set("Content-Type", "text/x-nix-narinfo")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = io.WriteString(w, body)
	}
	return http.StatusOK
}
