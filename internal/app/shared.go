package app

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strings"

	"github.com/bos55/concordia/internal/blob"
	"github.com/bos55/concordia/internal/blob/s3blob"
	"github.com/bos55/concordia/internal/config"
	"github.com/bos55/concordia/internal/kv/pgkv"
	"github.com/bos55/concordia/internal/store/upload"
)

// openUploadStore opens the upload store of cfg: the embedded one in
// upload.dir, or the one replicas share in an S3 bucket and PostgreSQL.
// A backend that cannot be reached, or refuses the credentials, is an
// error naming which and what to fix, at start.
func openUploadStore(ctx context.Context, cfg *config.Config, opts upload.Options) (*upload.Store, error) {
	if !cfg.Upload.Shared() {
		return upload.Open(ctx, cfg.Upload.Dir, opts)
	}
	be, err := OpenBackend(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return upload.OpenBackend(ctx, be, opts)
}

// OpenBackend opens the shared index and bucket of cfg (both must be
// set): the upload store's, or `cache migrate`'s other end. The caller
// owns be.Index.
func OpenBackend(ctx context.Context, cfg *config.Config) (upload.Backend, error) {
	u := cfg.Upload
	s3cfg, err := s3Config(u.S3)
	if err != nil {
		return upload.Backend{}, err
	}
	s3cfg.Prefix = u.S3.Prefix
	dbURL, err := databaseURL(u.Database)
	if err != nil {
		return upload.Backend{}, err
	}
	return SharedBackend(ctx, u.Dir, s3cfg, dbURL)
}

// SharedBackend opens the shared backend's parts: the bucket's three
// prefixes under s3.Prefix (nar/, log/, quarantine/) and the database at
// dbURL, with dir for local files. The one place that lays out a shared
// store, for the config's store and tests' alike.
func SharedBackend(ctx context.Context, dir string, s3 s3blob.Config, dbURL string) (upload.Backend, error) {
	be := upload.Backend{Dir: dir}
	for _, d := range []struct {
		to     *blob.Dir
		prefix string
	}{{&be.Blobs, "nar/"}, {&be.Logs, "log/"}, {&be.Quarantine, "quarantine/"}} {
		c := s3
		c.Prefix = s3.Prefix + d.prefix
		bd, err := s3blob.Open(ctx, c)
		if err != nil {
			return be, fmt.Errorf("upload.s3: %w", err)
		}
		*d.to = bd
	}
	db, err := pgkv.Open(ctx, dbURL, pgkv.Options{})
	if err != nil {
		return be, fmt.Errorf("upload.database: %w", err)
	}
	be.Index = db
	return be, nil
}

func s3Config(s *config.S3) (s3blob.Config, error) {
	secret, err := readSecret(s.SecretAccessKeyFile)
	if err != nil {
		return s3blob.Config{}, fmt.Errorf("upload.s3.secret_access_key_file: %w", err)
	}
	return s3blob.Config{
		Endpoint:        s.Endpoint,
		Bucket:          s.Bucket,
		Region:          s.Region,
		AccessKeyID:     s.AccessKeyID,
		SecretAccessKey: secret,
		PartSize:        int64(s.PartSize),
	}, nil
}

// databaseURL is the configured URL with the password of password_file.
func databaseURL(d *config.Database) (string, error) {
	if d.PasswordFile == "" {
		return d.URL, nil
	}
	pw, err := readSecret(d.PasswordFile)
	if err != nil {
		return "", fmt.Errorf("upload.database.password_file: %w", err)
	}
	u, err := url.Parse(d.URL)
	if err != nil {
		return "", fmt.Errorf("upload.database.url: %w", err)
	}
	u.User = url.UserPassword(u.User.Username(), pw)
	return u.String(), nil
}

// readSecret reads a secret file, without its trailing newline.
func readSecret(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	s := strings.TrimRight(string(b), "\r\n")
	if s == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	return s, nil
}
