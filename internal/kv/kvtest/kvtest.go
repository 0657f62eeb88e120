// Package kvtest is the compliance suite for kv.DB implementations: the
// contract stated in package kv, checked the same way for bbolt and
// PostgreSQL so the store's logic can rely on it whichever is in use.
package kvtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/kv"
)

var errAbort = errors.New("kvtest: abort")

// Run checks the contract for one handle; open returns a fresh, empty
// index closed by the caller's cleanup.
func Run(t *testing.T, open func(t *testing.T) kv.DB) {
	t.Run("GetPutDelete", func(t *testing.T) { testGetPutDelete(t, open(t)) })
	t.Run("ForEachOrder", func(t *testing.T) { testForEachOrder(t, open(t)) })
	t.Run("Buckets", func(t *testing.T) { testBuckets(t, open(t)) })
	t.Run("UpdateRollback", func(t *testing.T) { testUpdateRollback(t, open(t)) })
	t.Run("BeginCommitRollback", func(t *testing.T) { testBegin(t, open(t)) })
	t.Run("ForEachOtherBuckets", func(t *testing.T) { testForEachOther(t, open(t)) })
	t.Run("ReadOnlyView", func(t *testing.T) { testReadOnly(t, open(t)) })
	t.Run("ValuesValidForTx", func(t *testing.T) { testValuesValid(t, open(t)) })
	t.Run("LargeValues", func(t *testing.T) { testLarge(t, open(t)) })
	t.Run("ConcurrentIncrements", func(t *testing.T) {
		db := open(t)
		testIncrements(t, db, db)
	})
	t.Run("LockInProcess", func(t *testing.T) {
		db := open(t)
		testLock(t, db, db)
	})
	t.Run("LockCancel", func(t *testing.T) {
		db := open(t)
		testLockCancel(t, db, db)
	})
}

// RunShared checks what two handles on one index (two replicas) must
// see of each other; open2 returns them for a fresh, empty index.
func RunShared(t *testing.T, open2 func(t *testing.T) (kv.DB, kv.DB)) {
	t.Run("SharedVisibility", func(t *testing.T) {
		a, b := open2(t)
		if !a.Shared() || !b.Shared() {
			t.Fatal("Shared() is false for a shared index")
		}
		put(t, a, "b", "k", "v")
		if got := get(t, b, "b", "k"); got != "v" {
			t.Fatalf("other handle reads %q, want v", got)
		}
	})
	t.Run("SnapshotView", func(t *testing.T) {
		a, b := open2(t)
		testSnapshot(t, a, b)
	})
	t.Run("ConcurrentIncrements", func(t *testing.T) {
		a, b := open2(t)
		testIncrements(t, a, b)
	})
	t.Run("Lock", func(t *testing.T) {
		a, b := open2(t)
		testLock(t, a, b)
	})
	t.Run("LockCancel", func(t *testing.T) {
		a, b := open2(t)
		testLockCancel(t, a, b)
	})
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func put(t *testing.T, db kv.DB, bucket, k, v string) {
	t.Helper()
	must(t, db.Update(func(tx kv.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte(bucket))
		if err != nil {
			return err
		}
		return b.Put([]byte(k), []byte(v))
	}))
}

// get is the value, "<absent>" when the key or bucket is missing.
func get(t *testing.T, db kv.DB, bucket, k string) string {
	t.Helper()
	got := "<absent>"
	must(t, db.View(func(tx kv.Tx) error {
		b := tx.Bucket([]byte(bucket))
		if b == nil {
			return nil
		}
		if v := b.Get([]byte(k)); v != nil {
			got = string(v)
		}
		return nil
	}))
	return got
}

func testGetPutDelete(t *testing.T, db kv.DB) {
	must(t, db.Update(func(tx kv.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte("b"))
		if err != nil {
			return err
		}
		if v := b.Get([]byte("k")); v != nil {
			return fmt.Errorf("absent key reads %q", v)
		}
		must(t, b.Put([]byte("k"), []byte("v1")))
		must(t, b.Put([]byte("k"), []byte("v2")))
		must(t, b.Put([]byte("empty"), []byte{}))
		if v := b.Get([]byte("k")); string(v) != "v2" {
			return fmt.Errorf("own write reads %q, want v2", v)
		}
		return nil
	}))
	must(t, db.View(func(tx kv.Tx) error {
		b := tx.Bucket([]byte("b"))
		if b == nil {
			return errors.New("bucket missing after commit")
		}
		if v := b.Get([]byte("empty")); v == nil || len(v) != 0 {
			return fmt.Errorf("empty value reads %v, want empty non-nil", v)
		}
		if v := b.Get([]byte("nope")); v != nil {
			return fmt.Errorf("absent reads %q", v)
		}
		return nil
	}))
	must(t, db.Update(func(tx kv.Tx) error {
		b := tx.Bucket([]byte("b"))
		must(t, b.Delete([]byte("k")))
		must(t, b.Delete([]byte("never"))) // deleting an absent key is fine
		return nil
	}))
	if got := get(t, db, "b", "k"); got != "<absent>" {
		t.Fatalf("deleted key reads %q", got)
	}
}

func testForEachOrder(t *testing.T, db kv.DB) {
	keys := [][]byte{
		{0x00}, {0x00, 0x00}, {0x00, 0xff}, {0x01}, []byte("a"), []byte("a\x00"),
		[]byte("ab"), []byte("b"), {0x7f}, {0x80}, {0xfe, 0xff}, {0xff}, {0xff, 0x00}, {0xff, 0xff},
	}
	// Enough keys to cross any page boundary of an implementation.
	for i := 0; i < 2500; i++ {
		keys = append(keys, []byte(fmt.Sprintf("n%05d", i)))
	}
	must(t, db.Update(func(tx kv.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte("order"))
		if err != nil {
			return err
		}
		for i := len(keys) - 1; i >= 0; i-- { // insert out of order
			if err := b.Put(keys[i], append([]byte("v"), keys[i]...)); err != nil {
				return err
			}
		}
		return nil
	}))
	var seen [][]byte
	must(t, db.View(func(tx kv.Tx) error {
		b := tx.Bucket([]byte("order"))
		if n := b.KeyN(); n != len(keys) {
			return fmt.Errorf("KeyN %d, want %d", n, len(keys))
		}
		return b.ForEach(func(k, v []byte) error {
			if !bytes.Equal(v, append([]byte("v"), k...)) {
				return fmt.Errorf("key %x has value %x", k, v)
			}
			seen = append(seen, append([]byte(nil), k...))
			return nil
		})
	}))
	if len(seen) != len(keys) {
		t.Fatalf("ForEach saw %d keys, want %d", len(seen), len(keys))
	}
	for i := 1; i < len(seen); i++ {
		if bytes.Compare(seen[i-1], seen[i]) >= 0 {
			t.Fatalf("ForEach out of byte order: %x before %x", seen[i-1], seen[i])
		}
	}
	// An error from fn stops the walk and is returned.
	n := 0
	err := db.View(func(tx kv.Tx) error {
		return tx.Bucket([]byte("order")).ForEach(func(k, v []byte) error {
			n++
			if n == 3 {
				return errAbort
			}
			return nil
		})
	})
	if !errors.Is(err, errAbort) || n != 3 {
		t.Fatalf("ForEach after fn error: err %v after %d keys", err, n)
	}
}

func testBuckets(t *testing.T, db kv.DB) {
	must(t, db.View(func(tx kv.Tx) error {
		if tx.Bucket([]byte("none")) != nil {
			return errors.New("absent bucket is not nil")
		}
		return nil
	}))
	put(t, db, "x", "k", "v")
	put(t, db, "x", "k2", "v2") // CreateBucketIfNotExists on an existing bucket keeps it
	if got := get(t, db, "x", "k"); got != "v" {
		t.Fatalf("reads %q after second CreateBucketIfNotExists", got)
	}
	put(t, db, "y", "k", "other")
	must(t, db.Update(func(tx kv.Tx) error { return tx.DeleteBucket([]byte("x")) }))
	must(t, db.View(func(tx kv.Tx) error {
		if tx.Bucket([]byte("x")) != nil {
			return errors.New("deleted bucket still there")
		}
		if tx.Bucket([]byte("y")) == nil {
			return errors.New("deleting one bucket removed another")
		}
		return nil
	}))
	if err := db.Update(func(tx kv.Tx) error { return tx.DeleteBucket([]byte("x")) }); err == nil {
		t.Fatal("deleting an absent bucket succeeded")
	}
	// A recreated bucket starts empty.
	must(t, db.Update(func(tx kv.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte("x"))
		if err != nil {
			return err
		}
		if n := b.KeyN(); n != 0 {
			return fmt.Errorf("recreated bucket has %d keys", n)
		}
		return nil
	}))
}

func testUpdateRollback(t *testing.T, db kv.DB) {
	put(t, db, "b", "keep", "1")
	err := db.Update(func(tx kv.Tx) error {
		b := tx.Bucket([]byte("b"))
		must(t, b.Put([]byte("keep"), []byte("2")))
		must(t, b.Put([]byte("new"), []byte("x")))
		if _, err := tx.CreateBucketIfNotExists([]byte("newbucket")); err != nil {
			return err
		}
		return errAbort
	})
	if !errors.Is(err, errAbort) {
		t.Fatalf("Update returned %v, want fn's error", err)
	}
	if got := get(t, db, "b", "keep"); got != "1" {
		t.Fatalf("rolled back Put visible: %q", got)
	}
	if got := get(t, db, "b", "new"); got != "<absent>" {
		t.Fatalf("rolled back Put visible: %q", got)
	}
	if get(t, db, "newbucket", "k"); bucketExists(t, db, "newbucket") {
		t.Fatal("rolled back bucket visible")
	}
}

func bucketExists(t *testing.T, db kv.DB, name string) bool {
	t.Helper()
	var ok bool
	must(t, db.View(func(tx kv.Tx) error { ok = tx.Bucket([]byte(name)) != nil; return nil }))
	return ok
}

func testBegin(t *testing.T, db kv.DB) {
	tx, err := db.Begin(true)
	must(t, err)
	b, err := tx.CreateBucketIfNotExists([]byte("b"))
	must(t, err)
	must(t, b.Put([]byte("k"), []byte("v")))
	must(t, tx.Commit())
	if err := tx.Rollback(); err != nil {
		t.Fatalf("Rollback after Commit: %v", err)
	}
	if got := get(t, db, "b", "k"); got != "v" {
		t.Fatalf("committed Begin tx reads %q", got)
	}

	tx, err = db.Begin(true)
	must(t, err)
	must(t, tx.Bucket([]byte("b")).Put([]byte("k"), []byte("rolled")))
	must(t, tx.Rollback())
	if got := get(t, db, "b", "k"); got != "v" {
		t.Fatalf("rolled back Begin tx visible: %q", got)
	}

	rtx, err := db.Begin(false)
	must(t, err)
	if v := rtx.Bucket([]byte("b")).Get([]byte("k")); string(v) != "v" {
		t.Fatalf("read tx reads %q", v)
	}
	must(t, rtx.Rollback())
}

// testForEachOther walks one bucket while reading and writing others, as
// the store does, with more keys than one page.
func testForEachOther(t *testing.T, db kv.DB) {
	must(t, db.Update(func(tx kv.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte("walk"))
		if err != nil {
			return err
		}
		o, err := tx.CreateBucketIfNotExists([]byte("other"))
		if err != nil {
			return err
		}
		for i := 0; i < 1500; i++ {
			if err := b.Put([]byte(fmt.Sprintf("k%04d", i)), []byte(fmt.Sprint(i))); err != nil {
				return err
			}
		}
		return o.Put([]byte("seed"), []byte("s"))
	}))
	must(t, db.Update(func(tx kv.Tx) error {
		w, o := tx.Bucket([]byte("walk")), tx.Bucket([]byte("other"))
		n := 0
		err := w.ForEach(func(k, v []byte) error {
			if o.Get([]byte("seed")) == nil {
				return errors.New("other bucket unreadable inside ForEach")
			}
			n++
			return o.Put(append([]byte("copy-"), k...), v)
		})
		if err != nil {
			return err
		}
		if n != 1500 {
			return fmt.Errorf("walked %d keys, want 1500", n)
		}
		if got := o.KeyN(); got != 1501 {
			return fmt.Errorf("other has %d keys, want 1501", got)
		}
		return nil
	}))
	if got := get(t, db, "other", "copy-k1499"); got != "1499" {
		t.Fatalf("write inside ForEach reads %q", got)
	}
}

func testLarge(t *testing.T, db kv.DB) {
	big := make([]byte, 4<<20)
	for i := range big {
		big[i] = byte(i * 7)
	}
	must(t, db.Update(func(tx kv.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte("big"))
		if err != nil {
			return err
		}
		return b.Put([]byte("k"), big)
	}))
	must(t, db.View(func(tx kv.Tx) error {
		v := tx.Bucket([]byte("big")).Get([]byte("k"))
		if !bytes.Equal(v, big) {
			return fmt.Errorf("large value reads %d bytes, differs", len(v))
		}
		return nil
	}))
}

// testIncrements has goroutines on two handles increment one counter:
// the exact total shows Updates are serialised and each sees the last.
func testIncrements(t *testing.T, a, b kv.DB) {
	put(t, a, "c", "n", "0")
	const workers, each = 4, 25
	var wg sync.WaitGroup
	errs := make(chan error, 2*workers)
	for i := 0; i < 2*workers; i++ {
		db := a
		if i%2 == 1 {
			db = b
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < each; j++ {
				err := db.Update(func(tx kv.Tx) error {
					bk := tx.Bucket([]byte("c"))
					var n int
					fmt.Sscan(string(bk.Get([]byte("n"))), &n)
					return bk.Put([]byte("n"), []byte(fmt.Sprint(n+1)))
				})
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got, want := get(t, b, "c", "n"), fmt.Sprint(2*workers*each); got != want {
		t.Fatalf("counter %s, want %s: Updates not serialised", got, want)
	}
}

// testSnapshot checks a View on a sees one snapshot while b commits an
// Update changing two keys in between its reads.
func testSnapshot(t *testing.T, a, b kv.DB) {
	must(t, a.Update(func(tx kv.Tx) error {
		bk, err := tx.CreateBucketIfNotExists([]byte("s"))
		if err != nil {
			return err
		}
		if err := bk.Put([]byte("x"), []byte("1")); err != nil {
			return err
		}
		return bk.Put([]byte("y"), []byte("1"))
	}))
	must(t, a.View(func(tx kv.Tx) error {
		bk := tx.Bucket([]byte("s"))
		x := string(bk.Get([]byte("x")))
		must(t, b.Update(func(tx kv.Tx) error {
			bk := tx.Bucket([]byte("s"))
			if err := bk.Put([]byte("x"), []byte("2")); err != nil {
				return err
			}
			return bk.Put([]byte("y"), []byte("2"))
		}))
		y := string(bk.Get([]byte("y")))
		if x != "1" || y != "1" {
			return fmt.Errorf("View saw x=%s y=%s across a concurrent commit, want 1 1", x, y)
		}
		return nil
	}))
	if got := get(t, a, "s", "y"); got != "2" {
		t.Fatalf("after the commit reads %q", got)
	}
}

// testLock checks the lock excludes holders on a and b, and is released.
func testLock(t *testing.T, a, b kv.DB) {
	ctx := context.Background()
	unlock, err := a.Lock(ctx, "L")
	must(t, err)
	got := make(chan func(), 1)
	go func() {
		u, err := b.Lock(ctx, "L")
		if err != nil {
			t.Error(err)
			got <- nil
			return
		}
		got <- u
	}()
	select {
	case <-got:
		t.Fatal("second Lock taken while held")
	case <-time.After(300 * time.Millisecond):
	}
	// Another name is independent.
	u2, err := b.Lock(ctx, "other")
	must(t, err)
	u2()
	unlock()
	unlock() // twice is harmless
	select {
	case u := <-got:
		if u != nil {
			u()
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Lock not taken after unlock")
	}
	// Mutual exclusion under contention.
	var mu sync.Mutex
	inside := 0
	var wg sync.WaitGroup
	for i := 0; i < 6; i++ {
		db := a
		if i%2 == 1 {
			db = b
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 5; j++ {
				u, err := db.Lock(ctx, "C")
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				inside++
				if inside != 1 {
					t.Errorf("%d holders of one lock", inside)
				}
				mu.Unlock()
				time.Sleep(time.Millisecond)
				mu.Lock()
				inside--
				mu.Unlock()
				u()
			}
		}()
	}
	wg.Wait()
}

func testLockCancel(t *testing.T, a, b kv.DB) {
	unlock, err := a.Lock(context.Background(), "L")
	must(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	if u, err := b.Lock(ctx, "L"); err == nil {
		u()
		t.Fatal("Lock taken while held")
	} else if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("waiting Lock ended by %v, want the context's deadline", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("cancelled Lock returned after %v", d)
	}
	// The abandoned wait leaves nothing behind: once released, the lock
	// can be taken from either handle.
	unlock()
	for _, db := range []kv.DB{b, a} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		u, err := db.Lock(ctx, "L")
		cancel()
		if err != nil {
			t.Fatalf("Lock after a cancelled wait: %v", err)
		}
		u()
	}
}

// testReadOnly: a View cannot write, and its attempt leaves no trace.
func testReadOnly(t *testing.T, db kv.DB) {
	put(t, db, "b", "k", "v")
	err := db.View(func(tx kv.Tx) error {
		return tx.Bucket([]byte("b")).Put([]byte("k"), []byte("w"))
	})
	if err == nil {
		t.Fatal("Put in a View succeeded")
	}
	if got := get(t, db, "b", "k"); got != "v" {
		t.Fatalf("Put in a View visible: %q", got)
	}
}

// testValuesValid: a value read stays intact while the transaction goes
// on reading and writing.
func testValuesValid(t *testing.T, db kv.DB) {
	put(t, db, "b", "k", "first")
	must(t, db.Update(func(tx kv.Tx) error {
		b := tx.Bucket([]byte("b"))
		v := b.Get([]byte("k"))
		for i := 0; i < 100; i++ {
			if err := b.Put([]byte(fmt.Sprintf("other%03d", i)), bytes.Repeat([]byte("x"), 1000)); err != nil {
				return err
			}
			b.Get([]byte(fmt.Sprintf("other%03d", i)))
		}
		if string(v) != "first" {
			return fmt.Errorf("value read earlier in the tx now %q", v)
		}
		return nil
	}))
}
