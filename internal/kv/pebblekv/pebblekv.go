// Package pebblekv is the kv index in a pebble database (a log-structured
// merge tree): the embedded default for a new upload store, owned by one
// process.
//
// Why not bbolt, which the store used first (boltkv): a bbolt commit
// writes every page its change dirtied, copy on write, in place
// (a narinfo commit dirties about nine, scattered), then fsyncs twice,
// once for them and once for the meta page. A pebble commit appends one
// record to its write-ahead log and fsyncs that once. On the disks we
// measured, that is half the time of a commit, and the narinfo commit is
// the one thing an upload of a small path waits on disk for. Reads, which
// bbolt serves straight from its map, cost pebble a lookup through its
// memtables and cached blocks: a few microseconds, against a request's
// hundred.
//
// Buckets are key prefixes: a data key is 'd', the bucket name's length
// as one byte, the name, then the key; a bucket exists while its marker
// key, 'b' then the name, does. Write transactions are serialised by a
// mutex around an indexed batch (which reads its own writes over the
// database, unchanged underneath it while the mutex is held) and commit
// with one synced write; a read transaction is a snapshot.
package pebblekv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/bos55/concordia/internal/kv"
)

// ErrTimeout is Open's error when another process (or another handle of
// this one) holds the database for longer than the timeout.
var ErrTimeout = errors.New("pebblekv: the index is held by another process")

// DB is a pebble database as a kv.DB.
type DB struct {
	db    *pebble.DB
	write sync.Mutex // held by the one write transaction
	locks kv.Locks
	// open counts transactions not yet ended, closed is set by Close:
	// pebble panics on a closed database, bbolt returns an error, and
	// the store relies on the error (a GC racing the server's shutdown).
	open   atomic.Int64
	closed atomic.Bool
	// failed is the commit error after which pebble takes no more
	// writes (its commit pipeline keeps failing): every later write
	// transaction fails with it at once, reads go on.
	failed atomic.Pointer[error]
}

// ErrClosed is the error of a transaction begun after Close.
var ErrClosed = errors.New("pebblekv: the index is closed")

// Open opens (creating) the pebble database in directory dir. One held
// by another process is retried until timeout, then ErrTimeout.
func Open(dir string, timeout time.Duration) (*DB, error) {
	if err := roomToOpen(dir); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(timeout)
	for {
		db, err := pebble.Open(dir, &pebble.Options{Logger: logger{}})
		if err == nil {
			return &DB{db: db}, nil
		}
		if !held(err) {
			return nil, fmt.Errorf("pebblekv: open %s: %w", dir, err)
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%w (%s): %v", ErrTimeout, dir, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// held reports whether Open failed on the database's lock file: the
// fcntl lock of another process (a bare EAGAIN or EACCES: a file that
// cannot be opened is EACCES too, but with its path), or pebble's own
// refusal of a second handle in this one.
func held(err error) bool {
	if strings.Contains(err.Error(), "lock held by current process") {
		return true
	}
	var pe *fs.PathError
	return (errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EACCES)) && !errors.As(err, &pe)
}

// openSlack is the disk an open needs beyond its logs' size: the
// manifest's and the options file's new versions, and a new log's first
// chunk.
const openSlack = 8 << 20

// roomToOpen refuses to open a database whose disk cannot take what
// pebble writes when it opens: it turns the logs left by the last run
// into a table first, and waits for that, retrying forever on a full
// disk. So a cache started on a full disk says so and stops, rather
// than hang.
func roomToOpen(dir string) error {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		if errors.Is(err, syscall.ENOENT) {
			return nil // a new database
		}
		return fmt.Errorf("pebblekv: %s: %w", dir, err)
	}
	var logs int64
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("pebblekv: %w", err)
	}
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".log") {
			if fi, err := e.Info(); err == nil {
				logs += fi.Size()
			}
		}
	}
	need, free := logs+openSlack, int64(st.Bavail)*int64(st.Bsize)
	if free < need {
		return fmt.Errorf("pebblekv: the disk of %s has %d bytes free, and opening the index needs about %d (it first writes its %d bytes of log into a table): free some space and start again", dir, free, need, logs)
	}
	return nil
}

// logger keeps pebble's routine messages (a log replayed, a compaction)
// out of the server's log and its errors in it.
type logger struct{}

func (logger) Infof(string, ...any) {}
func (logger) Errorf(format string, args ...any) {
	slog.Error("index: " + fmt.Sprintf(format, args...))
}
func (logger) Fatalf(format string, args ...any) {
	f := errFatal{msg: fmt.Sprintf("pebblekv: "+format, args...)}
	for _, a := range args {
		if err, ok := a.(error); ok && f.err == nil {
			f.err = err // the cause, for errors.Is (a full disk: ENOSPC)
		}
	}
	panic(f)
}

// Pebble is the underlying database, for tools that inspect it.
func (d *DB) Pebble() *pebble.DB { return d.db }

func (d *DB) View(fn func(kv.Tx) error) error {
	tx, err := d.Begin(false)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	err = fn(tx)
	if terr := tx.(*txn).err; terr != nil {
		return terr
	}
	return err
}

func (d *DB) Update(fn func(kv.Tx) error) error {
	tx, err := d.Begin(true)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := fn(tx); err != nil {
		if terr := tx.(*txn).err; terr != nil {
			return terr
		}
		return err
	}
	return tx.Commit()
}

func (d *DB) Begin(writable bool) (kv.Tx, error) {
	// Counted before closed is read, so that Close, which sets closed
	// before reading the count, either sees this transaction or is seen.
	d.open.Add(1)
	if d.closed.Load() {
		d.open.Add(-1)
		return nil, ErrClosed
	}
	if !writable {
		return &txn{d: d, snap: d.db.NewSnapshot()}, nil
	}
	if err := d.failed.Load(); err != nil {
		d.open.Add(-1)
		return nil, *err
	}
	d.write.Lock()
	return &txn{d: d, batch: d.db.NewIndexedBatch()}, nil
}

// Lock is an in-process lock, the database being owned by this process.
func (d *DB) Lock(ctx context.Context, name string) (func(), error) {
	return d.locks.Lock(ctx, "pebblekv", name)
}

func (d *DB) Shared() bool { return false }

// Close waits for the open transactions to end, as bbolt's does; later
// ones fail with ErrClosed.
func (d *DB) Close() error {
	if d.closed.Swap(true) {
		return ErrClosed
	}
	for d.open.Load() != 0 {
		time.Sleep(time.Millisecond)
	}
	return d.db.Close()
}

// reader is what a transaction reads through: its batch or its snapshot.
type reader interface {
	Get(key []byte) ([]byte, io.Closer, error)
	NewIter(o *pebble.IterOptions) (*pebble.Iterator, error)
}

type txn struct {
	d     *DB           // set while a write transaction holds d.write
	batch *pebble.Batch // a write transaction's
	snap  *pebble.Snapshot
	done  bool
	err   error // the first failed read, which fails the transaction
}

func (t *txn) reader() reader {
	if t.batch != nil {
		return t.batch
	}
	return t.snap
}

func (t *txn) fail(err error) {
	if t.err == nil {
		t.err = err
	}
}

var errReadOnly = errors.New("pebblekv: write in a read-only transaction")
var errDone = errors.New("pebblekv: transaction already ended")

func (t *txn) writable() error {
	switch {
	case t.done:
		return errDone
	case t.batch == nil:
		return errReadOnly
	}
	return nil
}

// get is the value of key, copied (a transaction's values must outlive
// the read), nil when absent.
func (t *txn) get(key []byte) []byte {
	if t.done {
		t.fail(errDone)
		return nil
	}
	v, c, err := t.reader().Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil
	}
	if err != nil {
		t.fail(fmt.Errorf("pebblekv: read: %w", err))
		return nil
	}
	out := append(make([]byte, 0, len(v)), v...)
	c.Close()
	return out
}

func marker(name []byte) []byte { return append([]byte{'b'}, name...) }

func prefix(name []byte) []byte {
	p := make([]byte, 0, 2+len(name))
	return append(append(p, 'd', byte(len(name))), name...)
}

// end is the first key after every key starting with p (p is never all
// 0xff: it starts with 'd').
func end(p []byte) []byte {
	e := append([]byte(nil), p...)
	for i := len(e) - 1; i >= 0; i-- {
		if e[i] < 0xff {
			e[i]++
			return e[:i+1]
		}
	}
	panic("pebblekv: no end for an all-0xff prefix")
}

func (t *txn) Bucket(name []byte) kv.Bucket {
	if len(name) == 0 || len(name) > 255 || t.get(marker(name)) == nil {
		return nil
	}
	return &bucket{t: t, prefix: prefix(name)}
}

func (t *txn) CreateBucketIfNotExists(name []byte) (kv.Bucket, error) {
	if err := t.writable(); err != nil {
		return nil, err
	}
	if len(name) == 0 || len(name) > 255 {
		return nil, fmt.Errorf("pebblekv: bucket name of %d bytes (1 to 255)", len(name))
	}
	if t.get(marker(name)) == nil {
		if err := t.batch.Set(marker(name), nil, nil); err != nil {
			return nil, err
		}
	}
	return &bucket{t: t, prefix: prefix(name)}, t.err
}

func (t *txn) DeleteBucket(name []byte) error {
	if err := t.writable(); err != nil {
		return err
	}
	if t.Bucket(name) == nil {
		if t.err != nil {
			return t.err
		}
		return fmt.Errorf("pebblekv: bucket %q not found", name)
	}
	p := prefix(name)
	if err := t.batch.DeleteRange(p, end(p), nil); err != nil {
		return err
	}
	return t.batch.Delete(marker(name), nil)
}

// Commit writes the batch with one synced write; a read transaction has
// nothing to commit and is ended.
func (t *txn) Commit() error {
	if t.done {
		return errDone
	}
	if t.batch == nil {
		return t.Rollback()
	}
	if t.err != nil {
		t.Rollback()
		return t.err
	}
	err := commit(t.batch)
	if errors.As(err, new(*fatalError)) {
		d := t.d
		refused := fmt.Errorf("%w; the index takes no more writes until the cache is restarted (with the disk space freed)", err)
		d.failed.CompareAndSwap(nil, &refused)
		err = refused
	}
	t.end()
	return err
}

func (t *txn) Rollback() error {
	if !t.done {
		t.end()
	}
	return nil
}

func (t *txn) end() {
	t.done = true
	if t.batch != nil {
		t.batch.Close()
		t.d.write.Unlock()
	} else {
		t.snap.Close()
	}
	t.d.open.Add(-1)
}

type bucket struct {
	t      *txn
	prefix []byte
}

func (b *bucket) key(k []byte) []byte {
	return append(append(make([]byte, 0, len(b.prefix)+len(k)), b.prefix...), k...)
}

func (b *bucket) Get(k []byte) []byte { return b.t.get(b.key(k)) }

func (b *bucket) Put(k, v []byte) error {
	if err := b.t.writable(); err != nil {
		return err
	}
	if len(k) == 0 {
		return errors.New("pebblekv: empty key")
	}
	return b.t.batch.Set(b.key(k), v, nil)
}

func (b *bucket) Delete(k []byte) error {
	if err := b.t.writable(); err != nil {
		return err
	}
	return b.t.batch.Delete(b.key(k), nil)
}

// ForEach walks the bucket in key order; keys and values are copies,
// valid past the step that read them, as bbolt's are for the
// transaction.
func (b *bucket) ForEach(fn func(k, v []byte) error) error {
	if b.t.done {
		return errDone
	}
	it, err := b.t.reader().NewIter(&pebble.IterOptions{LowerBound: b.prefix, UpperBound: end(b.prefix)})
	if err != nil {
		b.t.fail(err)
		return err
	}
	for ok := it.First(); ok; ok = it.Next() {
		k := append([]byte(nil), it.Key()[len(b.prefix):]...)
		v, err := it.ValueAndErr()
		if err != nil {
			it.Close()
			b.t.fail(fmt.Errorf("pebblekv: walk: %w", err))
			return b.t.err
		}
		if err := fn(k, append(make([]byte, 0, len(v)), v...)); err != nil {
			it.Close()
			return err
		}
	}
	if err := it.Close(); err != nil {
		b.t.fail(fmt.Errorf("pebblekv: walk: %w", err))
		return b.t.err
	}
	return nil
}

func (b *bucket) KeyN() int {
	if b.t.done {
		return 0
	}
	it, err := b.t.reader().NewIter(&pebble.IterOptions{LowerBound: b.prefix, UpperBound: end(b.prefix)})
	if err != nil {
		b.t.fail(err)
		return 0
	}
	n := 0
	for ok := it.First(); ok; ok = it.Next() {
		n++
	}
	if err := it.Close(); err != nil {
		b.t.fail(err)
	}
	return n
}

// errFatal is the panic of logger.Fatalf, which pebble calls when a
// commit fails (the disk is full, or its log could not be synced).
type errFatal struct {
	msg string
	err error
}

// fatalError is such a failure as commit returns it.
type fatalError struct {
	msg string
	err error
}

func (e *fatalError) Error() string { return e.msg }
func (e *fatalError) Unwrap() error { return e.err }

// commit commits b synced. pebble treats a failed commit as fatal (its
// logger's Fatalf, which must not return); the panic that is our Fatalf
// is turned back into the error here, so that a full disk refuses
// uploads, as bbolt's error did, instead of stopping the server, which
// goes on serving what it has. Unlike bbolt's, pebble's commits do not
// recover once space is freed: the handle has to be opened again.
func commit(b *pebble.Batch) (err error) {
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(errFatal)
			if !ok {
				panic(r)
			}
			err = &fatalError{f.msg, f.err}
		}
	}()
	return b.Commit(pebble.Sync)
}
