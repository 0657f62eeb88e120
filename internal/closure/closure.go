// Package closure checks, before any host is touched, that a system's whole
// closure is in the binary cache and signed by a key the fleet trusts. It
// walks the closure through the cache's narinfos over HTTP (the same
// documents the hosts' daemons will read), so a refusal here means the host
// would have failed to substitute: better to refuse with the list of
// missing and unsigned paths than to half-deploy.
package closure

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"path"
	"sort"
	"strings"
	"sync"

	"github.com/bos55/concordia/internal/cacheapi"
	"github.com/bos55/concordia/pkg/narinfo"
)

// ErrCache marks a cache that could not be asked (network, 5xx, auth):
// different from a path being absent, which is a Result. It is the cache
// client's ErrUnavailable.
var ErrCache = cacheapi.ErrUnavailable

// Result is the outcome of one walk.
type Result struct {
	Root     string
	Paths    int      // store paths in the closure that the cache knows
	Missing  []string // full store paths with no narinfo in the cache
	Unsigned []string // full store paths with no signature by a trusted key
}

// OK reports whether the closure is complete and signed.
func (r *Result) OK() bool { return len(r.Missing) == 0 && len(r.Unsigned) == 0 }

// Checker walks closures through one cache. It remembers narinfos it has
// fetched, so checking twenty hosts that share most of their closure asks
// the cache once per path. Safe for concurrent use.
type Checker struct {
	// Cache is the base URL of the binary cache, e.g. http://127.0.0.1:5000.
	Cache string
	// Client is used for every request; http.DefaultClient when nil.
	Client *http.Client
	// Token, when set, is sent as "Authorization: Bearer <token>" (private caches).
	Token string
	// Trusted are the keys a signature must verify against. Empty: every
	// path counts as unsigned (a deploy must never skip the check silently).
	Trusted []narinfo.PublicKey
	// Workers bounds the concurrent requests (default 32).
	Workers int
	Logger  *slog.Logger

	mu   sync.Mutex
	memo map[string]*entry // by hash part
}

type entry struct {
	done chan struct{}
	info *narinfo.NarInfo // nil: not in the cache
	err  error
}

// Closure is a walk with the narinfos it read: what a plan diffs.
type Closure struct {
	Result
	// Infos holds the narinfo of every path of the closure the cache
	// has, by full store path (the missing ones are in Missing).
	Infos map[string]*narinfo.NarInfo
}

// Check walks the closure of root (a full store path) and reports what is
// missing or unsigned. An error means the walk could not finish.
func (c *Checker) Check(ctx context.Context, root string) (*Result, error) {
	cl, err := c.Walk(ctx, root)
	if err != nil {
		return nil, err
	}
	return &cl.Result, nil
}

// Walk is Check keeping the narinfos: the closure as the cache knows it,
// read from narinfos alone (no NAR is fetched).
func (c *Checker) Walk(ctx context.Context, root string) (*Closure, error) {
	storeDir, hash, _, err := narinfo.ParseStorePath(root)
	if err != nil {
		return nil, fmt.Errorf("check closure %s: %w", root, err)
	}
	base := path.Base(root)
	if !strings.HasPrefix(base, hash) {
		return nil, fmt.Errorf("check closure %s: %w", root, narinfo.ErrStorePath)
	}
	workers := c.Workers
	if workers <= 0 {
		workers = 32
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w := &walk{c: c, ctx: ctx, cancel: cancel, storeDir: storeDir, root: root,
		seen: map[string]bool{}, res: &Closure{Result: Result{Root: root}, Infos: map[string]*narinfo.NarInfo{}},
		sem: make(chan struct{}, workers)}
	w.visit(base)
	w.wg.Wait()
	if w.firstErr != nil {
		return nil, w.firstErr
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("check closure %s: %w", root, err)
	}
	sort.Strings(w.res.Missing)
	sort.Strings(w.res.Unsigned)
	return w.res, nil
}

// walk is one Check: every path of the closure is looked up once, at most
// sem's capacity at a time, and the first error cancels the rest.
type walk struct {
	c        *Checker
	ctx      context.Context
	cancel   context.CancelFunc
	storeDir string
	root     string
	sem      chan struct{}
	wg       sync.WaitGroup

	mu       sync.Mutex
	seen     map[string]bool
	res      *Closure
	firstErr error
}

func (w *walk) fail(err error) {
	w.mu.Lock()
	if w.firstErr == nil {
		w.firstErr = err
		w.cancel()
	}
	w.mu.Unlock()
}

// visit looks base up in the background, once, and then its references.
func (w *walk) visit(base string) {
	w.mu.Lock()
	if w.seen[base] {
		w.mu.Unlock()
		return
	}
	w.seen[base] = true
	w.mu.Unlock()
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		info, ok := w.lookup(base)
		if !ok {
			return
		}
		for _, ref := range info.References {
			w.visit(ref)
		}
	}()
}

// lookup fetches base's narinfo and records what it says; ok is false when
// there is nothing to follow (missing, mismatched, error).
func (w *walk) lookup(base string) (info *narinfo.NarInfo, ok bool) {
	full := w.storeDir + "/" + base
	h, _, err := narinfo.ParseBaseName(base)
	if err != nil {
		w.fail(fmt.Errorf("check closure %s: reference %q: %w", w.root, base, err))
		return nil, false
	}
	select {
	case w.sem <- struct{}{}:
	case <-w.ctx.Done():
		return nil, false
	}
	info, err = w.c.narinfo(w.ctx, w.storeDir, h)
	<-w.sem
	if err != nil {
		w.fail(err)
		return nil, false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case info == nil || info.StorePath != full:
		w.res.Missing = append(w.res.Missing, full)
		if info != nil {
			w.res.Paths++
		}
		return nil, false
	default:
		w.res.Paths++
		w.res.Infos[full] = info
		if _, signed := info.Verify(w.c.Trusted); !signed && !info.ContentAddressed() {
			// A content-addressed path proves itself: its store path
			// is computed from its CA, so Nix substitutes it unsigned
			// even with require-sigs, and so does the host.
			w.res.Unsigned = append(w.res.Unsigned, full)
		}
		return info, true
	}
}

// narinfo returns the parsed narinfo for hash, nil if the cache has none.
// Concurrent callers for the same hash share one request.
func (c *Checker) narinfo(ctx context.Context, storeDir, hash string) (*narinfo.NarInfo, error) {
	c.mu.Lock()
	if c.memo == nil {
		c.memo = map[string]*entry{}
	}
	e, ok := c.memo[hash]
	if !ok {
		e = &entry{done: make(chan struct{})}
		c.memo[hash] = e
	}
	c.mu.Unlock()
	if ok {
		select {
		case <-e.done:
			return e.info, e.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	e.info, e.err = c.fetch(ctx, storeDir, hash)
	if e.err != nil {
		// Don't remember failures: the next host may find the cache back.
		c.mu.Lock()
		delete(c.memo, hash)
		c.mu.Unlock()
	}
	close(e.done)
	return e.info, e.err
}

func (c *Checker) fetch(ctx context.Context, storeDir, hash string) (*narinfo.NarInfo, error) {
	info, err := (&cacheapi.Client{URL: c.Cache, Token: c.Token, HTTP: c.Client}).NarInfo(ctx, hash)
	if err != nil || info == nil {
		return nil, err
	}
	if c.Logger != nil {
		c.Logger.Debug("narinfo", "path", info.StorePath, "refs", len(info.References))
	}
	return info, nil
}
