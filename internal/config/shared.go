package config

import (
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"time"
)

// S3 is the [upload.s3] table: the upload store's NAR files, build logs
// and quarantine in an S3-compatible bucket instead of upload.dir, for
// several cache replicas (with [upload.database]).
type S3 struct {
	// Endpoint is the S3 server's URL, http or https
	// (http://127.0.0.1:9000 for a MinIO beside the cache).
	Endpoint string `toml:"endpoint"`
	Bucket   string `toml:"bucket"`
	Region   string `toml:"region"`
	// Prefix starts every key the cache writes, so one bucket can hold
	// more than one cache.
	Prefix      string `toml:"prefix"`
	AccessKeyID string `toml:"access_key_id"`
	// SecretAccessKeyFile holds the secret key (trailing newline ignored),
	// never the config itself.
	SecretAccessKeyFile string `toml:"secret_access_key_file"`
	// PartSize is the size of each part of a multipart upload: what an
	// upload holds in memory at once (default 16M, at least 5M).
	PartSize Size `toml:"part_size"`
	// Redirect answers NAR GETs with a redirect to a presigned URL of the
	// bucket, valid for RedirectTTL (default 1h), instead of streaming
	// the file through the cache. The bucket must be reachable by the
	// clients then. Compressed-on-the-fly answers are still streamed.
	Redirect    bool     `toml:"redirect"`
	RedirectTTL Duration `toml:"redirect_ttl"`
}

// Database is the [upload.database] table: the upload store's index in
// PostgreSQL instead of a bbolt file in upload.dir.
type Database struct {
	// URL is a PostgreSQL connection URL
	// (postgres://concordia@/concordia?host=/run/postgresql).
	URL string `toml:"url"`
	// PasswordFile, when set, holds the password (not in the URL).
	PasswordFile string `toml:"password_file"`
}

// Defaults of the S3 backend.
const (
	DefaultS3PartSize    = 16 << 20
	MinS3PartSize        = 5 << 20
	DefaultS3RedirectTTL = time.Hour
)

// Shared reports whether the upload store is on S3 and PostgreSQL.
func (u *Upload) Shared() bool { return u.S3 != nil || u.Database != nil }

// finishShared turns the upload store on for a shared backend: its local
// files (downloads from upstreams) go in the state directory when
// upload.dir is not set.
func (c *Config) finishShared() {
	if !c.Upload.Shared() {
		return
	}
	if c.Upload.Dir == "" {
		c.Upload.Dir = filepath.Join(c.StateDir, uploadDirName)
	}
	if s := c.Upload.S3; s != nil {
		if s.PartSize == 0 {
			s.PartSize = DefaultS3PartSize
		}
		if s.Region == "" {
			s.Region = "us-east-1"
		}
		if s.RedirectTTL == 0 {
			s.RedirectTTL = Duration(DefaultS3RedirectTTL)
		}
	}
}

func (c *Config) validateShared(bad func(key, format string, a ...any) error) error {
	u := &c.Upload
	if !u.Shared() {
		return nil
	}
	if u.S3 == nil {
		return bad("upload.database", "needs [upload.s3]: replicas sharing an index must share the files too")
	}
	if u.Database == nil {
		return bad("upload.s3", "needs [upload.database]: the index of files in a bucket is kept in PostgreSQL")
	}
	s := u.S3
	p, err := url.Parse(s.Endpoint)
	if err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" || (p.Path != "" && p.Path != "/") || p.RawQuery != "" {
		return bad("upload.s3.endpoint", "must be an http or https URL of the S3 server without a path, got %q", s.Endpoint)
	}
	if s.Bucket == "" {
		return bad("upload.s3.bucket", "must be set")
	}
	if s.Prefix != "" && (!strings.HasSuffix(s.Prefix, "/") || strings.HasPrefix(s.Prefix, "/")) {
		return bad("upload.s3.prefix", `must be "" or a key prefix ending in "/" (like "cache/"), got %q`, s.Prefix)
	}
	if s.AccessKeyID == "" || s.SecretAccessKeyFile == "" {
		return bad("upload.s3", "needs access_key_id and secret_access_key_file")
	}
	if !filepath.IsAbs(s.SecretAccessKeyFile) {
		return bad("upload.s3.secret_access_key_file", "must be absolute, got %q", s.SecretAccessKeyFile)
	}
	if s.PartSize < MinS3PartSize {
		return bad("upload.s3.part_size", "must be at least 5M (S3's smallest part), got %d", s.PartSize)
	}
	d := u.Database
	q, err := url.Parse(d.URL)
	if err != nil || (q.Scheme != "postgres" && q.Scheme != "postgresql") {
		return bad("upload.database.url", "must be a postgres:// URL, got %q", redactURL(d.URL))
	}
	if _, set := q.User.Password(); set && d.PasswordFile != "" {
		return bad("upload.database", "password_file and a password in url: give one")
	}
	if d.PasswordFile != "" && !filepath.IsAbs(d.PasswordFile) {
		return bad("upload.database.password_file", "must be absolute, got %q", d.PasswordFile)
	}
	return nil
}

// redactURL is a URL with its password hidden, for errors and logs.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Sprintf("(%d characters, not a URL)", len(s))
	}
	return u.Redacted()
}
