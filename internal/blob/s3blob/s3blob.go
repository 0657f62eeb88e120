// Package s3blob keeps blobs as objects in an S3 bucket (any S3: MinIO,
// Garage, AWS…), under a key prefix, so several cache replicas can share
// one bucket and several Dirs (NARs, logs) one bucket.
//
// A blob being written streams: the first part is kept in memory and,
// once more than one part is written, the parts are uploaded as they
// fill (one part buffer of memory whatever the size). Nothing is visible
// before Publish because an incomplete multipart upload is invisible in
// S3, and completing it replaces the old object atomically.
//
// Cost of not knowing the name (Create rather than CreateNamed): a blob of
// more than one part is uploaded under <prefix>.tmp/<id> and, at Publish,
// server-side copied to its name and the temp object deleted, which
// doubles the bucket's I/O for that blob. CreateNamed (blob.CreateFor)
// uploads straight under the final key: no copy.
package s3blob

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/bos55/concordia/internal/blob"
)

// Part sizes: S3 refuses parts (but the last) under 5 MiB.
const (
	MinPartSize     = 5 << 20
	DefaultPartSize = 16 << 20
	maxParts        = 10000 // S3's limit on parts of one upload
)

// tmpDir is the key "directory" under a Dir's prefix for blobs of more
// than one part written by Create, before their copy into place.
const tmpDir = ".tmp/"

// Config says which bucket and how to reach it.
type Config struct {
	Endpoint        string // URL, http://127.0.0.1:9000 or https://s3.example.org
	Bucket          string
	Region          string // default us-east-1; set so no region lookup is made
	AccessKeyID     string
	SecretAccessKey string
	// Prefix starts every key: "" or ending in "/" ("blobs/", "logs/"),
	// so Dirs sharing a bucket cannot see each other's blobs.
	Prefix string
	// PartSize is the multipart part size and the write buffer (default
	// 16 MiB, at least 5 MiB). A blob can have 10000 parts at most.
	PartSize int64
	// Timeout bounds connecting and waiting for a response's headers
	// (not a whole transfer), and the checks of Open. Default 30 s.
	Timeout time.Duration
	// CreateBucket creates a missing bucket at Open (tests, a first start)
	// rather than failing.
	CreateBucket bool
}

// Dir is the blobs under one prefix of a bucket.
type Dir struct {
	client   *minio.Client
	core     *minio.Core
	bucket   string
	prefix   string
	endpoint string
	partSize int64
	timeout  time.Duration
}

var _ blob.Dir = (*Dir)(nil)
var _ blob.Namer = (*Dir)(nil)

// Open connects to the bucket and checks, so that a misconfiguration is
// an error at start and not at the first upload: the endpoint answers,
// the access key is accepted, the bucket exists (or is created).
func Open(ctx context.Context, cfg Config) (*Dir, error) {
	u, err := url.Parse(cfg.Endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("S3 endpoint %q: not an http:// or https:// URL", cfg.Endpoint)
	}
	if cfg.Bucket == "" {
		return nil, fmt.Errorf("S3 endpoint %s: no bucket configured", cfg.Endpoint)
	}
	if cfg.Prefix != "" && !strings.HasSuffix(cfg.Prefix, "/") {
		return nil, fmt.Errorf("S3 key prefix %q: must end in /", cfg.Prefix)
	}
	if cfg.PartSize == 0 {
		cfg.PartSize = DefaultPartSize
	}
	if cfg.PartSize < MinPartSize {
		return nil, fmt.Errorf("S3 part size %d: under S3's minimum of 5 MiB", cfg.PartSize)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.Region == "" {
		cfg.Region = "us-east-1"
	}
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: cfg.Timeout, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:   cfg.Timeout,
		ResponseHeaderTimeout: cfg.Timeout,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
	}
	c, err := minio.New(u.Host, &minio.Options{
		Creds:     credentials.NewStaticV4(cfg.AccessKeyID, cfg.SecretAccessKey, ""),
		Secure:    u.Scheme == "https",
		Region:    cfg.Region,
		Transport: tr,
	})
	if err != nil {
		return nil, fmt.Errorf("S3 endpoint %s: %w", cfg.Endpoint, err)
	}
	d := &Dir{
		client: c, core: &minio.Core{Client: c},
		bucket: cfg.Bucket, prefix: cfg.Prefix, endpoint: cfg.Endpoint,
		partSize: cfg.PartSize, timeout: cfg.Timeout,
	}
	if err := d.check(ctx, cfg); err != nil {
		return nil, err
	}
	return d, nil
}

// check lists one key of the bucket: the one request whose error tells
// apart an unreachable endpoint, a refused key and a missing bucket.
func (d *Dir) check(ctx context.Context, cfg Config) error {
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	// A dial first: minio-go retries a refused connection until the
	// deadline and then reports only the deadline.
	host := d.client.EndpointURL().Host
	if d.client.EndpointURL().Port() == "" {
		host = net.JoinHostPort(host, map[bool]string{true: "443", false: "80"}[d.client.EndpointURL().Scheme == "https"])
	}
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", host)
	if err != nil {
		return fmt.Errorf("S3 endpoint %s unreachable: %w", d.endpoint, err)
	}
	conn.Close()
	// Only the first answer matters (an object, an error, or none for an
	// empty prefix); the listing is then cancelled and drained.
	lctx, lcancel := context.WithCancel(ctx)
	ch := d.client.ListObjects(lctx, d.bucket, minio.ListObjectsOptions{Prefix: d.prefix, MaxKeys: 1})
	first, ok := <-ch
	lcancel()
	for range ch {
	}
	if !ok || first.Err == nil {
		return nil
	}
	err = first.Err
	switch minio.ToErrorResponse(err).Code {
	case "InvalidAccessKeyId":
		return fmt.Errorf("S3 at %s refused access key %q: no such key id", d.endpoint, cfg.AccessKeyID)
	case "SignatureDoesNotMatch":
		return fmt.Errorf("S3 at %s refused access key %q: wrong secret key", d.endpoint, cfg.AccessKeyID)
	case "AccessDenied":
		return fmt.Errorf("S3 at %s: access key %q may not list bucket %q", d.endpoint, cfg.AccessKeyID, d.bucket)
	case "NoSuchBucket":
		if !cfg.CreateBucket {
			return fmt.Errorf("S3 bucket %q does not exist at %s (create it, or set CreateBucket)", d.bucket, d.endpoint)
		}
		if err := d.client.MakeBucket(ctx, d.bucket, minio.MakeBucketOptions{Region: cfg.Region}); err != nil {
			return fmt.Errorf("creating S3 bucket %q at %s: %w", d.bucket, d.endpoint, err)
		}
		return nil
	}
	var nerr net.Error
	if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &nerr) && nerr.Timeout()) {
		return fmt.Errorf("S3 endpoint %s did not answer within %s: %w", d.endpoint, cfg.Timeout, err)
	}
	return fmt.Errorf("S3 endpoint %s unreachable (bucket %q): %w", d.endpoint, d.bucket, err)
}

// key is the object key of blob name, or an error for a name that is not
// a plain file name (".tmp" is refused too: MinIO keeps objects as files,
// and an object .tmp would clash with the .tmp/ directory).
func (d *Dir) key(name string) (string, error) {
	if name == "" || strings.ContainsRune(name, '/') || name == "." || name == ".." || name+"/" == tmpDir {
		return "", fmt.Errorf("blob name %q: not a plain file name", name)
	}
	return d.prefix + name, nil
}

// mapErr makes S3's "no such key" fs.ErrNotExist, with context.
func (d *Dir) mapErr(op, name string, err error) error {
	switch minio.ToErrorResponse(err).Code {
	case "NoSuchKey", "NoSuchObject":
		return fmt.Errorf("%s blob %s in bucket %s: %w", op, name, d.bucket, fs.ErrNotExist)
	}
	return fmt.Errorf("%s blob %s in bucket %s at %s: %w", op, name, d.bucket, d.endpoint, err)
}

func (d *Dir) Local() string                  { return "" }
func (d *Dir) Sync(ctx context.Context) error { return nil }

func (d *Dir) Stat(ctx context.Context, name string) (blob.Info, error) {
	k, err := d.key(name)
	if err != nil {
		return blob.Info{}, err
	}
	oi, err := d.client.StatObject(ctx, d.bucket, k, minio.StatObjectOptions{})
	if err != nil {
		return blob.Info{}, d.mapErr("stat", name, err)
	}
	return blob.Info{Name: name, Size: oi.Size, ModTime: oi.LastModified}, nil
}

func (d *Dir) Remove(ctx context.Context, name string) error {
	k, err := d.key(name)
	if err != nil {
		return err
	}
	if err := d.client.RemoveObject(ctx, d.bucket, k, minio.RemoveObjectOptions{}); err != nil {
		if errors.Is(d.mapErr("", name, err), fs.ErrNotExist) {
			return nil
		}
		return d.mapErr("remove", name, err)
	}
	return nil
}

// List lists the objects directly under the prefix; the .tmp/ "directory"
// and any deeper keys are not blobs.
func (d *Dir) List(ctx context.Context, fn func(blob.Info) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for oi := range d.client.ListObjects(ctx, d.bucket, minio.ListObjectsOptions{Prefix: d.prefix}) {
		if oi.Err != nil {
			return fmt.Errorf("listing bucket %s at %s: %w", d.bucket, d.endpoint, oi.Err)
		}
		name := strings.TrimPrefix(oi.Key, d.prefix)
		if name == "" || strings.ContainsRune(name, '/') {
			continue
		}
		if err := fn(blob.Info{Name: name, Size: oi.Size, ModTime: oi.LastModified}); err != nil {
			return err
		}
	}
	return nil
}

// PresignGet is a URL that lets its holder GET blob name for ttl, to send
// a reader straight to the bucket.
func (d *Dir) PresignGet(ctx context.Context, name string, ttl time.Duration) (*url.URL, error) {
	k, err := d.key(name)
	if err != nil {
		return nil, err
	}
	u, err := d.client.PresignedGetObject(ctx, d.bucket, k, ttl, nil)
	if err != nil {
		return nil, fmt.Errorf("presigning blob %s: %w", name, err)
	}
	return u, nil
}
