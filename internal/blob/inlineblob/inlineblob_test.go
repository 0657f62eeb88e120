package inlineblob

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"path/filepath"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/blob"
	"github.com/bos55/concordia/internal/blob/blobtest"
	"github.com/bos55/concordia/internal/blob/diskblob"
	"github.com/bos55/concordia/internal/kv"
	"github.com/bos55/concordia/internal/kv/boltkv"
)

var bucket = []byte("inline")

func open(t *testing.T) (*Dir, kv.DB) {
	t.Helper()
	files, err := diskblob.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	db, err := boltkv.Open(filepath.Join(t.TempDir(), "index.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := db.Update(func(tx kv.Tx) error { _, err := tx.CreateBucketIfNotExists(bucket); return err }); err != nil {
		t.Fatal(err)
	}
	return New(files, db, bucket), db
}

// TestContract: with nothing inline, the Dir is its files.
func TestContract(t *testing.T) {
	blobtest.Run(t, func(t *testing.T) blob.Dir { d, _ := open(t); return d })
}

func put(t *testing.T, d *Dir, db kv.DB, name string, data []byte) {
	t.Helper()
	if err := db.Update(func(tx kv.Tx) error { return d.Put(tx, name, data, time.Unix(100, 5)) }); err != nil {
		t.Fatal(err)
	}
}

func read(t *testing.T, d *Dir, name string) []byte {
	t.Helper()
	r, err := d.Open(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if r.Size() != int64(len(b)) {
		t.Errorf("Size %d, read %d bytes", r.Size(), len(b))
	}
	return b
}

func publish(t *testing.T, d *Dir, name string, data []byte) {
	t.Helper()
	tmp, err := d.Create(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer tmp.Close()
	if _, err := tmp.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := tmp.Publish(name); err != nil {
		t.Fatal(err)
	}
}

// TestInline: a blob Put in a transaction is read, stated, listed once
// (also when a file of the name exists, which it hides) and removed with
// its file; a later Publish of the name replaces it.
func TestInline(t *testing.T) {
	d, db := open(t)
	ctx := t.Context()
	put(t, d, db, "a", []byte("inline bytes"))
	publish(t, d, "b", []byte("file bytes"))
	if got := read(t, d, "a"); string(got) != "inline bytes" {
		t.Errorf("Open(a) = %q", got)
	}
	fi, err := d.Stat(ctx, "a")
	if err != nil || fi.Size != 12 || !fi.ModTime.Equal(time.Unix(100, 5)) {
		t.Errorf("Stat(a) = %+v, %v", fi, err)
	}
	// A file under an inline name (a spill that raced a claim): one
	// listing, the inline bytes.
	if err := d.Files.(*diskblob.Dir).Remove(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	tmp, _ := d.Files.Create(ctx)
	tmp.Write([]byte("older file"))
	if err := tmp.Publish("a"); err != nil {
		t.Fatal(err)
	}
	tmp.Close()
	if got := read(t, d, "a"); string(got) != "inline bytes" {
		t.Errorf("Open(a) with a file beside = %q", got)
	}
	names := map[string]int{}
	if err := d.List(ctx, func(fi blob.Info) error { names[fi.Name]++; return nil }); err != nil {
		t.Fatal(err)
	}
	if len(names) != 2 || names["a"] != 1 || names["b"] != 1 {
		t.Errorf("List = %v, want a and b once each", names)
	}
	if err := d.Remove(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Open(ctx, "a"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Open after Remove: %v, want not exist", err)
	}
	if _, err := d.Files.Stat(ctx, "a"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the file stayed after Remove: %v", err)
	}
	// Publish replaces an inline blob.
	put(t, d, db, "c", []byte("old"))
	publish(t, d, "c", []byte("new file"))
	if got := read(t, d, "c"); string(got) != "new file" {
		t.Errorf("Open(c) after Publish = %q, want the new file", got)
	}
	// ReadAt and Seek, as ranges and tails use them.
	put(t, d, db, "e", []byte("0123456789"))
	r, err := d.Open(ctx, "e")
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 3)
	if _, err := r.ReadAt(buf, 4); err != nil || !bytes.Equal(buf, []byte("456")) {
		t.Errorf("ReadAt = %q, %v", buf, err)
	}
	if _, err := r.Seek(8, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	if rest, _ := io.ReadAll(r); string(rest) != "89" {
		t.Errorf("after Seek: %q", rest)
	}
	for _, bad := range []string{"", "..", "a/b"} {
		if err := db.Update(func(tx kv.Tx) error { return d.Put(tx, bad, nil, time.Now()) }); err == nil {
			t.Errorf("Put(%q) accepted", bad)
		}
	}
}

// TestRolledBack: a Put whose transaction fails publishes nothing.
func TestRolledBack(t *testing.T) {
	d, db := open(t)
	boom := errors.New("boom")
	err := db.Update(func(tx kv.Tx) error {
		if err := d.Put(tx, "x", []byte("never"), time.Now()); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatal(err)
	}
	if _, err := d.Stat(t.Context(), "x"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Stat of a rolled-back Put: %v, want not exist", err)
	}
}
