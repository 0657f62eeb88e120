package server

import (
	"context"
	"io"

	"github.com/bos55/concordia/internal/compress"
)

// CompressCache adapts internal/compress's cache to ZstdCache: its Get
// returns the concrete *compress.Entry, which Go does not accept where an
// interface result is declared, so this one-method shim converts it.
func CompressCache(c *compress.Cache) ZstdCache { return cacheAdapter{c} }

type cacheAdapter struct{ c *compress.Cache }

func (a cacheAdapter) Get(ctx context.Context, key string, produce func(context.Context, io.Writer) error) (ZstdEntry, error) {
	e, err := a.c.Get(ctx, key, produce)
	if err != nil {
		return nil, err
	}
	return e, nil
}
