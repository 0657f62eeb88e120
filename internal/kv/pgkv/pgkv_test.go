package pgkv_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/kv"
	"github.com/bos55/concordia/internal/kv/kvtest"
	"github.com/bos55/concordia/internal/kv/pgkv"
	"github.com/bos55/concordia/internal/testpg"
)

func TestMain(m *testing.M) { testpg.Main(m) }

func openURL(t testing.TB, url string) *pgkv.DB {
	t.Helper()
	db, err := pgkv.Open(context.Background(), url, pgkv.Options{Timeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func TestCompliance(t *testing.T) {
	srv := testpg.Shared(t)
	kvtest.Run(t, func(t *testing.T) kv.DB { return openURL(t, srv.CreateDB(t)) })
}

// TestComplianceShared is two replicas on one database.
func TestComplianceShared(t *testing.T) {
	srv := testpg.Shared(t)
	kvtest.RunShared(t, func(t *testing.T) (kv.DB, kv.DB) {
		url := srv.CreateDB(t)
		return openURL(t, url), openURL(t, url)
	})
}

// TestConcurrentOpen has replicas start at once on a new database: the
// migration lock keeps them from racing on the schema.
func TestConcurrentOpen(t *testing.T) {
	url := testpg.Shared(t).CreateDB(t)
	errs := make(chan error, 4)
	for i := 0; i < 4; i++ {
		go func() {
			db, err := pgkv.Open(context.Background(), url, pgkv.Options{})
			if err == nil {
				db.Close()
			}
			errs <- err
		}()
	}
	for i := 0; i < 4; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

func put(db kv.DB, k, v string) error {
	return db.Update(func(tx kv.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte("b"))
		if err != nil {
			return err
		}
		return b.Put([]byte(k), []byte(v))
	})
}

// TestRestartBetween: a restarted server breaks the pool's connections;
// the next Update after it is up again reconnects and succeeds.
func TestRestartBetween(t *testing.T) {
	srv := testpg.Start(t, testpg.Options{})
	db := openURL(t, srv.CreateDB(t))
	if err := put(db, "a", "1"); err != nil {
		t.Fatal(err)
	}
	srv.Restart(t)
	// The pool's connection died with the restart; begin notices on
	// its first write and dials anew, so this first Update succeeds.
	if err := put(db, "b", "2"); err != nil {
		t.Fatalf("Update after restart: %v", err)
	}
	var got string
	if err := db.View(func(tx kv.Tx) error { got = string(tx.Bucket([]byte("b")).Get([]byte("a"))); return nil }); err != nil {
		t.Fatal(err)
	}
	if got != "1" {
		t.Fatalf("after restart reads %q", got)
	}
}

// TestRestartDuring: the server restarts in the middle of an Update; the
// Update fails (the sticky error, whatever fn returned) and nothing of it
// is visible afterwards.
func TestRestartDuring(t *testing.T) {
	srv := testpg.Start(t, testpg.Options{})
	db := openURL(t, srv.CreateDB(t))
	if err := put(db, "a", "1"); err != nil {
		t.Fatal(err)
	}
	err := db.Update(func(tx kv.Tx) error {
		b := tx.Bucket([]byte("b"))
		if err := b.Put([]byte("a"), []byte("changed")); err != nil {
			return err
		}
		srv.Restart(t)
		// The read fails; Get cannot say so, the tx must.
		if v := b.Get([]byte("a")); v != nil {
			t.Errorf("Get after restart read %q", v)
		}
		b.Put([]byte("c"), []byte("3"))
		return nil
	})
	if err == nil {
		t.Fatal("Update across a restart succeeded")
	}
	t.Logf("Update across restart: %v", err)
	var a, c []byte
	for i := 0; i < 3; i++ {
		err = db.View(func(tx kv.Tx) error {
			b := tx.Bucket([]byte("b"))
			a, c = b.Get([]byte("a")), b.Get([]byte("c"))
			return nil
		})
		if err == nil {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	if string(a) != "1" || c != nil {
		t.Fatalf("after failed Update: a=%q c=%q, want 1 and absent", a, c)
	}
}

// TestLockLost: the connection holding a Lock dies with a restart; unlock
// must not panic, and the lock can be taken again.
func TestLockLost(t *testing.T) {
	srv := testpg.Start(t, testpg.Options{})
	db := openURL(t, srv.CreateDB(t))
	unlock, err := db.Lock(context.Background(), "L")
	if err != nil {
		t.Fatal(err)
	}
	srv.Restart(t)
	unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	u, err := db.Lock(ctx, "L")
	if err != nil {
		t.Fatal(err)
	}
	u()
}

func TestOpenNoServer(t *testing.T) {
	dir := t.TempDir()
	_, err := pgkv.Open(context.Background(), "postgres://concordia:secret@/x?host="+dir, pgkv.Options{ConnectTimeout: 2 * time.Second})
	if err == nil {
		t.Fatal("Open with no server succeeded")
	}
	msg := err.Error()
	t.Log(msg)
	if !strings.Contains(msg, "cannot reach") || !strings.Contains(msg, dir) {
		t.Fatalf("error does not say the server is unreachable at %s: %v", dir, msg)
	}
	if strings.Contains(msg, "secret") {
		t.Fatalf("error shows the password: %v", msg)
	}
}

func TestOpenMissingDatabase(t *testing.T) {
	srv := testpg.Shared(t)
	_, err := pgkv.Open(context.Background(), srv.URL("nosuchdb"), pgkv.Options{})
	if err == nil {
		t.Fatal("Open of a missing database succeeded")
	}
	t.Log(err)
	if !strings.Contains(err.Error(), `database "nosuchdb" does not exist`) {
		t.Fatalf("error does not name the missing database: %v", err)
	}
}

func TestBeginAfterClose(t *testing.T) {
	db := openURL(t, testpg.Shared(t).CreateDB(t))
	db.Close()
	if err := db.View(func(kv.Tx) error { return nil }); err == nil {
		t.Fatal("View on a closed DB succeeded")
	}
}

// TestStickyError: a read failed by a lost connection makes View and
// Commit fail even though fn saw only a missing key and returned nil.
func TestStickyError(t *testing.T) {
	srv := testpg.Start(t, testpg.Options{})
	db := openURL(t, srv.CreateDB(t))
	if err := put(db, "a", "1"); err != nil {
		t.Fatal(err)
	}
	err := db.View(func(tx kv.Tx) error {
		b := tx.Bucket([]byte("b"))
		srv.Restart(t)
		b.Get([]byte("a"))
		return nil
	})
	if err == nil {
		t.Fatal("View with a failed read succeeded")
	}
	t.Logf("View: %v", err)

	tx, err := db.Begin(true)
	if err != nil {
		t.Fatal(err)
	}
	b := tx.Bucket([]byte("b"))
	srv.Restart(t)
	b.Get([]byte("a"))
	if err := tx.Commit(); err == nil {
		t.Fatal("Commit after a failed read succeeded")
	}
	if err := tx.Rollback(); err != nil {
		t.Fatalf("Rollback after a failed Commit: %v", err)
	}
}
