package s3blob

import (
	"context"
	"io"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/blob"
	"github.com/bos55/concordia/internal/blob/blobtest"
	"github.com/bos55/concordia/internal/testminio"
)

func TestMain(m *testing.M) { os.Exit(testminio.Main(m)) }

func config(s *testminio.Server, bucket string) Config {
	return Config{
		Endpoint: s.Endpoint(), Bucket: bucket,
		AccessKeyID: s.AccessKey, SecretAccessKey: s.SecretKey,
		Prefix: "blobs/", PartSize: MinPartSize,
	}
}

func open(t testing.TB, cfg Config) *Dir {
	t.Helper()
	d, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestContract(t *testing.T) {
	s := testminio.Shared(t)
	blobtest.Run(t, func(t *testing.T) blob.Dir {
		return open(t, config(s, s.Bucket(t)))
	})
}

// TestPrefixesShareBucket: two Dirs in one bucket see only their own.
func TestPrefixesShareBucket(t *testing.T) {
	s := testminio.Shared(t)
	b := s.Bucket(t)
	ca, cb := config(s, b), config(s, b)
	ca.Prefix, cb.Prefix = "", "logs/"
	da, db := open(t, ca), open(t, cb)
	ctx := context.Background()
	for _, d := range []*Dir{da, db} {
		w, _ := blob.CreateFor(ctx, d, "x")
		w.Write(make([]byte, 6<<20))
		if err := w.Publish("x"); err != nil {
			t.Fatal(err)
		}
		w, _ = d.Create(ctx)
		w.Write(make([]byte, 6<<20)) // left unclosed
	}
	n := 0
	da.List(ctx, func(blob.Info) error { n++; return nil })
	if n != 1 {
		t.Fatalf("the root Dir lists %d blobs, want its 1", n)
	}
	if n, err := db.Sweep(ctx, time.Now().Add(time.Hour)); err != nil || n != 1 {
		t.Fatalf("logs/ swept %d, %v; want its own 1", n, err)
	}
	if n, err := da.Sweep(ctx, time.Now().Add(time.Hour)); err != nil || n != 1 {
		t.Fatalf("root swept %d, %v; want its own 1", n, err)
	}
}

func TestPresignGet(t *testing.T) {
	s := testminio.Shared(t)
	d := open(t, config(s, s.Bucket(t)))
	ctx := context.Background()
	w, _ := d.Create(ctx)
	w.Write([]byte("hello"))
	if err := w.Publish("p"); err != nil {
		t.Fatal(err)
	}
	u, err := d.PresignGet(ctx, "p", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(u.String())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(b) != "hello" {
		t.Fatalf("presigned GET: %d %q", resp.StatusCode, b)
	}
}
