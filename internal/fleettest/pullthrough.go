package fleettest

import (
	"context"
	"fmt"
	"testing"
)

// PullThroughCache is Concordia's cache in front of an upstream (a
// FileCache standing in for cache.nixos.org, with its own key): what a
// fleet looks like when its cache is its only substituter. Publish puts a
// system's dependencies in the upstream and uploads the system with `nix
// copy --to`, which the cache tells that the upstream has the rest, so
// only the top path is uploaded; the hosts, trusting the cache's key
// only, get the rest through the cache's pull-through.
type PullThroughCache struct {
	*ConcordiaCache
	Upstream *FileCache
}

// WithPullThroughCache is an Options.Cache: a PullThroughCache, failing
// the test when the cache does not start (there is no stand-in for it).
func WithPullThroughCache(t testing.TB) Cache {
	t.Helper()
	up := NewFileCache(t)
	extra := fmt.Sprintf("\n[[upstream]]\nurl = %q\nname = \"upstream\"\npublic_keys = [%q]\ntimeout = \"5s\"\n", up.URL(), up.PublicKey())
	c, err := newConcordiaCache(t, extra)
	if err != nil {
		t.Fatalf("Concordia cache with an upstream: %v", err)
	}
	return &PullThroughCache{ConcordiaCache: c, Upstream: up}
}

// Publish implements Cache: every path of the closures but the tops to
// the upstream, then the tops (closures and all) to the cache.
func (c *PullThroughCache) Publish(ctx context.Context, paths ...string) error {
	deps, err := dependencies(c.env, paths)
	if err != nil {
		return err
	}
	if len(deps) > 0 {
		if err := c.Upstream.Publish(ctx, deps...); err != nil {
			return err
		}
	}
	return c.ConcordiaCache.Publish(ctx, paths...)
}
