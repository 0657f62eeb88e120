package pgkv

import (
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/bos55/concordia/internal/kv"
)

// writeLock is the advisory lock key every Update takes, so writers of
// every replica are serialised like bbolt's single writer. Lock uses the
// two-int key space, which PostgreSQL keeps apart from this one.
const writeLock int64 = 0x636f6e63 // "conc"

// ErrBucketNotFound is DeleteBucket's error for a bucket that is absent.
var ErrBucketNotFound = errors.New("pgkv: bucket not found")

// ErrTxClosed is returned by operations on a finished transaction.
var ErrTxClosed = errors.New("pgkv: transaction closed")

// tx is one transaction. err is sticky: a failed read cannot be told
// from a missing key by Get, so it is remembered and returned by Commit,
// View and Update, and nothing is committed after it.
type tx struct {
	db       *DB
	conn     *pgxpool.Conn // nil once ended
	writable bool
	begun    bool // BEGIN sent; a read transaction begins lazily
	err      error
	done     bool
}

var _ kv.Tx = (*tx)(nil)

func (d *DB) begin(writable bool) (*tx, error) {
	ctx, cancel := d.op()
	defer cancel()
	c, err := d.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("pgkv: acquire a connection: %w", err)
	}
	t := &tx{db: d, conn: c, writable: writable}
	if writable {
		if err := t.start(ctx); err != nil {
			t.Rollback()
			return nil, err
		}
	}
	return t, nil
}

// Begin starts a transaction ended by Commit or Rollback.
func (d *DB) Begin(writable bool) (kv.Tx, error) {
	t, err := d.begin(writable)
	if err != nil {
		return nil, err
	}
	return t, nil
}

// View runs fn in a REPEATABLE READ READ ONLY transaction: a snapshot.
func (d *DB) View(fn func(kv.Tx) error) error {
	t, err := d.begin(false)
	if err != nil {
		return err
	}
	defer t.Rollback()
	ferr := fn(t)
	if t.err != nil {
		return t.err
	}
	return ferr
}

// Update runs fn holding the write lock and commits when fn returns nil
// and no statement of it failed.
func (d *DB) Update(fn func(kv.Tx) error) error {
	t, err := d.begin(true)
	if err != nil {
		return err
	}
	defer t.Rollback()
	if err := fn(t); err != nil {
		if t.err != nil {
			return t.err
		}
		return err
	}
	return t.Commit()
}

// fail records the transaction's first error and returns err.
func (t *tx) fail(err error) error {
	if t.err == nil {
		t.err = err
	}
	return err
}

func (t *tx) check() error {
	if t.done {
		return ErrTxClosed
	}
	return t.err
}

// Bucket is nil only for a bucket known not to exist: when the lookup
// fails the transaction has failed, and a bucket whose every operation
// does nothing keeps callers from dereferencing nil on the way to the
// error View or Update returns. A bucket seen once is known to exist
// from then on (buckets are made at Open, alike on every replica, and
// deleted only by a migration of the embedded store), which spares a
// round trip per lookup.
func (t *tx) Bucket(name []byte) kv.Bucket {
	b := &bucket{tx: t, name: append([]byte(nil), name...)}
	if t.check() != nil {
		return b
	}
	if _, ok := t.db.known.Load(string(name)); ok {
		return b
	}
	ctx, cancel := t.db.op()
	defer cancel()
	var ok bool
	if err := t.queryRow(ctx, "SELECT EXISTS(SELECT 1 FROM buckets WHERE name=$1)", []any{name}, &ok); err != nil {
		t.fail(fmt.Errorf("pgkv: bucket %q: %w", name, err))
		return b
	}
	if !ok {
		return nil
	}
	t.db.known.Store(string(name), struct{}{})
	return b
}

func (t *tx) CreateBucketIfNotExists(name []byte) (kv.Bucket, error) {
	if err := t.check(); err != nil {
		return nil, err
	}
	if len(name) == 0 {
		return nil, errors.New("pgkv: bucket name required")
	}
	ctx, cancel := t.db.op()
	defer cancel()
	if _, err := t.exec(ctx, "INSERT INTO buckets(name) VALUES($1) ON CONFLICT DO NOTHING", name); err != nil {
		return nil, t.fail(fmt.Errorf("pgkv: create bucket %q: %w", name, err))
	}
	return &bucket{tx: t, name: append([]byte(nil), name...)}, nil
}

func (t *tx) DeleteBucket(name []byte) error {
	if err := t.check(); err != nil {
		return err
	}
	ctx, cancel := t.db.op()
	defer cancel()
	t.db.known.Delete(string(name))
	tag, err := t.exec(ctx, "DELETE FROM buckets WHERE name=$1", name)
	if err != nil {
		return t.fail(fmt.Errorf("pgkv: delete bucket %q: %w", name, err))
	}
	if tag.RowsAffected() == 0 {
		return ErrBucketNotFound
	}
	return nil
}

// Commit commits, unless a statement failed: then it rolls back and
// returns that failure.
func (t *tx) Commit() error {
	if t.done {
		return ErrTxClosed
	}
	if t.err != nil {
		t.Rollback()
		return t.err
	}
	t.done = true
	if err := t.end("COMMIT"); err != nil {
		return fmt.Errorf("pgkv: commit: %w", err)
	}
	return nil
}

// Rollback ends the transaction; after Commit it is a no-op.
func (t *tx) Rollback() error {
	if t.done {
		return nil
	}
	t.done = true
	if err := t.end("ROLLBACK"); err != nil {
		// The connection is gone, and the server has rolled back with it.
		return fmt.Errorf("pgkv: rollback: %w", err)
	}
	return nil
}
