package s3blob

import (
	"context"
	"testing"

	"github.com/minio/minio-go/v7"

	"github.com/bos55/concordia/internal/blob"
	"github.com/bos55/concordia/internal/testminio"
)

// TestPartsSentWhileWriting: a Temp uploads each full part before
// Publish, so its memory is one part whatever the blob's size.
func TestPartsSentWhileWriting(t *testing.T) {
	s := testminio.Shared(t)
	cfg := config(s, s.Bucket(t))
	d := open(t, cfg)
	ctx := context.Background()
	w, _ := d.CreateNamed(ctx, "p")
	defer w.Close()
	w.Write(make([]byte, 3*MinPartSize+1))
	tw := w.(*temp)
	parts, err := d.core.ListObjectParts(ctx, cfg.Bucket, tw.key, tw.id, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(parts.ObjectParts) != 3 || tw.key != "blobs/p" {
		t.Fatalf("%d parts uploaded under %s before Publish, want 3 under blobs/p", len(parts.ObjectParts), tw.key)
	}
}

// TestUnnamedCopiedIntoPlace: a multipart blob from Create is completed
// under .tmp/ and copied into place; the temp object does not stay.
func TestUnnamedCopiedIntoPlace(t *testing.T) {
	s := testminio.Shared(t)
	cfg := config(s, s.Bucket(t))
	d := open(t, cfg)
	ctx := context.Background()
	w, _ := d.Create(ctx)
	w.Write(make([]byte, 2*MinPartSize+5))
	if err := w.Publish("u"); err != nil {
		t.Fatal(err)
	}
	if fi, err := d.Stat(ctx, "u"); err != nil || fi.Size != 2*MinPartSize+5 {
		t.Fatalf("%+v, %v", fi, err)
	}
	for oi := range d.client.ListObjects(ctx, cfg.Bucket, minio.ListObjectsOptions{Prefix: "blobs/.tmp/", Recursive: true}) {
		t.Errorf("left behind: %s %v", oi.Key, oi.Err)
	}
}

// TestNamedOtherName: a Temp from CreateNamed refuses another name (its
// parts are already under the first), and leaves neither name.
func TestNamedOtherName(t *testing.T) {
	s := testminio.Shared(t)
	d := open(t, config(s, s.Bucket(t)))
	ctx := context.Background()
	w, _ := blob.CreateFor(ctx, d, "a")
	w.Write(make([]byte, MinPartSize+1))
	if err := w.Publish("b"); err == nil {
		t.Fatal("published under another name")
	}
	w.Close()
	for _, n := range []string{"a", "b"} {
		if _, err := d.Stat(ctx, n); err == nil {
			t.Errorf("%s exists", n)
		}
	}
}
