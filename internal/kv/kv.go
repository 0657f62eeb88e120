// Package kv is the upload store's index seen as buckets of ordered keys
// in serialisable transactions: the shape of bbolt, which the embedded
// store uses (boltkv), and which PostgreSQL gives several cache replicas
// sharing one index (pgkv). The store's logic is written once against it.
//
// The contract both keep, and kvtest checks:
//   - Update transactions are serialised across every process sharing the
//     index, and each sees all Updates committed before it;
//   - a View sees one consistent snapshot;
//   - ForEach visits a bucket's keys in byte order, and the function may
//     read and write other buckets meanwhile (not the one it walks);
//   - values returned are valid until the transaction ends.
//
// A read that fails (a lost database connection) cannot be told from a
// missing key by Get's signature, so the transaction remembers the error
// and View or Update returns it, whatever the function returned: a
// decision taken on a failed read is never committed.
package kv

import "context"

// DB is a transactional index.
type DB interface {
	// View runs fn in a read-only transaction.
	View(fn func(Tx) error) error
	// Update runs fn in a read-write transaction, committed when fn
	// returns nil.
	Update(fn func(Tx) error) error
	// Begin starts a transaction the caller ends with Commit or
	// Rollback (Rollback after Commit is a no-op).
	Begin(writable bool) (Tx, error)
	// Lock takes the named lock, held across transactions until the
	// returned function is called: in-process for an index one process
	// owns, shared by every process for a shared one. It orders what the
	// index cannot hold inside a transaction, such as creating and
	// deleting blob files.
	Lock(ctx context.Context, name string) (unlock func(), err error)
	// Shared reports whether other processes use the index at once, so
	// state a process keeps in memory must be in the index instead.
	Shared() bool
	Close() error
}

// Tx is one transaction.
type Tx interface {
	// Bucket is the named bucket, nil when it does not exist.
	Bucket(name []byte) Bucket
	CreateBucketIfNotExists(name []byte) (Bucket, error)
	DeleteBucket(name []byte) error
	Commit() error
	Rollback() error
}

// Bucket is an ordered map of byte keys to byte values.
type Bucket interface {
	// Get is the value of k, nil when absent (or when the read failed:
	// the transaction then fails too).
	Get(k []byte) []byte
	Put(k, v []byte) error
	Delete(k []byte) error
	// ForEach calls fn for every key in order; an error from fn stops
	// it and is returned.
	ForEach(fn func(k, v []byte) error) error
	// KeyN is the number of keys.
	KeyN() int
}
