package deploy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
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
