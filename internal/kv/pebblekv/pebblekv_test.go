package pebblekv_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/kv"
	"github.com/bos55/concordia/internal/kv/kvtest"
	"github.com/bos55/concordia/internal/kv/pebblekv"
)

func open(t *testing.T) kv.DB {
	db, err := pebblekv.Open(filepath.Join(t.TempDir(), "index"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func TestCompliance(t *testing.T) { kvtest.Run(t, open) }

// A second handle on a held database waits out its timeout and says so,
// as bbolt's does: the server refuses to start beside another.
func TestHeld(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "index")
	db, err := pebblekv.Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := pebblekv.Open(dir, 100*time.Millisecond); !errors.Is(err, pebblekv.ErrTimeout) {
		t.Fatalf("second Open: %v, want ErrTimeout", err)
	}
}

// A commit that returned is on disk: a child process commits and is
// killed with SIGKILL right after; the parent finds every key.
func TestCommitSurvivesSIGKILL(t *testing.T) {
	if dir := os.Getenv("PEBBLEKV_CHILD"); dir != "" {
		db, err := pebblekv.Open(dir, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 50; i++ {
			err := db.Update(func(tx kv.Tx) error {
				b, err := tx.CreateBucketIfNotExists([]byte("b"))
				if err != nil {
					return err
				}
				return b.Put([]byte{byte(i)}, []byte("v"))
			})
			if err != nil {
				t.Fatal(err)
			}
		}
		os.Stdout.WriteString("committed\n")
		time.Sleep(time.Hour)
		return
	}
	dir := filepath.Join(t.TempDir(), "index")
	cmd := exec.Command(os.Args[0], "-test.run=^TestCommitSurvivesSIGKILL$")
	cmd.Env = append(os.Environ(), "PEBBLEKV_CHILD="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 10)
	if _, err := out.Read(buf); err != nil || string(buf) != "committed\n" {
		cmd.Process.Kill()
		t.Fatalf("child: %q %v", buf, err)
	}
	cmd.Process.Kill()
	cmd.Wait()
	db, err := pebblekv.Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.View(func(tx kv.Tx) error {
		b := tx.Bucket([]byte("b"))
		if b == nil {
			return errors.New("bucket lost")
		}
		if n := b.KeyN(); n != 50 {
			return errors.New("keys lost")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// After Close, a transaction is an error, not pebble's panic; Close
// waits for one still open.
func TestClosed(t *testing.T) {
	db, err := pebblekv.Open(filepath.Join(t.TempDir(), "index"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	tx, err := db.Begin(false)
	if err != nil {
		t.Fatal(err)
	}
	closed := make(chan error)
	go func() { closed <- db.Close() }()
	time.Sleep(20 * time.Millisecond)
	select {
	case <-closed:
		t.Fatal("Close returned with a transaction open")
	default:
	}
	if tx.Bucket([]byte("b")) != nil {
		t.Fatal("bucket in an empty index")
	}
	tx.Rollback()
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if err := db.View(func(kv.Tx) error { return nil }); !errors.Is(err, pebblekv.ErrClosed) {
		t.Fatalf("View after Close: %v", err)
	}
	if err := db.Update(func(kv.Tx) error { return nil }); !errors.Is(err, pebblekv.ErrClosed) {
		t.Fatalf("Update after Close: %v", err)
	}
}
