// Package local serves the machine's own Nix store: path metadata straight
// from Nix's SQLite database, NARs serialised on the fly from the store
// directory, build logs from Nix's log directory.
//
// # Reading the database without write access
//
// Nix keeps db.sqlite in WAL mode ("pragma journal_mode = wal", the default
// of use-sqlite-wal) and registers new paths by appending to db.sqlite-wal.
// A connection opened read-only (mode=ro) but not immutable follows those
// appends through the db.sqlite-shm index, so a path built after Open is
// served at once. immutable=1 would be cheaper but blind to the WAL, and it
// takes no locks, so it can read a page while a checkpoint rewrites it.
//
// What such a reader needs, as measured with SQLite 3.54 (mattn/go-sqlite3
// 1.14.53) against Nix 2.8 (see TestUnprivileged):
//
//   - read permission on db.sqlite, and search permission on its
//     directory (Nix's defaults: 0644 and 0755, owned by root);
//   - db.sqlite-wal and db.sqlite-shm must already exist when the first
//     connection opens, readable (SQLite creates them with the database's
//     mode, 0644). A reader may create them itself only if it can write the
//     directory; otherwise opening fails with SQLITE_READONLY_DIRECTORY
//     ("attempt to write a readonly database"), or SQLITE_CANTOPEN when
//     only one of the two is there, both reported here as ErrWALMissing.
//     Nix deletes both files when its last connection closes, so on an
//     idle machine they are usually absent.
//   - nothing else: with a read-only -shm SQLite (since 3.22) either maps
//     it read-only, when a writer holds it open, or rebuilds the WAL index
//     in heap memory, when no writer does, and switches back by itself.
//
// Once open, the Store keeps one connection for its whole life. Its shared
// lock on db.sqlite stops Nix's last connection from checkpointing and
// deleting the -wal and -shm files, so they stay valid until Close: the
// price is that the WAL is only checkpointed by Nix's autocheckpoint (40000
// pages), as while any long-lived Nix process runs, so db.sqlite-wal can
// stay up to about 160 MB.
//
// So a service running as its own user needs, before it starts, one
// read-only open by a user who may write /nix/var/nix/db (root), which
// creates the files and leaves them behind because a read-only connection
// never checkpoints: e.g. systemd ExecStartPre=+ running
// `sqlite3 -readonly /nix/var/nix/db/db.sqlite 'select 1 from ValidPaths limit 1'`
// or this package's Prepare. A Nix process closing in between deletes them
// again; Restart=on-failure covers that rare race. Running as root needs
// nothing.
package local

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	sqlite3 "github.com/mattn/go-sqlite3"

	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/pkg/nar"
	"github.com/bos55/concordia/pkg/narinfo"
)

// Defaults are those of a standard Nix installation.
const (
	DefaultDBPath   = "/nix/var/nix/db/db.sqlite"
	DefaultStoreDir = "/nix/store"
	DefaultLogDir   = "/nix/var/log/nix/drvs"
)

// ErrWALMissing means the database is in WAL mode, its -wal and -shm files
// do not exist, and this process may not create them: see the package
// documentation for what to grant.
var ErrWALMissing = errors.New("nix database has no -wal/-shm files and this user cannot create them")

// Options say where the store lives. The zero value is the standard
// /nix layout.
type Options struct {
	// DBPath is Nix's database, default DefaultDBPath.
	DBPath string
	// StoreDir is the store directory paths are named under, default
	// DefaultStoreDir (Harmonia's virtual_nix_store).
	StoreDir string
	// RealStoreDir is where the bytes are, default StoreDir (Harmonia's
	// real_nix_store), e.g. /mnt/nix/store for a store mounted elsewhere or
	// <root>/nix/store for a chroot store.
	RealStoreDir string
	// LogDir holds build logs as <2 chars>/<rest of drv basename>[.bz2],
	// default DefaultLogDir.
	LogDir string
	// MaxConns bounds the SQLite connection pool, default
	// 2*GOMAXPROCS (at least 4): a lookup holds a connection for
	// microseconds, so more would only add memory.
	MaxConns int
	// Logger receives warnings; nil discards them.
	Logger *slog.Logger
}

// Store is the local Nix store, read-only. It is safe for concurrent use.
type Store struct {
	storeDir, realDir, logDir string
	log                       *slog.Logger

	db   *sql.DB
	pin  *sql.Conn // keeps the WAL files alive, see the package comment
	info *sql.Stmt

	// hasRealisations caches a positive answer only: the table appears
	// when ca-derivations is first enabled, possibly while we run.
	hasRealisations atomic.Bool
}

var (
	_ store.RangeNAR     = (*Store)(nil)
	_ store.Store        = (*Store)(nil)
	_ store.Logger       = (*Store)(nil)
	_ store.Realisations = (*Store)(nil)
)

// queryInfo fetches a path and its references in one statement, so the two
// come from one read transaction and cost one round trip into SQLite.
// Store path names never contain spaces, so group_concat's separator is safe.
const queryInfo = `SELECT v.path, v.hash, v.registrationTime, v.deriver, v.narSize, v.sigs, v.ca,
  (SELECT group_concat(r.path, ' ') FROM Refs JOIN ValidPaths r ON r.id = Refs.reference WHERE Refs.referrer = v.id)
FROM ValidPaths v WHERE v.path >= ? ORDER BY v.path LIMIT 1`

// Open opens Nix's database read-only and checks it has the schema it
// expects. It fails with ErrWALMissing when it cannot read the WAL.
func Open(ctx context.Context, opts Options) (*Store, error) {
	opts = withDefaults(opts)
	s := &Store{
		storeDir: opts.StoreDir,
		realDir:  opts.RealStoreDir,
		logDir:   opts.LogDir,
		log:      opts.Logger,
	}
	for _, d := range []string{s.storeDir, s.realDir, s.logDir} {
		if !filepath.IsAbs(d) || filepath.Clean(d) != d || d == "/" {
			return nil, fmt.Errorf("local store: %q is not a clean absolute directory", d)
		}
	}
	// A file: URI so SQLite sees mode=ro (mattn passes the whole URI on);
	// url.URL escapes '?' and '#' in the path.
	u := url.URL{Scheme: "file", Path: opts.DBPath, RawQuery: "mode=ro&_busy_timeout=5000"}
	db, err := sql.Open("sqlite3", u.String())
	if err != nil {
		return nil, fmt.Errorf("local store: open %s: %w", opts.DBPath, err)
	}
	db.SetMaxOpenConns(opts.MaxConns)
	db.SetMaxIdleConns(opts.MaxConns)
	db.SetConnMaxLifetime(0)
	db.SetConnMaxIdleTime(0)
	s.db = db
	if err := s.init(ctx, opts.DBPath); err != nil {
		db.Close()
		return nil, err
	}
	s.log.Debug("local store open", "db", opts.DBPath, "store", s.storeDir, "real", s.realDir)
	return s, nil
}

func withDefaults(o Options) Options {
	if o.DBPath == "" {
		o.DBPath = DefaultDBPath
	}
	if o.StoreDir == "" {
		o.StoreDir = DefaultStoreDir
	}
	if o.RealStoreDir == "" {
		o.RealStoreDir = o.StoreDir
	}
	if o.LogDir == "" {
		o.LogDir = DefaultLogDir
	}
	if o.MaxConns <= 0 {
		o.MaxConns = max(4, 2*runtime.GOMAXPROCS(0))
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

func (s *Store) init(ctx context.Context, dbPath string) error {
	// sql.Open connects lazily: a missing file must fail here, not as a
	// 5xx on the first request (and SQLite must not be asked to create it).
	if _, err := os.Stat(dbPath); err != nil {
		return fmt.Errorf("local store: %w", err)
	}
	pin, err := s.db.Conn(ctx)
	if err != nil {
		return dbError("connect", dbPath, err)
	}
	s.pin = pin
	var n int
	err = pin.QueryRowContext(ctx,
		`SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('ValidPaths', 'Refs')`).Scan(&n)
	if err != nil {
		return dbError("read", dbPath, err)
	}
	if n != 2 {
		return fmt.Errorf("local store: %s has no ValidPaths/Refs tables: not a Nix database", dbPath)
	}
	if s.info, err = s.db.PrepareContext(ctx, queryInfo); err != nil {
		return dbError("prepare", dbPath, err)
	}
	return nil
}

// dbError names the permission problem when SQLite could not get at the
// WAL, the one failure an operator must fix outside this program.
func dbError(op, dbPath string, err error) error {
	var se sqlite3.Error
	if errors.As(err, &se) {
		walMissing := se.ExtendedCode == errReadonlyDirectory || se.ExtendedCode == errReadonlyCantInit ||
			// -wal present but -shm gone (or the reverse, after a crash):
			// SQLite cannot open the one it lacks.
			se.Code == sqlite3.ErrCantOpen && (!exists(dbPath+"-wal") || !exists(dbPath+"-shm"))
		if walMissing {
			return fmt.Errorf("local store: %s %s: %w (create them by a read-only open as root before starting, see package local): %v",
				op, dbPath, ErrWALMissing, err)
		}
	}
	return fmt.Errorf("local store: %s %s: %w", op, dbPath, err)
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// Extended result codes mattn/go-sqlite3 has no names for.
var (
	errReadonlyCantInit  = sqlite3.ErrReadonly.Extend(5)
	errReadonlyDirectory = sqlite3.ErrReadonly.Extend(6)
)

// Prepare makes sure db.sqlite-wal and db.sqlite-shm exist, for a reader
// that cannot create them: it opens the database read-only, reads, and
// closes. A read-only connection never checkpoints, so it leaves the files
// behind. It must run as a user who can write the database directory.
func Prepare(ctx context.Context, dbPath string) error {
	u := url.URL{Scheme: "file", Path: dbPath, RawQuery: "mode=ro&_busy_timeout=5000"}
	db, err := sql.Open("sqlite3", u.String())
	if err != nil {
		return fmt.Errorf("local store: prepare %s: %w", dbPath, err)
	}
	defer db.Close()
	if _, err := os.Stat(dbPath); err != nil {
		return fmt.Errorf("local store: prepare: %w", err)
	}
	var n int
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_master`).Scan(&n); err != nil {
		return dbError("prepare", dbPath, err)
	}
	return db.Close()
}

// Close releases the database. The Store must not be used afterwards.
func (s *Store) Close() error {
	var errs []error
	if s.info != nil {
		errs = append(errs, s.info.Close())
	}
	if s.pin != nil {
		errs = append(errs, s.pin.Close())
	}
	errs = append(errs, s.db.Close())
	return errors.Join(errs...)
}

// StoreDir is the directory store paths are named under.
func (s *Store) StoreDir() string { return s.storeDir }

// PathInfo looks a path up by hash part. Anything but 32 nix32 characters
// is ErrNotFound without a query, so a request can never steer the lookup.
func (s *Store) PathInfo(ctx context.Context, hashPart string) (*store.PathInfo, error) {
	if !narinfo.ValidHashPart(hashPart) {
		return nil, store.ErrNotFound
	}
	prefix := s.storeDir + "/" + hashPart
	var (
		p, hash           string
		regTime           int64
		deriver, sigs, ca sql.NullString
		refs              sql.NullString
		narSize           sql.NullInt64
	)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// The query takes microseconds: not worth the goroutine mattn/go-sqlite3
	// starts per query to watch a cancelable context.
	err := s.info.QueryRowContext(context.WithoutCancel(ctx), prefix).Scan(&p, &hash, &regTime, &deriver, &narSize, &sigs, &ca, &refs)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, store.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("local store: query %s: %w", hashPart, err)
	}
	// path >= prefix found the next path in order; it is ours only if it
	// continues with "-".
	if len(p) <= len(prefix) || p[len(prefix)] != '-' || p[:len(prefix)] != prefix {
		return nil, store.ErrNotFound
	}
	h, err := narinfo.ParseHash(hash)
	if err != nil || h.Algo != "sha256" {
		return nil, fmt.Errorf("local store: %s: bad hash %q in database: %v", p, hash, err)
	}
	info := &store.PathInfo{
		StorePath:  p,
		NarHash:    h.Digest,
		Deriver:    deriver.String,
		CA:         ca.String,
		Registered: time.Unix(regTime, 0),
		References: []string{},
	}
	if narSize.Int64 > 0 {
		info.NarSize = uint64(narSize.Int64)
	}
	if sigs.String != "" {
		info.Sigs = strings.Fields(sigs.String)
	}
	if refs.String != "" {
		info.References = strings.Split(refs.String, " ")
		slices.Sort(info.References)
	}
	return info, nil
}

// NAR streams the NAR of info's path from RealStoreDir. A path collected
// before the first byte is ErrNotFound with nothing written; one that
// changes or vanishes later is an error, so the caller aborts the response.
func (s *Store) NAR(ctx context.Context, info *store.PathInfo, w io.Writer) error {
	p, err := s.onDisk(info)
	if err != nil {
		return err
	}
	n, err := nar.DumpPath(&ctxWriter{ctx: ctx, w: w}, p)
	if err != nil {
		if n == 0 && errors.Is(err, fs.ErrNotExist) {
			return store.ErrNotFound
		}
		return fmt.Errorf("local store: NAR of %s after %d bytes: %w", info.StorePath, n, err)
	}
	// The database's size is what the narinfo announced: a path altered
	// under us must not end as a clean but different response.
	if info.NarSize != 0 && uint64(n) != info.NarSize {
		return fmt.Errorf("local store: NAR of %s is %d bytes, database says %d", info.StorePath, n, info.NarSize)
	}
	return nil
}

// NARFrom implements store.RangeNAR: the dump skips the bytes before
// offset without reading the contents of the files they hold.
func (s *Store) NARFrom(ctx context.Context, info *store.PathInfo, offset int64, w io.Writer) error {
	p, err := s.onDisk(info)
	if err != nil {
		return err
	}
	n, err := nar.DumpPathFrom(&ctxWriter{ctx: ctx, w: w}, p, offset)
	if err != nil {
		if n == 0 && errors.Is(err, fs.ErrNotExist) {
			return store.ErrNotFound
		}
		return fmt.Errorf("local store: NAR of %s from %d, after %d bytes: %w", info.StorePath, offset, n, err)
	}
	if info.NarSize != 0 && uint64(offset+n) != info.NarSize && uint64(offset) < info.NarSize {
		return fmt.Errorf("local store: NAR of %s is %d bytes, database says %d", info.StorePath, offset+n, info.NarSize)
	}
	return nil
}

// onDisk is where info's path is in RealStoreDir; ErrNotFound when it is
// not a path of this store or is gone (collected since its lookup).
func (s *Store) onDisk(info *store.PathInfo) (string, error) {
	base, ok := s.baseName(info.StorePath)
	if !ok {
		return "", store.ErrNotFound
	}
	p := filepath.Join(s.realDir, base)
	if _, err := os.Lstat(p); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", store.ErrNotFound
		}
		return "", fmt.Errorf("local store: %w", err)
	}
	return p, nil
}

// baseName returns the base name of a path under StoreDir, if it is one.
func (s *Store) baseName(storePath string) (string, bool) {
	dir, base := path.Split(storePath)
	if dir != s.storeDir+"/" {
		return "", false
	}
	if _, _, err := narinfo.ParseBaseName(base); err != nil {
		return "", false
	}
	return base, true
}

// ctxWriter stops a NAR dump between writes once the request is gone.
type ctxWriter struct {
	ctx context.Context
	w   io.Writer
}

func (c *ctxWriter) Write(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.w.Write(p)
}
