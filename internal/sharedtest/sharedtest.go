// Package sharedtest gives tests the upload store's shared backend on
// real servers: a fresh PostgreSQL database and a fresh MinIO bucket on
// the servers the test binary shares (testpg, testminio), as upload
// backends several stores open at once, or as the config tables of
// `cache serve` replicas.
package sharedtest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/app"
	"github.com/bos55/concordia/internal/blob/s3blob"
	"github.com/bos55/concordia/internal/store/upload"
	"github.com/bos55/concordia/internal/testminio"
	"github.com/bos55/concordia/internal/testpg"
	"github.com/minio/minio-go/v7"
)

// Main runs a package's tests with both shared servers, stopping them at
// the end: func TestMain(m *testing.M) { sharedtest.Main(m) }.
func Main(m *testing.M) { testpg.Main(minioRun{m}) }

type minioRun struct{ m *testing.M }

func (r minioRun) Run() int { return testminio.Main(r.m) }

// Env is one shared backend: a database and a bucket.
type Env struct {
	PG     *testpg.Server
	MinIO  *testminio.Server
	DBURL  string
	Bucket string
}

// New makes a fresh database and bucket on the shared servers.
func New(t testing.TB) *Env {
	t.Helper()
	pg := testpg.Shared(t)
	mi := testminio.Shared(t)
	return &Env{PG: pg, MinIO: mi, DBURL: pg.CreateDB(t), Bucket: mi.Bucket(t)}
}

// S3 is the s3blob config of the bucket under prefix; PartSize is the
// smallest S3 allows, so tests' NARs span parts.
func (e *Env) S3(prefix string) s3blob.Config {
	return s3blob.Config{Endpoint: e.MinIO.Endpoint(), Bucket: e.Bucket, AccessKeyID: e.MinIO.AccessKey,
		SecretAccessKey: e.MinIO.SecretKey, Prefix: prefix, PartSize: s3blob.MinPartSize, Timeout: 30 * time.Second}
}

// Backend opens one handle on the env's index and bucket, as a replica
// does, closed when t ends (by the store that owns it, or here).
func (e *Env) Backend(t testing.TB) upload.Backend {
	t.Helper()
	be, err := app.SharedBackend(context.Background(), t.TempDir(), e.S3(""), e.DBURL)
	if err != nil {
		t.Fatal(err)
	}
	return be
}

// Backends is n handles on one fresh database and bucket.
func Backends(t testing.TB, n int) []upload.Backend {
	e := New(t)
	out := make([]upload.Backend, n)
	for i := range out {
		out[i] = e.Backend(t)
	}
	return out
}

// ConfigTables writes the secret key file under dir and returns the
// [upload.s3] and [upload.database] tables of `cache serve`'s config.
func (e *Env) ConfigTables(t testing.TB, dir string) string {
	t.Helper()
	secret := filepath.Join(dir, "s3-secret")
	if err := os.WriteFile(secret, []byte(e.MinIO.SecretKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf(`
[upload.s3]
endpoint = %q
bucket = %q
access_key_id = %q
secret_access_key_file = %q
part_size = "5M"

[upload.database]
url = %q
`, e.MinIO.Endpoint(), e.Bucket, e.MinIO.AccessKey, secret, e.DBURL)
}

// Objects lists the bucket's objects under prefix by name, and its
// unpublished uploads (incomplete multipart uploads and temp objects) as
// ".tmp-" and their key: what an interrupted upload could leave.
func (e *Env) Objects(t testing.TB, prefix string) []string {
	t.Helper()
	ctx := context.Background()
	mc := e.MinIO.Client(t)
	var out []string
	for o := range mc.ListObjects(ctx, e.Bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		name := strings.TrimPrefix(o.Key, prefix)
		if strings.HasPrefix(name, ".tmp/") {
			name = ".tmp-" + name
		}
		out = append(out, name)
	}
	for u := range mc.ListIncompleteUploads(ctx, e.Bucket, "", true) {
		if u.Err != nil {
			t.Fatal(u.Err)
		}
		if strings.HasPrefix(u.Key, prefix) {
			out = append(out, ".tmp-"+u.Key)
		}
	}
	return out
}

// ReadObject and WriteObject read and replace an object behind the
// store's back, as damage would.
func (e *Env) ReadObject(t testing.TB, key string) []byte {
	t.Helper()
	o, err := e.MinIO.Client(t).GetObject(context.Background(), e.Bucket, key, minio.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	b, err := io.ReadAll(o)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (e *Env) WriteObject(t testing.TB, key string, data []byte) {
	t.Helper()
	_, err := e.MinIO.Client(t).PutObject(context.Background(), e.Bucket, key, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

// NewOwn is New on servers of t's own (testminio.Start, testpg.Start)
// where asked, which a fault test may stop, kill and restart.
func NewOwn(t testing.TB, ownPG, ownMinIO bool) *Env {
	t.Helper()
	var pg *testpg.Server
	if ownPG {
		pg = testpg.Start(t, testpg.Options{})
	} else {
		pg = testpg.Shared(t)
	}
	var mi *testminio.Server
	if ownMinIO {
		mi = testminio.Start(t)
	} else {
		mi = testminio.Shared(t)
	}
	return &Env{PG: pg, MinIO: mi, DBURL: pg.CreateDB(t), Bucket: mi.Bucket(t)}
}
