package s3blob

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/blob"
	"github.com/bos55/concordia/internal/testminio"
)

func TestWrongCredentials(t *testing.T) {
	s := testminio.Shared(t)
	for _, c := range []struct{ key, secret, want string }{
		{"nobody", "whatever-secret", "no such key id"},
		{s.AccessKey, "wrong-secret-123", "wrong secret key"},
	} {
		cfg := config(s, s.Bucket(t))
		cfg.AccessKeyID, cfg.SecretAccessKey = c.key, c.secret
		_, err := Open(context.Background(), cfg)
		if err == nil || !strings.Contains(err.Error(), "refused access key") || !strings.Contains(err.Error(), c.key) || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("Open with key %s: %v", c.key, err)
		}
		if strings.Contains(err.Error(), c.secret) {
			t.Fatalf("the error shows the secret: %v", err)
		}
		t.Log(err)
	}
}

func TestMissingBucket(t *testing.T) {
	s := testminio.Shared(t)
	cfg := config(s, "no-such-bucket-here")
	_, err := Open(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "no-such-bucket-here") || !strings.Contains(err.Error(), s.Endpoint()) || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("Open of a missing bucket: %v", err)
	}
	t.Log(err)
	cfg.Bucket = "created-" + strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-"))
	cfg.CreateBucket = true
	if _, err := Open(context.Background(), cfg); err != nil {
		t.Fatalf("Open with CreateBucket: %v", err)
	}
}

// TestUnreachable: a refused port and a server that never answers both
// fail Open within the timeout, naming the endpoint.
func TestUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	silent := l.Addr().String() // accepts (backlog) and never answers
	defer l.Close()
	l2, _ := net.Listen("tcp", "127.0.0.1:0")
	refused := l2.Addr().String()
	l2.Close()
	for _, addr := range []string{refused, silent} {
		cfg := Config{Endpoint: "http://" + addr, Bucket: "some-bucket", AccessKeyID: "k", SecretAccessKey: "s", Timeout: 2 * time.Second}
		start := time.Now()
		_, err := Open(context.Background(), cfg)
		took := time.Since(start)
		if err == nil || !strings.Contains(err.Error(), addr) {
			t.Fatalf("Open of %s: %v", addr, err)
		}
		if took > 5*time.Second {
			t.Fatalf("Open of %s took %s with a 2 s timeout", addr, took)
		}
		t.Logf("%s (%s)", err, took.Round(time.Millisecond))
	}
}

func ownServer(t *testing.T) (*testminio.Server, Config) {
	s := testminio.Start(t)
	cfg := config(s, s.Bucket(t))
	cfg.Timeout = 5 * time.Second
	return s, cfg
}

// TestStoppedMidWrite: the S3 server goes away during a multipart
// upload; Write or Publish fails, nothing is visible after it is back,
// and a new write succeeds.
func TestStoppedMidWrite(t *testing.T) {
	s, cfg := ownServer(t)
	d := open(t, cfg)
	ctx := context.Background()
	w, err := blob.CreateFor(ctx, d, "w")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(make([]byte, 6<<20)); err != nil {
		t.Fatal(err) // one part sent, the rest buffered
	}
	s.Kill()
	_, werr := w.Write(make([]byte, 6<<20))
	perr := w.Publish("w")
	if werr == nil && perr == nil {
		t.Fatal("Write and Publish succeeded with the server down")
	}
	t.Logf("write: %v; publish: %v", werr, perr)
	w.Close()
	s.Restart(t)
	if _, err := d.Stat(ctx, "w"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("after restart: %v, want nothing", err)
	}
	w, _ = blob.CreateFor(ctx, d, "w")
	w.Write(make([]byte, 11<<20))
	if err := w.Publish("w"); err != nil {
		t.Fatalf("a new write after restart: %v", err)
	}
	if fi, err := d.Stat(ctx, "w"); err != nil || fi.Size != 11<<20 {
		t.Fatalf("after the new write: %+v, %v", fi, err)
	}
}

// TestStoppedMidRead: a read cut off by the server stopping is an error,
// never an early EOF.
func TestStoppedMidRead(t *testing.T) {
	s, cfg := ownServer(t)
	d := open(t, cfg)
	ctx := context.Background()
	const size = 64 << 20
	w, _ := blob.CreateFor(ctx, d, "r")
	w.Write(make([]byte, size))
	if err := w.Publish("r"); err != nil {
		t.Fatal(err)
	}
	r, err := d.Open(ctx, "r")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := io.ReadFull(r, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	s.Kill()
	n, err := io.Copy(io.Discard, r)
	if err == nil {
		t.Fatalf("read %d more bytes of %d and no error with the server killed", n, size-(1<<20))
	}
	if n+(1<<20) == size {
		t.Logf("the whole blob was buffered in transit before the kill; err %v", err)
	}
	t.Logf("read %d more bytes, then %v", n, err)
	if _, err := r.ReadAt(make([]byte, 10), 0); err == nil {
		t.Fatal("ReadAt with the server killed succeeded")
	}
}

// TestSweepAbandoned: a process killed mid-upload leaves an incomplete
// multipart upload; another Dir (a restarted replica) sweeps it.
func TestSweepAbandoned(t *testing.T) {
	s := testminio.Shared(t)
	cfg := config(s, s.Bucket(t))
	ctx := context.Background()
	w, _ := blob.CreateFor(ctx, open(t, cfg), "abandoned")
	if _, err := w.Write(make([]byte, 6<<20)); err != nil {
		t.Fatal(err)
	}
	// w is never closed: its process "died".
	d := open(t, cfg)
	if n, err := d.Sweep(ctx, time.Now().Add(-time.Hour)); err != nil || n != 0 {
		t.Fatalf("Sweep of old leftovers: %d, %v", n, err)
	}
	if n, err := d.Sweep(ctx, time.Now().Add(time.Minute)); err != nil || n != 1 {
		t.Fatalf("Sweep: %d, %v; want the abandoned upload", n, err)
	}
	if n, err := d.Sweep(ctx, time.Now().Add(time.Minute)); err != nil || n != 0 {
		t.Fatalf("second Sweep: %d, %v", n, err)
	}
}
