package s3blob

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/bos55/concordia/internal/blob"
)

// temp is a blob being written: one part buffered, earlier parts already
// uploaded to an incomplete multipart upload.
type temp struct {
	d     *Dir
	ctx   context.Context
	name  string // set by CreateNamed: the only name Publish accepts
	key   string // key of the multipart upload, once started
	id    string // its upload id
	buf   []byte
	parts []minio.CompletePart
	err   error // sticky: a failed part fails every later call
	done  bool  // published or closed
}

// Create starts a blob; its uploads run under ctx (a cancelled ctx fails
// the write, and Close still aborts the upload).
func (d *Dir) Create(ctx context.Context) (blob.Temp, error) {
	return &temp{d: d, ctx: ctx, buf: make([]byte, 0, d.partSize)}, nil
}

// CreateNamed starts a blob whose parts go straight under its final key,
// so Publish completes the upload in place, with no copy.
func (d *Dir) CreateNamed(ctx context.Context, name string) (blob.Temp, error) {
	if _, err := d.key(name); err != nil {
		return nil, err
	}
	return &temp{d: d, ctx: ctx, name: name, buf: make([]byte, 0, d.partSize)}, nil
}

func randomID() string {
	b := make([]byte, 12)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func (t *temp) Write(p []byte) (int, error) {
	if t.err != nil {
		return 0, t.err
	}
	if t.done {
		return 0, errors.New("s3blob: write after Publish or Close")
	}
	n := 0
	for len(p) > 0 {
		// A full buffer is sent only once more bytes come, so a blob of
		// exactly one part is still a single PutObject.
		if len(t.buf) == cap(t.buf) {
			if err := t.flush(); err != nil {
				return n, err
			}
		}
		c := copy(t.buf[len(t.buf):cap(t.buf)], p)
		t.buf = t.buf[:len(t.buf)+c]
		p = p[c:]
		n += c
	}
	return n, nil
}

// flush uploads the buffer as the next part, starting the upload first.
func (t *temp) flush() error {
	if t.id == "" {
		t.key = t.d.prefix + tmpDir + randomID()
		if t.name != "" {
			t.key = t.d.prefix + t.name
		}
		id, err := t.d.core.NewMultipartUpload(t.ctx, t.d.bucket, t.key, minio.PutObjectOptions{})
		if err != nil {
			t.err = fmt.Errorf("starting upload to bucket %s at %s: %w", t.d.bucket, t.d.endpoint, err)
			return t.err
		}
		t.id = id
	}
	if len(t.parts) == maxParts {
		t.err = fmt.Errorf("s3blob: blob over %d parts of %d bytes", maxParts, t.d.partSize)
		return t.err
	}
	n := len(t.parts) + 1
	p, err := t.d.core.PutObjectPart(t.ctx, t.d.bucket, t.key, t.id, n, bytes.NewReader(t.buf), int64(len(t.buf)), minio.PutObjectPartOptions{})
	if err != nil {
		t.err = fmt.Errorf("uploading part %d to bucket %s at %s: %w", n, t.d.bucket, t.d.endpoint, err)
		return t.err
	}
	t.parts = append(t.parts, minio.CompletePart{PartNumber: n, ETag: p.ETag})
	t.buf = t.buf[:0]
	return nil
}

func (t *temp) Sync() error { return t.err }

func (t *temp) Publish(name string) error {
	key, err := t.d.key(name)
	if err != nil {
		return err
	}
	if t.name != "" && name != t.name {
		return fmt.Errorf("s3blob: blob created for %q published as %q", t.name, name)
	}
	if t.err != nil {
		return t.err
	}
	if t.done {
		return errors.New("s3blob: Publish after Publish or Close")
	}
	if t.id == "" {
		if _, err := t.d.core.PutObject(t.ctx, t.d.bucket, key, bytes.NewReader(t.buf), int64(len(t.buf)), "", "", minio.PutObjectOptions{}); err != nil {
			t.err = fmt.Errorf("publishing blob %s to bucket %s at %s: %w", name, t.d.bucket, t.d.endpoint, err)
			return t.err
		}
		t.finish()
		return nil
	}
	if len(t.buf) > 0 {
		if err := t.flush(); err != nil {
			return err
		}
	}
	if _, err := t.d.core.CompleteMultipartUpload(t.ctx, t.d.bucket, t.key, t.id, t.parts, minio.PutObjectOptions{}); err != nil {
		t.err = fmt.Errorf("completing blob %s in bucket %s at %s: %w", name, t.d.bucket, t.d.endpoint, err)
		return t.err
	}
	t.id = "" // completed: nothing to abort
	if t.key != key {
		// Written by Create under a temp key: copy into place (S3 has no
		// rename), then drop the temp object. A crash in between leaves
		// the temp object to Sweep.
		tmp := t.key
		_, err := t.d.client.ComposeObject(t.ctx,
			minio.CopyDestOptions{Bucket: t.d.bucket, Object: key},
			minio.CopySrcOptions{Bucket: t.d.bucket, Object: tmp})
		t.d.client.RemoveObject(context.WithoutCancel(t.ctx), t.d.bucket, tmp, minio.RemoveObjectOptions{})
		if err != nil {
			t.err = fmt.Errorf("copying blob %s into place in bucket %s at %s: %w", name, t.d.bucket, t.d.endpoint, err)
			return t.err
		}
	}
	t.finish()
	return nil
}

func (t *temp) finish() {
	t.done = true
	t.buf = nil
}

// Close aborts an upload not published; its parts are then freed. If the
// abort fails (S3 down), Sweep aborts it later.
func (t *temp) Close() error {
	if t.done {
		return nil
	}
	t.finish()
	if t.id == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(t.ctx), t.d.timeout)
	defer cancel()
	if err := t.d.core.AbortMultipartUpload(ctx, t.d.bucket, t.key, t.id); err != nil {
		return fmt.Errorf("aborting upload in bucket %s at %s: %w", t.d.bucket, t.d.endpoint, err)
	}
	t.id = ""
	return nil
}

// Sweep aborts multipart uploads under the prefix started before cutoff
// and removes temp objects (.tmp/) older than cutoff. The whole bucket's
// uploads are listed and filtered here: MinIO lists uploads by exact key
// only, so a listing by prefix would find nothing there.
func (d *Dir) Sweep(ctx context.Context, cutoff time.Time) (int, error) {
	n := 0
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for u := range d.client.ListIncompleteUploads(lctx, d.bucket, "", true) {
		if u.Err != nil {
			return n, fmt.Errorf("listing uploads in bucket %s at %s: %w", d.bucket, d.endpoint, u.Err)
		}
		if !d.ours(u.Key) || !u.Initiated.Before(cutoff) {
			continue
		}
		if err := d.core.AbortMultipartUpload(ctx, d.bucket, u.Key, u.UploadID); err != nil {
			return n, fmt.Errorf("aborting upload of %s in bucket %s: %w", u.Key, d.bucket, err)
		}
		n++
	}
	for oi := range d.client.ListObjects(lctx, d.bucket, minio.ListObjectsOptions{Prefix: d.prefix + tmpDir, Recursive: true}) {
		if oi.Err != nil {
			return n, fmt.Errorf("listing temp objects in bucket %s at %s: %w", d.bucket, d.endpoint, oi.Err)
		}
		if !oi.LastModified.Before(cutoff) {
			continue
		}
		if err := d.client.RemoveObject(ctx, d.bucket, oi.Key, minio.RemoveObjectOptions{}); err != nil {
			return n, fmt.Errorf("removing temp object %s in bucket %s: %w", oi.Key, d.bucket, err)
		}
		n++
	}
	return n, nil
}

// ours: key is a blob or temp key of this Dir, not of another prefix.
func (d *Dir) ours(key string) bool {
	if len(key) <= len(d.prefix) || key[:len(d.prefix)] != d.prefix {
		return false
	}
	rest := key[len(d.prefix):]
	if len(rest) > len(tmpDir) && rest[:len(tmpDir)] == tmpDir {
		rest = rest[len(tmpDir):]
	}
	return !strings.ContainsRune(rest, '/')
}
