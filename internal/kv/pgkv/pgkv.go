// Package pgkv is the kv index in PostgreSQL, shared by several cache
// replicas: Updates are serialised across every process by one advisory
// lock (bbolt's single writer, cluster-wide), Views are REPEATABLE READ
// snapshots, and Lock is a session advisory lock.
package pgkv

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/bos55/concordia/internal/kv"
)

// Options tune a DB; zero values take the defaults.
type Options struct {
	// ConnectTimeout bounds establishing one connection (default 10 s).
	ConnectTimeout time.Duration
	// Timeout bounds every statement, since kv's interface carries no
	// context (default 30 s).
	Timeout time.Duration
	// MaxConns is the pool size (default 32). A held Lock keeps one.
	MaxConns int32
}

// DB is a PostgreSQL database as a kv.DB.
type DB struct {
	pool    *pgxpool.Pool
	timeout time.Duration

	mu    sync.Mutex
	locks map[string]chan struct{}
	known sync.Map // bucket names seen to exist (tx.Bucket)
}

var _ kv.DB = (*DB)(nil)

// Open connects to the database at url (a postgres:// URL or key=value
// string), checks it answers, and applies the schema migrations. Its
// errors say what to fix: the server unreachable, the credentials
// refused, or the database missing.
func Open(ctx context.Context, url string, opts Options) (*DB, error) {
	if opts.ConnectTimeout <= 0 {
		opts.ConnectTimeout = 10 * time.Second
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 30 * time.Second
	}
	if opts.MaxConns <= 0 {
		opts.MaxConns = 32
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		// ParseConfig's errors already redact the password.
		return nil, fmt.Errorf("pgkv: bad database URL: %w", err)
	}
	cfg.ConnConfig.ConnectTimeout = opts.ConnectTimeout
	cfg.MaxConns = opts.MaxConns
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("pgkv: %s: %w", describe(cfg), err)
	}
	pctx, cancel := context.WithTimeout(ctx, opts.ConnectTimeout)
	err = pool.Ping(pctx)
	cancel()
	if err != nil {
		pool.Close()
		return nil, openError(cfg, err)
	}
	mctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	err = migrate(mctx, pool)
	cancel()
	if err != nil {
		pool.Close()
		return nil, err
	}
	return &DB{pool: pool, timeout: opts.Timeout, locks: map[string]chan struct{}{}}, nil
}

// describe names the server without the password, for error messages.
func describe(cfg *pgxpool.Config) string {
	c := cfg.ConnConfig
	return fmt.Sprintf("database %q on host %s port %d as user %q", c.Database, c.Host, c.Port, c.User)
}

// openError turns a failed first connection into what the operator must
// fix.
func openError(cfg *pgxpool.Config, err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code {
		case "28P01", "28000":
			return fmt.Errorf("pgkv: authentication failed for %s (check the user and password): %w", describe(cfg), err)
		case "3D000":
			return fmt.Errorf("pgkv: database %q does not exist on host %s (create it, or fix the URL): %w",
				cfg.ConnConfig.Database, cfg.ConnConfig.Host, err)
		}
		return fmt.Errorf("pgkv: %s: %w", describe(cfg), err)
	}
	return fmt.Errorf("pgkv: cannot reach %s (is the server running, is the host right?): %w", describe(cfg), err)
}

// Pool is the connection pool, for tools and tests.
func (d *DB) Pool() *pgxpool.Pool { return d.pool }

// Shared is true: other replicas may use the database at once.
func (d *DB) Shared() bool { return true }

// Close closes the pool; a held Lock's connection is closed when it is
// released.
func (d *DB) Close() error {
	d.pool.Close()
	return nil
}

// op is a context for one statement.
func (d *DB) op() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d.timeout)
}
