package cacheapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/bos55/concordia/internal/compress"
	"github.com/bos55/concordia/pkg/nar"
)

// MaxListing bounds the .ls body read: a toplevel's listing is a few KiB
// (its files are links into other paths), and the deployer reads no other.
const MaxListing = 16 << 20

// Listing fetches and parses <hash>.ls, the listing a cache serves of a
// path's NAR (a Concordia cache has one for every path it serves): the
// path's tree without its contents. (nil, nil) when the cache has no
// listing of it. A body over MaxListing or one that is no listing is
// ErrUnavailable wrapping nar.ErrListing.
func (c *Client) Listing(ctx context.Context, hashPart string) (*nar.Listing, error) {
	resp, err := c.send(ctx, http.MethodGet, "/"+hashPart+".ls", nil)
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		if !errors.Is(err, ErrUnavailable) {
			err = fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		return nil, err
	}
	defer resp.Body.Close()
	body := io.Reader(&capped{r: resp.Body, left: MaxListing})
	// Nix 2.32 uploads listings compressed and a file cache serves them
	// with that Content-Encoding; Go's client undoes only the gzip it
	// asked for itself.
	if enc := resp.Header.Get("Content-Encoding"); enc != "" && enc != "identity" {
		dec, err := compress.NewReader(body, enc)
		if err != nil {
			return nil, fmt.Errorf("%w: %s.ls: %v", ErrUnavailable, hashPart, err)
		}
		defer dec.Close()
		body = &capped{r: dec, left: MaxListing}
	}
	l, err := nar.ParseListing(body)
	if err != nil {
		return nil, fmt.Errorf("%w: %s.ls: %w", ErrUnavailable, hashPart, err)
	}
	return l, nil
}

// errTooLarge is a body past its bound.
var errTooLarge = fmt.Errorf("%w: answer larger than %d bytes", nar.ErrListing, MaxListing)

// capped reads at most left bytes and then fails: a listing is parsed as
// it streams, so the bound is on the reader, not a buffer.
type capped struct {
	r    io.Reader
	left int64
}

func (c *capped) Read(p []byte) (int, error) {
	if c.left <= 0 {
		// One byte more tells a body of exactly the bound from a longer one.
		var b [1]byte
		if n, _ := c.r.Read(b[:]); n > 0 {
			return 0, errTooLarge
		}
		return 0, io.EOF
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= int64(n)
	return n, err
}
