package zstdcache

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func indexRecord(t *testing.T, c *Cache, key string) (record, bool) {
	t.Helper()
	var r record
	var ok bool
	err := c.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketName).Get([]byte(key)); v != nil {
			r, ok = unmarshalRecord(v)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return r, ok
}

// TestHitsAreBatched: a hit touches memory only; the new access time
// reaches bbolt with the next flush, in one write transaction.
func TestHitsAreBatched(t *testing.T) {
	c, err := Open(t.TempDir(), 1<<30, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	produce := func(_ context.Context, w io.Writer) error {
		_, err := w.Write(bytes.Repeat([]byte("nar "), 1000))
		return err
	}
	get := func() {
		e, err := c.Get(context.Background(), "k", produce)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, e)
		e.Close()
	}
	get()
	if err := c.flush(); err != nil {
		t.Fatal(err)
	}
	before, ok := indexRecord(t, c, "k")
	if !ok || !before.complete || before.size == 0 {
		t.Fatalf("record after store: %+v %v", before, ok)
	}
	writes := writeCount(c)
	time.Sleep(2 * time.Millisecond)
	for range 100 {
		get()
	}
	if got := writeCount(c); got != writes {
		t.Fatalf("hits wrote to bbolt: %d page writes, was %d", got, writes)
	}
	if r, _ := indexRecord(t, c, "k"); r.atime != before.atime {
		t.Fatal("access time persisted without a flush")
	}
	if err := c.flush(); err != nil {
		t.Fatal(err)
	}
	after, _ := indexRecord(t, c, "k")
	if after.atime <= before.atime || after.size != before.size {
		t.Fatalf("flush did not persist the access time: %+v -> %+v", before, after)
	}
}

// TestOpenDropsIncompleteRecords: a record without the complete flag is
// never served, even when a file of the right size exists.
func TestOpenDropsIncompleteRecords(t *testing.T) {
	dir := t.TempDir()
	c, err := Open(dir, 1<<30, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	produce := func(_ context.Context, w io.Writer) error { _, err := w.Write([]byte("nar")); return err }
	e, err := c.Get(context.Background(), "k", produce)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, e)
	e.Close()
	if err := c.flush(); err != nil {
		t.Fatal(err)
	}
	r, _ := indexRecord(t, c, "k")
	r.complete = false
	c.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketName).Put([]byte("k"), r.marshal()) })
	c.mu.Lock()
	delete(c.pending, "k")
	c.mu.Unlock()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	c, err = Open(dir, 1<<30, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if st := c.Stats(); st.Entries != 0 {
		t.Fatalf("incomplete record served: %+v", st)
	}
	if _, ok := indexRecord(t, c, "k"); ok {
		t.Fatal("incomplete record kept")
	}
}

func writeCount(c *Cache) int64 {
	st := c.db.Stats()
	return st.TxStats.GetWrite()
}
