package blob

import (
	"context"
	"net/url"
	"time"
)

// Presigner is the optional capability of a Dir whose blobs a client can
// fetch itself: an object store's presigned URLs, so a cache replica
// redirects a NAR download to the bucket instead of streaming it.
type Presigner interface {
	// PresignGet is a URL that GETs blob name until ttl has passed.
	PresignGet(ctx context.Context, name string, ttl time.Duration) (*url.URL, error)
}
