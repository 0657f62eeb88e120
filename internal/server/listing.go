package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"

	"github.com/gorilla/mux"

	"github.com/bos55/concordia/internal/compress"
	"github.com/bos55/concordia/internal/limits"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/pkg/nar"
)

// Listings. A .ls document is a function of the NAR's bytes, so it is
// built once per NAR hash, streamed from the NAR straight into its cache
// file (nar.WriteListing holds one node at a time), and served from there:
// a NAR of a million files costs one read of the NAR for every client
// together, then a file read each. Concurrent requests for a listing
// being built follow that one build (the cache's single flight).
//
// Options.Listings is that cache (cmd/cache hands it the compression
// cache, or one of its own). Without it, listings are built in memory,
// still once for concurrent requests, and kept while they are small.

// listingKey is the cache key of a NAR's listing.
func listingKey(info *store.PathInfo) string { return "ls-" + narHash32(info.NarHash) }

// writeListing builds the listing of info's NAR into w, within the
// limits. It takes a compression slot: it reads (for an upload,
// decompresses) a whole NAR, work of the same weight as compressing one.
func (s *Server) writeListing(ctx context.Context, st store.Store, info *store.PathInfo, w io.Writer) error {
	select {
	case s.zsem <- struct{}{}:
		defer func() { <-s.zsem }()
	case <-ctx.Done():
		return ctx.Err()
	}
	s.metrics.listingBuilds.Inc()
	lw := &cappedWriter{w: w, left: s.limits.MaxListingSize}
	derr, lerr := pipeNAR(ctx, st, info, func(r io.Reader) error {
		_, err := nar.WriteListing(lw, r, s.limits.NAR())
		return err
	})
	if lw.over {
		return limits.Stored(s.limits.ListingTooLarge("listing of " + info.StorePath))
	}
	return s.listingErr(info, derr, lerr)
}

// listingErr picks the error of a listing build from the dump's and the
// reader's: a path gone is 404, a NAR over the limits the server's
// problem (stored data), and a NAR our own store produced that the reader
// refuses is no client's fault either (500, not 400).
func (s *Server) listingErr(info *store.PathInfo, derr, lerr error) error {
	if derr != nil && errors.Is(derr, store.ErrNotFound) {
		return derr
	}
	if lerr == nil {
		lerr = derr
	}
	if lerr == nil {
		return nil
	}
	if err := limits.Stored(s.limits.Check(lerr)); err != lerr {
		return fmt.Errorf("listing of %s: %w", info.StorePath, err)
	}
	return fmt.Errorf("listing of %s: %v", info.StorePath, lerr)
}

// cappedWriter refuses to write more than left bytes.
type cappedWriter struct {
	w    io.Writer
	left int64
	over bool
}

var errListingTooLarge = errors.New("listing too large")

func (c *cappedWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > c.left {
		c.over = true
		return 0, errListingTooLarge
	}
	c.left -= int64(len(p))
	return c.w.Write(p)
}

// handleListing serves /<hash>.ls.
func (s *Server) handleListing(w http.ResponseWriter, r *http.Request) {
	if !s.authorize(w, r) {
		return
	}
	hash := mux.Vars(r)["hash"]
	if !validHashPart(hash) {
		s.fail(w, r, store.ErrNotFound)
		return
	}
	info, idx, err := s.lookup(r.Context(), hash)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if s.opts.Listings == nil {
		s.listingFromMemory(w, r, s.stores[idx], info)
		return
	}
	s.listingFromCache(w, r, s.stores[idx], info)
}

// listingFromMemory builds the listing in memory (kept if small).
func (s *Server) listingFromMemory(w http.ResponseWriter, r *http.Request, st store.Store, info *store.PathInfo) {
	ctx := r.Context()
	body, err := s.memListings.get(ctx, listingKey(info), func(w io.Writer) error {
		return s.writeListing(ctx, st, info, w)
	})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h["Cache-Control"] = s.ccDay
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
}

// listingFromCache serves the listing from the zstd listing cache,
// building it there first when it is not.
func (s *Server) listingFromCache(w http.ResponseWriter, r *http.Request, st store.Store, info *store.PathInfo) {
	e, err := s.opts.Listings.Get(r.Context(), listingKey(info), func(ctx context.Context, w io.Writer) error {
		return s.writeListing(ctx, st, info, w)
	})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	defer e.Close()
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h["Cache-Control"] = s.ccDay
	h.Set("Vary", "Accept-Encoding")
	// The cached bytes are zstd: sent as they are to a client that takes
	// zstd, decoded on the way for the others.
	var body io.Reader = e
	if acceptsZstd(r.Header.Get("Accept-Encoding")) {
		h.Set("Content-Encoding", "zstd")
		if size, ok := e.Size(); ok {
			h.Set("Content-Length", strconv.FormatInt(size, 10))
		}
	} else {
		dec, err := compress.NewReader(e, "zstd")
		if err != nil {
			s.fail(w, r, err)
			return
		}
		defer dec.Close()
		body = dec
	}
	if r.Method == http.MethodHead {
		w.WriteHeader(http.StatusOK)
		return
	}
	// A build that fails before producing anything (the path vanished)
	// is still a clean error.
	s.sendAfterFirstChunk(w, r, w, body)
}

// memListings keeps built listings in memory when there is no disk
// cache: one build for concurrent requests of a NAR, and the result kept
// while it is small, within a total budget.
type memListings struct {
	mu      sync.Mutex
	flights map[string]*memFlight
	docs    map[string][]byte
	order   []string
	size    int
}

type memFlight struct {
	done chan struct{}
	doc  []byte
	err  error
}

const (
	memListingMax    = 4 << 20
	memListingBudget = 32 << 20
)

func (m *memListings) get(ctx context.Context, key string, build func(io.Writer) error) ([]byte, error) {
	m.mu.Lock()
	if doc, ok := m.docs[key]; ok {
		m.mu.Unlock()
		return doc, nil
	}
	fl, joined := m.flights[key]
	if !joined {
		if m.flights == nil {
			m.flights, m.docs = map[string]*memFlight{}, map[string][]byte{}
		}
		fl = &memFlight{done: make(chan struct{})}
		m.flights[key] = fl
	}
	m.mu.Unlock()
	if joined {
		select {
		case <-fl.done:
			return fl.doc, fl.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	var b bytes.Buffer
	fl.err = build(&b)
	fl.doc = b.Bytes()
	m.mu.Lock()
	delete(m.flights, key)
	if fl.err == nil && len(fl.doc) <= memListingMax {
		for m.size+len(fl.doc) > memListingBudget && len(m.order) > 0 {
			m.size -= len(m.docs[m.order[0]])
			delete(m.docs, m.order[0])
			m.order = m.order[1:]
		}
		m.docs[key] = fl.doc
		m.order = append(m.order, key)
		m.size += len(fl.doc)
	}
	m.mu.Unlock()
	close(fl.done)
	return fl.doc, fl.err
}

// treeCache keeps the listing trees /serve resolves paths in, built once
// for concurrent requests and kept within a budget of estimated bytes: a
// tree costs about a hundred bytes per node, and a NAR may have millions.
type treeCache struct {
	mu      sync.Mutex
	flights map[string]*treeFlight
	trees   map[string]*cachedTree
	order   []string
	size    int64
}

type cachedTree struct {
	l    *nar.Listing
	cost int64
}

type treeFlight struct {
	done chan struct{}
	l    *nar.Listing
	err  error
}

const treeBudget = 64 << 20

func treeCost(n *nar.Node) int64 {
	c := int64(128 + len(n.Target))
	for _, e := range n.Entries {
		c += int64(len(e.Name)) + treeCost(e.Node)
	}
	return c
}

func (c *treeCache) get(ctx context.Context, key string, build func() (*nar.Listing, error)) (*nar.Listing, error) {
	c.mu.Lock()
	if t, ok := c.trees[key]; ok {
		c.mu.Unlock()
		return t.l, nil
	}
	fl, joined := c.flights[key]
	if !joined {
		if c.flights == nil {
			c.flights, c.trees = map[string]*treeFlight{}, map[string]*cachedTree{}
		}
		fl = &treeFlight{done: make(chan struct{})}
		c.flights[key] = fl
	}
	c.mu.Unlock()
	if joined {
		select {
		case <-fl.done:
			return fl.l, fl.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	fl.l, fl.err = build()
	var cost int64
	if fl.err == nil && fl.l.Root != nil {
		cost = treeCost(fl.l.Root)
	}
	c.mu.Lock()
	delete(c.flights, key)
	if fl.err == nil && cost <= treeBudget/4 {
		for c.size+cost > treeBudget && len(c.order) > 0 {
			c.size -= c.trees[c.order[0]].cost
			delete(c.trees, c.order[0])
			c.order = c.order[1:]
		}
		c.trees[key] = &cachedTree{l: fl.l, cost: cost}
		c.order = append(c.order, key)
		c.size += cost
	}
	c.mu.Unlock()
	close(fl.done)
	return fl.l, fl.err
}

// tree returns the listing tree of a path's NAR, for /serve.
func (s *Server) tree(ctx context.Context, st store.Store, info *store.PathInfo) (*nar.Listing, error) {
	key := info.StorePath + "\x00" + string(info.NarHash)
	return s.trees.get(ctx, key, func() (*nar.Listing, error) {
		var l *nar.Listing
		derr, lerr := pipeNAR(ctx, st, info, func(r io.Reader) error {
			var err error
			l, err = nar.ListingFromReaderOptions(r, s.limits.NAR())
			return err
		})
		if err := s.listingErr(info, derr, lerr); err != nil {
			return nil, err
		}
		return l, nil
	})
}
