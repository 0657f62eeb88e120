package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path"
	"strings"
	"sync/atomic"
)

// ErrNoPinAPI means the cache has no pin API (404/405); pinning is then
// skipped, once logged.
var ErrNoPinAPI = errors.New("cache has no pin API")

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
	Note   string
	Client *http.Client
	Logger *slog.Logger

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
	base := path.Base(storePath)
	if len(base) < 32 {
		return fmt.Errorf("pin %s: not a store path", storePath)
	}
	u := strings.TrimRight(p.Cache, "/") + "/api/pins/" + base[:32]
	var body io.Reader
	if method == http.MethodPost {
		b, _ := json.Marshal(map[string]string{"storePath": storePath, "note": p.Note})
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return fmt.Errorf("pin %s: %w", storePath, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if p.Token != "" {
		req.Header.Set("Authorization", "Bearer "+p.Token)
	}
	c := p.Client
	if c == nil {
		c = http.DefaultClient
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	answer := strings.TrimSpace(string(b))
	switch {
	case resp.StatusCode/100 == 2:
		return nil
	case resp.StatusCode == http.StatusNotFound && method == http.MethodDelete:
		return nil // nothing pinned: fine
	case resp.StatusCode == http.StatusNotFound && strings.Contains(answer, "the cache does not have"):
		// The pin API is there, the path is not (collected since the
		// closure check?): a failed pin, not a cache without pins.
		return fmt.Errorf("%s %s: %s: %s", method, u, resp.Status, answer)
	case resp.StatusCode == http.StatusForbidden && method == http.MethodPost && strings.Contains(answer, "max_pins_per_token"):
		return fmt.Errorf("%s %s: %s: %s", method, u, resp.Status, answer)
	case resp.StatusCode == http.StatusForbidden && method == http.MethodDelete:
		if p.Logger != nil {
			p.Logger.Warn("not unpinned: the cache says another token made this pin (an admin can remove it: cache pin --remove)",
				"path", storePath, "status", resp.Status)
		}
		return nil
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return fmt.Errorf("%s %s: %s (the cache token needs the pin permission: cache token NAME --perm pin, or read,pin for a private cache)", method, u, resp.Status)
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusMethodNotAllowed:
		if p.absent.CompareAndSwap(false, true) && p.Logger != nil {
			p.Logger.Debug("cache has no pin API; not pinning", "status", resp.Status)
		}
		return nil
	}
	return fmt.Errorf("%s %s: %s", method, u, resp.Status)
}
