package deploy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"

	"github.com/bos55/concordia/internal/cacheapi"
)

// HTTPPinner pins systems in the cache through its pin API
// (POST/DELETE <cache>/api/pins/<hash>), so the cache's garbage collector
// never removes a running system or its rollback target. Its token needs
// the cache's pin permission (read,pin on a private cache); the cache lets
// it remove only the pins made under the same token name, so unpinning a
// pin someone else made (an admin, a pin from before pins had owners) is
// refused, logged as a warning and not an error: the system it protects
// stays pinned, which is safe.
type HTTPPinner struct {
	Cache string
	Token string
	// Note is recorded with each pin (e.g. the deploy id).
	Note string
	// Upstream has a cache with pull-through also pull the pinned
	// closure's upstream paths, which the pin then keeps.
	Upstream bool
	Client   *http.Client
	Logger   *slog.Logger

	absent atomic.Bool
}

// Pin pins storePath's closure root.
func (p *HTTPPinner) Pin(ctx context.Context, storePath string) error {
	return p.do(ctx, http.MethodPost, storePath)
}

// Unpin removes the pin of storePath.
func (p *HTTPPinner) Unpin(ctx context.Context, storePath string) error {
	return p.do(ctx, http.MethodDelete, storePath)
}

func (p *HTTPPinner) do(ctx context.Context, method, storePath string) error {
	if p.absent.Load() {
		return nil
	}
	c := &cacheapi.Client{URL: p.Cache, Token: p.Token, HTTP: p.Client}
	var err error
	if method == http.MethodPost {
		_, err = c.PinWith(ctx, storePath, p.Note, p.Upstream)
	} else {
		_, err = c.Unpin(ctx, storePath)
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, cacheapi.ErrNoAPI):
		if p.absent.CompareAndSwap(false, true) && p.Logger != nil {
			p.Logger.Debug("cache has no pin API; not pinning", "err", err)
		}
		return nil
	case method == http.MethodDelete && errors.Is(err, cacheapi.ErrNotFound):
		return nil // nothing pinned: fine
	case errors.Is(err, cacheapi.ErrNotFound):
		// The pin API is there, the path is not (collected since the
		// closure check?): a failed pin, not a cache without pins.
		return err
	case method == http.MethodPost && errors.Is(err, cacheapi.ErrTooManyPins):
		return err
	case method == http.MethodDelete && errors.Is(err, cacheapi.ErrForbidden):
		if p.Logger != nil {
			p.Logger.Warn("not unpinned: the cache says another token made this pin (an admin can remove it: cache pin --remove)",
				"path", storePath, "err", err)
		}
		return nil
	case errors.Is(err, cacheapi.ErrAuth) || errors.Is(err, cacheapi.ErrForbidden):
		return fmt.Errorf("%w (the cache token needs the pin permission: cache token NAME --perm pin, or read,pin for a private cache)", err)
	}
	return err
}

// pushPins is the Pinner of one push: it pins each system once however
// many hosts deploy it (a hundred hosts of one system would otherwise send
// the cache a hundred identical pins, each a write there), unpins each old
// system once, and never unpins a system this push deploys to some host
// (one host's generation before the previous can be another's new system).
// Concurrent callers for one path share the call; a failed call is tried
// again by the next host.
type pushPins struct {
	p      Pinner
	deploy map[string]bool // the systems this push deploys

	mu    sync.Mutex
	calls map[string]*pinCall // "pin " or "unpin " + store path
}

type pinCall struct {
	done chan struct{}
	err  error
}

func newPushPins(p Pinner, nodes []Node) *pushPins {
	pp := &pushPins{p: p, deploy: map[string]bool{}, calls: map[string]*pinCall{}}
	for _, n := range nodes {
		pp.deploy[n.Path] = true
	}
	return pp
}

// Pin implements Pinner.
func (pp *pushPins) Pin(ctx context.Context, storePath string) error {
	return pp.once(ctx, "pin "+storePath, func() error { return pp.p.Pin(ctx, storePath) })
}

// Unpin implements Pinner.
func (pp *pushPins) Unpin(ctx context.Context, storePath string) error {
	if pp.deploy[storePath] {
		return nil
	}
	return pp.once(ctx, "unpin "+storePath, func() error { return pp.p.Unpin(ctx, storePath) })
}

func (pp *pushPins) once(ctx context.Context, key string, do func() error) error {
	pp.mu.Lock()
	c, ok := pp.calls[key]
	if !ok {
		c = &pinCall{done: make(chan struct{})}
		pp.calls[key] = c
	}
	pp.mu.Unlock()
	if ok {
		select {
		case <-c.done:
			return c.err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	c.err = do()
	if c.err != nil {
		pp.mu.Lock()
		delete(pp.calls, key)
		pp.mu.Unlock()
	}
	close(c.done)
	return c.err
}
