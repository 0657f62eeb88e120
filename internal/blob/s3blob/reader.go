package s3blob

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/minio/minio-go/v7"

	"github.com/bos55/concordia/internal/blob"
)

// reader reads a blob by ranged GETs pinned to the ETag seen at Open: a
// blob replaced meanwhile fails the next request (412) instead of
// splicing new bytes after old ones. Read streams one GET from the
// current offset to the end; Seek only moves the offset.
type reader struct {
	d       *Dir
	ctx     context.Context
	name    string
	key     string
	size    int64
	etag    string
	pos     int64
	body    io.ReadCloser
	bodyPos int64
}

// Open stats the blob (so a missing one is fs.ErrNotExist now, not at
// the first Read); the reader's requests run under ctx.
func (d *Dir) Open(ctx context.Context, name string) (blob.Reader, error) {
	k, err := d.key(name)
	if err != nil {
		return nil, err
	}
	oi, err := d.client.StatObject(ctx, d.bucket, k, minio.StatObjectOptions{})
	if err != nil {
		return nil, d.mapErr("open", name, err)
	}
	return &reader{d: d, ctx: ctx, name: name, key: k, size: oi.Size, etag: oi.ETag}, nil
}

func (r *reader) Size() int64 { return r.size }

// get opens bytes [off, end) of the blob as it was at Open.
func (r *reader) get(off, end int64) (io.ReadCloser, error) {
	var o minio.GetObjectOptions
	if err := o.SetMatchETag(r.etag); err != nil {
		return nil, err
	}
	if err := o.SetRange(off, end-1); err != nil {
		return nil, err
	}
	body, _, _, err := r.d.core.GetObject(r.ctx, r.d.bucket, r.key, o)
	if err != nil {
		if minio.ToErrorResponse(err).Code == "PreconditionFailed" {
			return nil, fmt.Errorf("reading blob %s: replaced while being read", r.name)
		}
		return nil, r.d.mapErr("read", r.name, err)
	}
	return body, nil
}

func (r *reader) Read(p []byte) (int, error) {
	if r.pos >= r.size {
		return 0, io.EOF
	}
	if r.body != nil && r.bodyPos != r.pos {
		r.body.Close()
		r.body = nil
	}
	if r.body == nil {
		b, err := r.get(r.pos, r.size)
		if err != nil {
			return 0, err
		}
		r.body, r.bodyPos = b, r.pos
	}
	n, err := r.body.Read(p)
	r.pos += int64(n)
	r.bodyPos = r.pos
	if err == io.EOF {
		if r.pos < r.size {
			// The server ended the response early: never a short blob.
			return n, fmt.Errorf("reading blob %s: cut off at %d of %d bytes: %w", r.name, r.pos, r.size, io.ErrUnexpectedEOF)
		}
		return n, nil
	}
	if err != nil {
		return n, fmt.Errorf("reading blob %s at %d: %w", r.name, r.pos, err)
	}
	return n, nil
}

func (r *reader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("s3blob: negative offset")
	}
	if off >= r.size {
		return 0, io.EOF
	}
	end := min(off+int64(len(p)), r.size)
	if end == off {
		return 0, nil
	}
	b, err := r.get(off, end)
	if err != nil {
		return 0, err
	}
	defer b.Close()
	n, err := io.ReadFull(b, p[:end-off])
	if err != nil {
		return n, fmt.Errorf("reading blob %s at %d: %w", r.name, off+int64(n), err)
	}
	if end < off+int64(len(p)) {
		return n, io.EOF
	}
	return n, nil
}

func (r *reader) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += r.pos
	case io.SeekEnd:
		offset += r.size
	default:
		return 0, errors.New("s3blob: bad whence")
	}
	if offset < 0 {
		return 0, errors.New("s3blob: negative position")
	}
	r.pos = offset
	return offset, nil
}

func (r *reader) Close() error {
	if r.body != nil {
		r.body.Close()
		r.body = nil
	}
	return nil
}
