package testminio

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/minio/minio-go/v7"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

// TestRestartKeepsData: a restarted server has the same port and data,
// which the S3 fault tests rely on.
func TestRestartKeepsData(t *testing.T) {
	s := Start(t)
	b := s.Bucket(t)
	ctx := context.Background()
	if _, err := s.Client(t).PutObject(ctx, b, "k", strings.NewReader("v"), 1, minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	s.Restart(t)
	if _, err := s.Client(t).StatObject(ctx, b, "k", minio.StatObjectOptions{}); err != nil {
		t.Fatalf("after restart: %v", err)
	}
	s.Kill()
	if _, err := s.Client(t).StatObject(ctx, b, "k", minio.StatObjectOptions{}); err == nil {
		t.Fatal("a killed server answered")
	}
}

func TestSharedBuckets(t *testing.T) {
	s := Shared(t)
	if a, b := s.Bucket(t), s.Bucket(t); a == b {
		t.Fatalf("same bucket twice: %s", a)
	}
	if Shared(t) != s {
		t.Fatal("Shared started a second server")
	}
}
