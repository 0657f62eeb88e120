// Package boltkv is the kv index in one bbolt file: the embedded default,
// owned by one process.
package boltkv

import (
	"context"
	"errors"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/bos55/concordia/internal/kv"
)

// DB is a bbolt file as a kv.DB.
type DB struct {
	db    *bolt.DB
	locks kv.Locks
}

// Open opens (creating) the bbolt file at path. A file another process
// holds is bbolt's ErrTimeout after timeout.
func Open(path string, timeout time.Duration) (*DB, error) {
	// A 64 MiB first mapping (address space, not memory or disk): a
	// growing index is otherwise remapped, blocking every reader, at each
	// doubling from 32 KiB. Its file then grows 1 MiB at a time (each
	// growth fsynced), not by bbolt's 16 MiB once past the mapping.
	db, err := bolt.Open(path, 0o644, &bolt.Options{Timeout: timeout, InitialMmapSize: 64 << 20})
	if err != nil {
		return nil, err
	}
	db.AllocSize = 1 << 20
	return &DB{db: db}, nil
}

// Bolt is the underlying file, for tools that inspect it.
func (d *DB) Bolt() *bolt.DB { return d.db }

func (d *DB) View(fn func(kv.Tx) error) error {
	return d.db.View(func(tx *bolt.Tx) error { return fn(txn{tx}) })
}

func (d *DB) Update(fn func(kv.Tx) error) error {
	return d.db.Update(func(tx *bolt.Tx) error { return fn(txn{tx}) })
}

func (d *DB) Begin(writable bool) (kv.Tx, error) {
	tx, err := d.db.Begin(writable)
	if err != nil {
		return nil, err
	}
	return txn{tx}, nil
}

// Lock is an in-process lock, the file being owned by this process.
func (d *DB) Lock(ctx context.Context, name string) (func(), error) {
	return d.locks.Lock(ctx, "boltkv", name)
}

func (d *DB) Shared() bool { return false }

func (d *DB) Close() error { return d.db.Close() }

type txn struct{ tx *bolt.Tx }

func (t txn) Bucket(name []byte) kv.Bucket {
	b := t.tx.Bucket(name)
	if b == nil {
		return nil
	}
	return bucket{b}
}

func (t txn) CreateBucketIfNotExists(name []byte) (kv.Bucket, error) {
	b, err := t.tx.CreateBucketIfNotExists(name)
	if err != nil {
		return nil, err
	}
	return bucket{b}, nil
}

func (t txn) DeleteBucket(name []byte) error { return t.tx.DeleteBucket(name) }
func (t txn) Commit() error                  { return t.tx.Commit() }

func (t txn) Rollback() error {
	err := t.tx.Rollback()
	if errors.Is(err, bolterrors.ErrTxClosed) {
		return nil
	}
	return err
}

type bucket struct{ b *bolt.Bucket }

func (b bucket) Get(k []byte) []byte                      { return b.b.Get(k) }
func (b bucket) Put(k, v []byte) error                    { return b.b.Put(k, v) }
func (b bucket) Delete(k []byte) error                    { return b.b.Delete(k) }
func (b bucket) ForEach(fn func(k, v []byte) error) error { return b.b.ForEach(fn) }

// KeyN counts with a cursor: bbolt's Stats().KeyN reads the pages only,
// so misses keys put earlier in the same write transaction.
func (b bucket) KeyN() int {
	n := 0
	c := b.b.Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		n++
	}
	return n
}
