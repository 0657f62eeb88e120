package server

import (
	"context"
	"io"

	"github.com/bos55/concordia/internal/zstdcache"
)

// CompressCache adapts internal/zstdcache's cache to ZstdCache: its Get
// returns the concrete *zstdcache.Entry, which Go does not accept where an
// interface result is declared, so this one-method shim converts it.
func CompressCache(c *zstdcache.Cache) ZstdCache { return cacheAdapter{c} }

type cacheAdapter struct{ c *zstdcache.Cache }

func (a cacheAdapter) Get(ctx context.Context, key string, produce func(context.Context, io.Writer) error) (ZstdEntry, error) {
	e, err := a.c.Get(ctx, key, produce)
	if err != nil {
		return nil, err
	}
	return e, nil
}
