package pgkv

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

const (
	beginRead = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
	// READ COMMITTED is enough for writers: they are serialised by the
	// write lock, and each sees everything committed before it took it.
	beginWrite = "BEGIN ISOLATION LEVEL READ COMMITTED READ WRITE"
)

// retryable is a failure of a connection the server dropped (a restart,
// an idle timeout), rather than the server refusing or time running out.
func retryable(ctx context.Context, err error) bool {
	var pe *pgconn.PgError
	return ctx.Err() == nil && !errors.As(err, &pe)
}

// start begins a writable transaction: BEGIN and the write lock go in
// one round trip. A pooled connection found dead is replaced, which is
// safe because nothing has been done yet.
func (t *tx) start(ctx context.Context) error {
	for i := 0; ; i++ {
		b := &pgx.Batch{}
		b.Queue(beginWrite)
		b.Queue("SELECT pg_advisory_xact_lock($1)", writeLock)
		err := t.conn.SendBatch(ctx, b).Close()
		if err == nil {
			t.begun = true
			return nil
		}
		if i == 2 || !retryable(ctx, err) {
			return fmt.Errorf("pgkv: begin and take the write lock: %w", err)
		}
		if err := t.reacquire(ctx); err != nil {
			return err
		}
	}
}

// reacquire swaps a connection that failed before the transaction did
// anything for a fresh one; the pool discards the closed one.
func (t *tx) reacquire(ctx context.Context) error {
	t.conn.Conn().Close(ctx)
	t.conn.Release()
	c, err := t.db.pool.Acquire(ctx)
	if err != nil {
		t.conn = nil
		return fmt.Errorf("pgkv: acquire a connection: %w", err)
	}
	t.conn = c
	return nil
}

// ensure begins a read transaction not begun yet.
func (t *tx) ensure(ctx context.Context) error {
	if t.begun {
		return nil
	}
	for i := 0; ; i++ {
		_, err := t.conn.Exec(ctx, beginRead)
		if err == nil {
			t.begun = true
			return nil
		}
		if i == 2 || !retryable(ctx, err) {
			return fmt.Errorf("pgkv: begin: %w", err)
		}
		if err := t.reacquire(ctx); err != nil {
			return err
		}
	}
}

// queryRow runs a one-row query. The first statement of a read
// transaction goes out in one round trip with its BEGIN, which makes a
// View doing one lookup cost two round trips (this and ROLLBACK) rather
// than three. pgx.ErrNoRows is returned as is.
func (t *tx) queryRow(ctx context.Context, sql string, args []any, dest ...any) error {
	if t.begun {
		return t.conn.QueryRow(ctx, sql, args...).Scan(dest...)
	}
	for i := 0; ; i++ {
		b := &pgx.Batch{}
		b.Queue(beginRead)
		b.Queue(sql, args...)
		br := t.conn.SendBatch(ctx, b)
		_, err := br.Exec()
		if err == nil {
			t.begun = true
			err = br.QueryRow().Scan(dest...)
		}
		cerr := br.Close()
		if t.begun {
			if err == nil {
				err = cerr
			}
			return err
		}
		if i == 2 || !retryable(ctx, err) {
			return fmt.Errorf("pgkv: begin: %w", err)
		}
		if err := t.reacquire(ctx); err != nil {
			return err
		}
	}
}

func (t *tx) exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if err := t.ensure(ctx); err != nil {
		return pgconn.CommandTag{}, err
	}
	return t.conn.Exec(ctx, sql, args...)
}

func (t *tx) query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if err := t.ensure(ctx); err != nil {
		return nil, err
	}
	return t.conn.Query(ctx, sql, args...)
}

// end sends COMMIT or ROLLBACK if the transaction began, and returns the
// connection to the pool (which discards it if broken or still in a
// transaction).
func (t *tx) end(sql string) error {
	if t.conn == nil {
		return nil
	}
	defer func() {
		t.conn.Release()
		t.conn = nil
	}()
	if !t.begun {
		return nil
	}
	ctx, cancel := t.db.op()
	defer cancel()
	tag, err := t.conn.Exec(ctx, sql)
	if err != nil {
		t.conn.Conn().Close(ctx)
		return err
	}
	if sql == "COMMIT" && tag.String() != "COMMIT" {
		// COMMIT of a failed transaction answers ROLLBACK.
		return fmt.Errorf("pgkv: commit: the server rolled back (%s)", tag)
	}
	return nil
}
