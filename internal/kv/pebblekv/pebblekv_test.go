package pebblekv_test

import (
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
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
	kill := child(t, "TestCommitSurvivesSIGKILL", "PEBBLEKV_CHILD="+dir, "committed\n")
	kill()
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

// fullDisk mounts a small tmpfs for the test (root only: skipped
// otherwise) and fills all but room bytes of it with a file it returns.
func fullDisk(t *testing.T, size, room int64) (dir, filler string) {
	t.Helper()
	dir = t.TempDir()
	if err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+strconv.FormatInt(size, 10), "tmpfs", dir).Run(); err != nil {
		t.Skipf("cannot mount a tmpfs: %v", err)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	filler = filepath.Join(dir, "filler")
	if err := os.WriteFile(filler, make([]byte, size-room), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir, filler
}

// TestDiskFull: a commit on a full disk is an error, not pebble's fatal
// exit; the writes after it are refused at once saying what to do, reads
// go on; opening the index on the still full disk says so instead of
// waiting forever; once space is freed it opens with every key committed
// before the failure.
func TestDiskFull(t *testing.T) {
	fs, filler := fullDisk(t, 64<<20, 12<<20)
	dir := filepath.Join(fs, "index")
	db, err := pebblekv.Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	val := make([]byte, 60000)
	put := func(db kv.DB, k int) error {
		return db.Update(func(tx kv.Tx) error {
			b, err := tx.CreateBucketIfNotExists([]byte("b"))
			if err != nil {
				return err
			}
			return b.Put([]byte(strconv.Itoa(k)), val)
		})
	}
	committed := 0
	for ; committed < 1000; committed++ {
		if err := put(db, committed); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("commit %d: %v, want the disk's error, ENOSPC (the store answers 507 for it)", committed, err)
			}
			break
		}
	}
	if committed == 0 || committed == 1000 {
		t.Fatalf("%d commits before the disk was full", committed)
	}
	if err := put(db, 5000); err == nil || !strings.Contains(err.Error(), "restarted") {
		t.Fatalf("a write after the failure: %v, want it refused saying to restart", err)
	}
	err = db.View(func(tx kv.Tx) error {
		if v := tx.Bucket([]byte("b")).Get([]byte("0")); len(v) != len(val) {
			return errors.New("an earlier key is gone")
		}
		return nil
	})
	if err != nil {
		t.Fatalf("read after the failure: %v", err)
	}
	db.Close() // its error is the commit's again

	if _, err := pebblekv.Open(dir, time.Second); err == nil || !strings.Contains(err.Error(), "free some space") {
		t.Fatalf("open on the full disk: %v, want it refused", err)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	db, err = pebblekv.Open(dir, time.Second)
	if err != nil {
		t.Fatalf("open with space freed: %v", err)
	}
	defer db.Close()
	if err := put(db, 6000); err != nil {
		t.Fatalf("write after reopening: %v", err)
	}
	err = db.View(func(tx kv.Tx) error {
		b := tx.Bucket([]byte("b"))
		for k := 0; k < committed; k++ {
			if len(b.Get([]byte(strconv.Itoa(k)))) != len(val) {
				return errors.New("key " + strconv.Itoa(k) + " lost")
			}
		}
		if b.Get([]byte(strconv.Itoa(committed))) != nil {
			return errors.New("the failed commit is there")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestHeldByAnotherProcess: the fcntl lock of another process is waited
// for and then ErrTimeout, as a second handle in this one is.
func TestHeldByAnotherProcess(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "index")
	if os.Getenv("PEBBLEKV_HOLD") != "" {
		db, err := pebblekv.Open(os.Getenv("PEBBLEKV_HOLD"), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		os.Stdout.WriteString("open\n")
		time.Sleep(time.Hour)
		return
	}
	defer child(t, "TestHeldByAnotherProcess", "PEBBLEKV_HOLD="+dir, "open\n")()
	if _, err := pebblekv.Open(dir, 200*time.Millisecond); !errors.Is(err, pebblekv.ErrTimeout) {
		t.Fatalf("Open beside another process: %v, want ErrTimeout", err)
	}
}

// child runs test name again in a child process with env set, waits for
// it to print ready, and returns what kills it (SIGKILL) and reaps it.
func child(t *testing.T, name, env, ready string) (kill func()) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+name+"$")
	cmd.Env = append(os.Environ(), env)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	kill = func() { cmd.Process.Kill(); cmd.Wait() }
	buf := make([]byte, len(ready))
	if _, err := io.ReadFull(out, buf); err != nil || string(buf) != ready {
		kill()
		t.Fatalf("child: %q %v", buf, err)
	}
	return kill
}
