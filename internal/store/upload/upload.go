// Package upload is the store of paths CI pushes with `nix copy --to`.
//
// NAR files are kept as uploaded (compressed), content-addressed by their
// FileHash under blobs/, one copy per hash however many paths or clients
// upload it. A verified NAR no narinfo has claimed yet is pending: the
// index has no record of it, because nobody has been told it is published,
// so the upload costs one durable commit (the narinfo's) instead of two;
// the file is the record, and Open keeps such files pending, verified again
// when a narinfo claims them (pending.go).
// Build logs are files too, zstd-compressed once under logs/, so a log
// costs the index a small record and a reader a stream, not the whole log.
// Everything else (narinfos, blob reference counts, last access, pins,
// listings, log records, realisations, tombstones) lives in one bbolt file,
// so each change is one transaction. The publication order is what makes a crash harmless:
// a blob is written to a temp file, fsynced, renamed and its directory
// fsynced before its index record is committed, and a narinfo is committed
// only after its blob is durable and verified. Open cleans up whatever an
// interrupted upload left behind.
//
// The store's promise is that it never serves a path whose NAR does not
// match its narinfo or whose closure is incomplete: uploads are re-hashed
// and validated, a narinfo is refused until all its references are present
// (here or in another store the server serves), and garbage collection only
// deletes paths no kept path refers to. It also never changes what it
// serves: an upload may add a path, but one for a path the cache already
// has, here or in another store, must be the same path (immutable.go).
//
// Paths pulled from an upstream binary cache (Adopt, adopt.go) are kept
// the same way, as a cache of the upstream's: their references need not
// be here, since the upstream has their closure, and GC evicts them
// before any upload, even from under a path that refers to one.
package upload

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/bos55/concordia/internal/blob"
	"github.com/bos55/concordia/internal/blob/diskblob"
	"github.com/bos55/concordia/internal/blob/inlineblob"
	"github.com/bos55/concordia/internal/kv"
	"github.com/bos55/concordia/internal/kv/boltkv"
	"github.com/bos55/concordia/internal/kv/pebblekv"
	"github.com/bos55/concordia/internal/limits"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/pkg/narinfo"
)

// Options configure a Store. The zero value is usable.
type Options struct {
	// StoreDir is the logical store directory (default /nix/store);
	// uploaded narinfos must name paths below it.
	StoreDir string
	// SignKeys sign every accepted narinfo, beside the uploader's Sigs.
	SignKeys []narinfo.SecretKey
	// Others are the other stores the server serves (the machine's own
	// /nix/store, the checking view of the pull-through upstreams): a
	// reference present there counts as present, and an upload must
	// not change a path one serves. One answering store.ErrUnavailable
	// (an upstream that could not be asked) refuses the upload with
	// that error rather than guess.
	Others []store.Store
	// GC policy: MaxSize bounds the total blob bytes (0 = no bound),
	// MaxAge removes paths not accessed for that long (0 = never), and
	// GCInterval runs GC periodically (0 = only on demand).
	MaxSize    int64
	MaxAge     time.Duration
	GCInterval time.Duration
	// Remember is how long the NAR hash and references of a deleted path
	// are kept (a tombstone), refusing an upload of that store path with
	// another NAR meanwhile (gc.remember); 0 keeps them forever.
	Remember time.Duration
	// PendingGrace is how long an uploaded NAR no narinfo has claimed is
	// kept, with the listing sent beside it (default DefaultPendingGrace,
	// upload.pending_max_age): Nix 2.35 PUTs every NAR of a closure before
	// the first narinfo, so a NAR waits as long as the whole copy takes.
	PendingGrace time.Duration
	// MaxPending bounds the bytes of those NAR files (0: DefaultMaxPending;
	// negative: no bound); past it the oldest are dropped first
	// (upload.pending_max_size).
	MaxPending int64
	// WriterTTL keeps through GC the paths a writer was told exist (a
	// narinfo GET or HEAD with a write token answered 200, or the path's
	// own narinfo PUT) for that long: Nix keeps the narinfo in its disk
	// cache for narinfo-cache-positive-ttl (30 days) and would never
	// upload a collected path again (gc.writer_ttl; 0: no such
	// protection). HardMaxSize is the size past which GC collects such
	// paths anyway (gc.hard_max_size; 0: one and a half times the run's
	// max size, none without one; negative: none).
	WriterTTL   time.Duration
	HardMaxSize int64
	// Limits bound what an uploaded NAR may cost to verify, and which
	// stored NARs read paths decode (zero value: limits.Default()).
	Limits limits.Limits
	// MaxDeployReports bounds the deploy history (deploys.go): past it
	// the oldest report goes (upload.deploy_reports_max; 0:
	// DefaultMaxDeployReports).
	MaxDeployReports int
	// RedirectTTL, when positive and the files are in a store that
	// presigns (S3), makes NAR downloads redirects to presigned URLs
	// valid that long (upload.s3.redirect), instead of streams through
	// the cache.
	RedirectTTL time.Duration
	// DeleteDelay is how long a file GC collected from a shared store
	// stays in the bucket, for the replicas still streaming it (default
	// DefaultDeleteDelay; negative: deleted at once). A store one process
	// owns deletes at once: its open files outlive their names.
	DeleteDelay time.Duration
	// InlineMax is the size up to which an uploaded NAR file is kept in
	// the index, committed with its narinfo, rather than as a file of its
	// own (0: DefaultInlineMax; negative: never). A shared index never
	// keeps them: its replicas' files are in a bucket.
	InlineMax int64
	// Index is the embedded index's engine for a store that has none yet:
	// IndexPebble (the default) or IndexBolt. A store keeps the one it
	// was created with; `cache migrate` moves it to another.
	Index string
	// Logger receives recovery, GC and repair events; nil discards them.
	Logger *slog.Logger
	// Now replaces time.Now in tests.
	Now func() time.Time
}

// Limits on the small documents kept in the index. An uploaded listing is
// kept as Nix sent it (the server serves the listings it builds itself).
// Build logs are files, bounded by limits.max_log_size (logs.go).
const (
	MaxListingSize     = 64 << 20
	MaxRealisationSize = 1 << 20
)

// Store is the upload store. It implements store.Store, store.FileNAR,
// store.Logger and store.Realisations, and the upload, pin, GC and verify
// operations the server and `cache` subcommands use.
type Store struct {
	dir        string // local files: the bbolt index of the embedded store, pull-through's downloads
	blobs      blob.Dir
	logs       blob.Dir
	quarantine blob.Dir
	db         kv.DB
	commits    *kv.Group // the narinfo commits of concurrent uploads, one transaction for those that meet
	opts       Options
	log        *slog.Logger
	now        func() time.Time
	storeDir   string
	metrics    *metrics
	ownNames   []string // names of SignKeys: the signatures always kept

	// The file lock (lockFiles) orders blob file creation against blob
	// deletion (GC, pending cleanup, repair), so a blob re-uploaded while
	// it is being collected is never left with a record but no file or
	// vice versa; with a shared index it is one lock for every replica.
	// Lock order: the file lock, then a write transaction, then pendMu.

	// pending are the verified blobs no narinfo has claimed (blob name
	// -> what verification computed, Created = upload time). A blob
	// leaves it when a narinfo claiming it commits (its record then is
	// in the index) or when SweepPending drops it after the grace
	// period; both happen inside a bbolt write transaction, so a
	// claim and a sweep never both win.
	pendMu  sync.Mutex
	pending map[string]*pendingBlob
	// inlineMem is the bytes of the pending blobs held in memory
	// (pendingBlob.data), bounded by maxInlineMemory; guarded by pendMu.
	inlineMem int64
	// inline is blobs when small NARs are kept in the index (an index
	// this process owns), else nil.
	inline *inlineblob.Dir
	// smallLog keeps the held small NARs across a crash (smalllog.go);
	// nil without inline.
	smallLog *smallLog
	// dropped says why a pending blob was dropped before its claim
	// (pending.go), for the narinfo that comes too late.
	dropped      map[string]string
	droppedOrder []string

	accessMu sync.Mutex
	access   map[string]int64 // hash part -> unix seconds, not yet flushed
	told     map[string]int64 // hash part -> unix seconds a writer was told it exists, not yet flushed

	stop chan struct{}
	wg   sync.WaitGroup
}

// Bucket names of the bbolt index.
var (
	bPaths    = []byte("paths")    // hash part -> pathRec JSON
	bBlobs    = []byte("blobs")    // blob file name -> blobRec JSON
	bAccess   = []byte("access")   // hash part -> unix seconds (decimal)
	bPins     = []byte("pins")     // hash part -> Pin JSON
	bListings = []byte("listings") // hash part -> upload time (8 bytes, big-endian unix) + .ls JSON
	bLogFiles = []byte("logfiles") // drv base name -> logRec JSON (the log is logs/<drv>.zst)
	bReal     = []byte("realisations")
	bRealMeta = []byte("realisationmeta") // realisation id -> realRec JSON
	bTombs    = []byte("tombstones")      // hash part -> tombRec JSON of a collected path
	bTold     = []byte("told")            // hash part -> unix seconds (decimal) a writer was last told it exists
	bUpstream = []byte("upstream-paths")  // hash part -> upstream name: a path an upstream had (upstreamRef)
	bDoomed   = []byte("collected-files") // "nar/" or "log/" + file name -> unix seconds GC collected it (shared stores: shared.go)
	bInline   = []byte("inline")          // blob name -> publication time and the NAR file of a small path (inlineblob)
	buckets   = [][]byte{bPaths, bBlobs, bInline, bAccess, bPins, bListings, bLogFiles, bReal, bRealMeta, bTombs, bTold, bUpstream, bDoomed}

	// bOldLogs held whole logs (drv base name -> bytes) before they were
	// files; Open moves them out and deletes it.
	bOldLogs = []byte("logs")
)

// pathRec is an accepted narinfo, with the blob it claims.
type pathRec struct {
	StorePath   string    `json:"storePath"`
	Blob        string    `json:"blob"`
	Compression string    `json:"compression"`
	FileHash    []byte    `json:"fileHash"`
	FileSize    uint64    `json:"fileSize"`
	NarHash     []byte    `json:"narHash"`
	NarSize     uint64    `json:"narSize"`
	References  []string  `json:"references,omitempty"` // base names
	Deriver     string    `json:"deriver,omitempty"`    // base name
	System      string    `json:"system,omitempty"`
	Sigs        []string  `json:"sigs,omitempty"`
	CA          string    `json:"ca,omitempty"`
	Registered  time.Time `json:"registered"`
	// Upstream names the binary cache a path was pulled from (Adopt),
	// "" for an upload: such a path is a cache of the upstream's, which
	// has its closure, so GC evicts it first and its references need
	// not be here (gc.go).
	Upstream string `json:"upstream,omitempty"`
}

// blobRec is what verification computed for a blob file. Refs counts the
// paths claiming it; a blob with Refs == 0 (in the index after its last
// path was deleted, or in Store.pending) is not served.
type blobRec struct {
	Compression string    `json:"compression"`
	FileHash    []byte    `json:"fileHash"`
	FileSize    int64     `json:"fileSize"`
	NarHash     []byte    `json:"narHash"`
	NarSize     uint64    `json:"narSize"`
	Refs        int       `json:"refs"`
	Created     time.Time `json:"created"`
}

// ErrLocked is Open's error when another process (a running `cache
// serve`) holds the store's index; it wraps bbolt's lock timeout.
var ErrLocked = fmt.Errorf("held by another process: %w", bolterrors.ErrTimeout)

// Open opens (creating if needed) the upload store in dir and recovers
// from an interrupted run: temp files are removed, index entries whose blob
// is missing are dropped (with the paths whose closure that breaks), and
// blob files without a record are pending again (or removed once past the
// grace period).
func Open(ctx context.Context, dir string, opts Options) (*Store, error) {
	be := Backend{Dir: dir}
	var err error
	for _, d := range []struct {
		to   *blob.Dir
		name string
	}{{&be.Blobs, "blobs"}, {&be.Logs, "logs"}, {&be.Quarantine, "quarantine"}} {
		if *d.to, err = diskblob.Open(filepath.Join(dir, d.name)); err != nil {
			return nil, fmt.Errorf("upload store: %w", err)
		}
	}
	return OpenBackend(ctx, be, opts)
}

// Backend is where a store keeps its index and its files: the embedded
// store's bbolt file and directories under Dir (Open), or a shared index
// and bucket that several cache replicas use at once (OpenBackend).
type Backend struct {
	// Dir holds the store's local files: the bbolt index when Index is
	// nil, and the temp files of paths being pulled from an upstream.
	Dir string
	// Index is the index; nil opens Dir/index.db.
	Index kv.DB
	// Blobs, Logs and Quarantine keep NAR files, build logs and the NAR
	// files verify found damaged.
	Blobs, Logs, Quarantine blob.Dir
}

// OpenBackend opens the upload store on be and recovers from an
// interrupted run as Open does. The store closes be.Index on Close, also
// when OpenBackend fails.
func OpenBackend(ctx context.Context, be Backend, opts Options) (*Store, error) {
	dir := be.Dir
	if opts.StoreDir == "" {
		opts.StoreDir = "/nix/store"
	}
	if opts.PendingGrace == 0 {
		opts.PendingGrace = DefaultPendingGrace
	}
	if opts.MaxPending == 0 {
		opts.MaxPending = DefaultMaxPending
	}
	if opts.InlineMax == 0 {
		opts.InlineMax = DefaultInlineMax
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.DeleteDelay == 0 {
		opts.DeleteDelay = DefaultDeleteDelay
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	opts.Limits = opts.Limits.OrDefault()
	if opts.MaxDeployReports <= 0 {
		opts.MaxDeployReports = DefaultMaxDeployReports
	}
	s := &Store{
		dir:        dir,
		blobs:      be.Blobs,
		logs:       be.Logs,
		quarantine: be.Quarantine,
		db:         be.Index,
		opts:       opts,
		log:        opts.Logger,
		now:        opts.Now,
		storeDir:   opts.StoreDir,
		access:     map[string]int64{},
		told:       map[string]int64{},
		pending:    map[string]*pendingBlob{},
		dropped:    map[string]string{},
		stop:       make(chan struct{}),
	}
	s.metrics = newMetrics(s)
	s.metrics.bounds(opts.MaxSize, opts.HardMaxSize)
	for _, k := range opts.SignKeys {
		s.ownNames = append(s.ownNames, k.Name())
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		if s.db != nil {
			s.db.Close()
		}
		return nil, fmt.Errorf("upload store: %w", err)
	}
	if err := s.openIndex(ctx); err != nil {
		return nil, err
	}
	if s.inline != nil {
		if err := s.openSmallLog(); err != nil {
			s.db.Close()
			return nil, fmt.Errorf("upload store %s: %w", dir, err)
		}
	}
	s.commits = kv.NewGroup(s.db)
	if err := s.boundPending(""); err != nil {
		s.db.Close()
		return nil, fmt.Errorf("upload store %s: %w", dir, err)
	}
	s.wg.Add(1)
	go s.background()
	return s, nil
}

// The embedded index's engines (Options.Index).
const (
	IndexPebble = "pebble"
	IndexBolt   = "bbolt"
)

// openEmbedded opens the store's own index in the engine it was made
// with: the bbolt file index.db (every store made before pebble), or the
// pebble database index/. A new store's is engine's.
func openEmbedded(dir, engine string) (kv.DB, error) {
	bolt, peb := filepath.Join(dir, "index.db"), filepath.Join(dir, "index")
	for _, p := range []string{bolt, peb} {
		switch _, err := os.Lstat(p); {
		case err == nil && p == bolt:
			return boltkv.Open(bolt, 5*time.Second)
		case err == nil:
			return pebblekv.Open(peb, 5*time.Second)
		case !errors.Is(err, fs.ErrNotExist):
			return nil, err // not a reason to make a new index beside it
		}
	}
	switch engine {
	case "", IndexPebble:
		return pebblekv.Open(peb, 5*time.Second)
	case IndexBolt:
		return boltkv.Open(bolt, 5*time.Second)
	}
	return nil, fmt.Errorf("index engine %q: want %q or %q", engine, IndexPebble, IndexBolt)
}

// openIndex opens the embedded index, creating its buckets, and recovers
// from an interrupted run (logs moved out of the index, files and records
// made to agree). The index is closed again if that fails.
func (s *Store) openIndex(ctx context.Context) error {
	if s.db == nil {
		db, err := openEmbedded(s.dir, s.opts.Index)
		if errors.Is(err, bolterrors.ErrTimeout) || errors.Is(err, pebblekv.ErrTimeout) {
			return fmt.Errorf("upload store index %s: %w", s.dir, ErrLocked)
		}
		if err != nil {
			return fmt.Errorf("upload store index: %w", err)
		}
		s.db = db
	}
	db := s.db
	err := db.Update(func(tx kv.Tx) error {
		for _, b := range buckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if !db.Shared() {
		// Before recovery, which must see the inline blobs as stored.
		s.inline = inlineblob.New(s.blobs, db, bInline)
		s.blobs = s.inline
	}
	if err == nil {
		err = s.migrateLogs()
	}
	if err == nil {
		err = s.recover(ctx)
	}
	if err == nil {
		err = s.recoverLogs()
	}
	if err == nil {
		err = s.recoverRealisations()
	}
	if err != nil {
		db.Close()
		return fmt.Errorf("upload store %s: %w", s.dir, err)
	}
	return nil
}

// Close stops background work and flushes access times.
func (s *Store) Close() error {
	select {
	case <-s.stop:
		return nil
	default:
	}
	close(s.stop)
	s.wg.Wait()
	s.closeSmallLog()
	s.flushAccess()
	return s.db.Close()
}

// StoreDir implements store.Store.
func (s *Store) StoreDir() string { return s.storeDir }

// Dir is where the store keeps its files.
func (s *Store) Dir() string { return s.dir }

// recover makes the files and the index agree after a crash. A shared
// index is not made to agree with its bucket at start: other replicas
// are publishing meanwhile, and an object store's files cannot be lost
// by a crash; its leftovers go in the sweeps (SweepPending), and damage
// is found by `cache verify`.
func (s *Store) recover(ctx context.Context) error {
	if s.db.Shared() {
		return nil
	}
	onDisk, err := s.blobFiles()
	if err != nil {
		return err
	}
	var dropped []string
	err = s.db.Update(func(tx kv.Tx) error {
		refs, gone, err := s.pathsWithBlobs(tx, onDisk)
		if err != nil {
			return err
		}
		dropped = append(dropped, gone...)
		if err := s.fixBlobRecords(tx, onDisk, refs); err != nil {
			return err
		}
		// Blob files without a record are NARs no narinfo claimed
		// yet (or whose record a GC deleted just before it stopped):
		// pending, verified again by the claim (pending.go).
		blobs := tx.Bucket(bBlobs)
		for name, fi := range onDisk {
			if blobs.Get([]byte(name)) == nil {
				s.adoptPending(fi)
			}
		}
		broken, err := s.dropBrokenClosures(ctx, tx)
		dropped = append(dropped, broken...)
		return err
	})
	if len(dropped) > 0 {
		s.log.Warn("recovery dropped paths", "count", len(dropped), "paths", dropped)
	}
	return err
}

// blobFiles is the set of blob files on disk, once the temp files of
// interrupted uploads are removed.
func (s *Store) blobFiles() (map[string]blob.Info, error) {
	if n, err := s.blobs.Sweep(bg, s.orphanCutoff()); err != nil {
		return nil, err
	} else if n > 0 {
		s.log.Info("removed leftovers of interrupted uploads", "files", n)
	}
	onDisk := map[string]blob.Info{}
	err := s.blobs.List(bg, func(fi blob.Info) error {
		onDisk[fi.Name] = fi
		return nil
	})
	return onDisk, err
}

// bg is the context of blob operations the store's callers give none:
// each backend bounds its own operations' time.
var bg = context.Background()

// lockFiles takes the file lock (Store's doc comment).
func (s *Store) lockFiles() (func(), error) {
	return s.db.Lock(bg, "files")
}

// orphanCutoff is the time before which an unpublished write is a
// leftover: any at the start of a store that is the only one writing
// its files, those older than the pending grace period when replicas
// share them.
func (s *Store) orphanCutoff() time.Time {
	if s.db.Shared() {
		return s.now().Add(-s.opts.PendingGrace)
	}
	return s.now().Add(time.Hour)
}

// commitBlob publishes a written blob durably: its bytes, its name, and
// the directory entry.
func (s *Store) commitBlob(t blob.Temp, d blob.Dir, name string) error {
	if err := t.Sync(); err != nil {
		return err
	}
	if err := t.Publish(name); err != nil {
		return err
	}
	return d.Sync(bg)
}

// pathsWithBlobs deletes the paths whose blob file or record is missing
// (returning their hash parts) and counts the claims on each blob of the
// others.
func (s *Store) pathsWithBlobs(tx kv.Tx, onDisk map[string]blob.Info) (refs map[string]int, dropped []string, err error) {
	blobs := tx.Bucket(bBlobs)
	refs = map[string]int{}
	var gone [][]byte
	err = tx.Bucket(bPaths).ForEach(func(k, v []byte) error {
		var r pathRec
		if err := json.Unmarshal(v, &r); err != nil || !has(onDisk, r.Blob) || blobs.Get([]byte(r.Blob)) == nil {
			gone = append(gone, k)
			return nil
		}
		refs[r.Blob]++
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	for _, k := range gone {
		s.log.Warn("dropping path whose NAR file is missing", "hash", string(k))
		if err := s.deletePath(tx, string(k)); err != nil {
			return nil, nil, err
		}
		dropped = append(dropped, string(k))
	}
	return refs, dropped, nil
}

// fixBlobRecords drops the blob records without a file (or unreadable)
// and sets each one's claim count to refs'.
func (s *Store) fixBlobRecords(tx kv.Tx, onDisk map[string]blob.Info, refs map[string]int) error {
	blobs := tx.Bucket(bBlobs)
	var noFile [][]byte
	type fix struct {
		k []byte
		r blobRec
	}
	var fixes []fix
	err := blobs.ForEach(func(k, v []byte) error {
		if !has(onDisk, string(k)) {
			noFile = append(noFile, k)
			return nil
		}
		var b blobRec
		if err := json.Unmarshal(v, &b); err != nil {
			noFile = append(noFile, k)
			return nil
		}
		if b.Refs != refs[string(k)] {
			b.Refs = refs[string(k)]
			fixes = append(fixes, fix{k, b})
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, k := range noFile {
		s.log.Warn("dropping record of a missing NAR file", "blob", string(k))
		if err := blobs.Delete(k); err != nil {
			return err
		}
	}
	for _, f := range fixes {
		if err := putJSON(blobs, f.k, f.r); err != nil {
			return err
		}
	}
	return nil
}

// dropBrokenClosures deletes, until none is left, every path that refers
// to a path neither in this index nor in another store, and returns them.
// A reference pulled from an upstream and deleted since (pulledRef) is
// present: deleting a pulled path never takes a path that refers to it.
// A pulled path is never broken: its references need not be here (Adopt),
// and asking the upstream for each at every start would cost a request
// per reference.
func (s *Store) dropBrokenClosures(ctx context.Context, tx kv.Tx) ([]string, error) {
	var dropped []string
	otherHas := map[string]bool{}
	for {
		var broken []string
		err := tx.Bucket(bPaths).ForEach(func(k, v []byte) error {
			var r pathRec
			if err := json.Unmarshal(v, &r); err != nil {
				broken = append(broken, string(k))
				return nil
			}
			if r.Upstream != "" {
				return nil // a pulled path's closure is its upstream's
			}
			for _, ref := range r.References {
				hp := narinfo.HashPartOf(ref)
				if hp == string(k) || tx.Bucket(bPaths).Get([]byte(hp)) != nil || pulledRef(tx, hp) {
					continue
				}
				has, seen := otherHas[hp]
				if !seen {
					has = s.inOthers(ctx, hp)
					otherHas[hp] = has
				}
				if !has {
					broken = append(broken, string(k))
					return nil
				}
			}
			return nil
		})
		if err != nil || len(broken) == 0 {
			return dropped, err
		}
		for _, hp := range broken {
			sp := storePathOf(tx, hp)
			s.log.Warn("dropping path whose closure is incomplete", "path", sp)
			if err := s.deletePath(tx, hp); err != nil {
				return dropped, err
			}
			dropped = append(dropped, sp)
		}
	}
}

func storePathOf(tx kv.Tx, hp string) string {
	var r pathRec
	if v := tx.Bucket(bPaths).Get([]byte(hp)); v != nil && json.Unmarshal(v, &r) == nil {
		return r.StorePath
	}
	return hp
}

// deletePath removes a path's record and decrements its blob's count. The
// blob file itself stays until a blob sweep, which needs fileMu. The
// path's NAR hash and references are remembered (a tombstone): the cache
// served them, so the store path must not get another NAR.
func (s *Store) deletePath(tx kv.Tx, hp string) error {
	key := []byte(hp)
	v := tx.Bucket(bPaths).Get(key)
	if v == nil {
		return nil
	}
	var r pathRec
	if json.Unmarshal(v, &r) == nil {
		if err := s.bury(tx, hp, &r); err != nil {
			return err
		}
		blobs := tx.Bucket(bBlobs)
		var b blobRec
		if bv := blobs.Get([]byte(r.Blob)); bv != nil && json.Unmarshal(bv, &b) == nil && b.Refs > 0 {
			b.Refs--
			if err := putJSON(blobs, []byte(r.Blob), b); err != nil {
				return err
			}
		}
	}
	for _, b := range [][]byte{bPaths, bAccess, bListings, bTold} {
		if err := tx.Bucket(b).Delete(key); err != nil {
			return err
		}
	}
	return nil
}

// inOthers reports whether another store has the path, for the closure
// checks of recovery and repair. An error other than ErrNotFound counts
// as absent, but for an upstream that could not be asked
// (store.ErrUnavailable): that counts as present, since the path was
// there when its referrer was accepted, and deleting an upload for a
// network failure cannot be undone.
func (s *Store) inOthers(ctx context.Context, hashPart string) bool {
	has, _, err := s.otherHas(ctx, hashPart, "")
	if err != nil {
		s.log.Warn("an upstream could not be asked for a reference; it counts as present", "hash", hashPart, "err", err)
		return true
	}
	return has
}

// otherHas reports whether another store has the path hashPart: with base
// set, the path found must have exactly that name (a hash part names one
// path; a narinfo pairing it with another name is lying). An error other
// than ErrNotFound counts as absent: refusing an upload is safe,
// accepting one with a reference we could not confirm is not. When no
// store has it and one could not be asked (an upstream,
// store.ErrUnavailable), that error is returned: the path may well be
// there, and the caller decides. origin is the upstream that has it
// (PathInfo.Origin), "" for a store of this machine.
func (s *Store) otherHas(ctx context.Context, hashPart, base string) (has bool, origin string, err error) {
	var unavailable error
	for _, o := range s.opts.Others {
		info, err := o.PathInfo(ctx, hashPart)
		if err == nil {
			return base == "" || info.StorePath == s.storeDir+"/"+base, info.Origin, nil
		}
		if errors.Is(err, store.ErrUnavailable) && unavailable == nil {
			unavailable = err
		}
	}
	return false, "", unavailable
}

// uncheckable is the refusal of an upload that must be checked against
// an upstream cache that did not answer (store.ErrUnavailable, 503): the
// client retries, and nothing is stored meanwhile.
func uncheckable(storePath string, err error) error {
	return fmt.Errorf("cannot check %s against an upstream cache: %w, retry", storePath, err)
}

// hasBase reports whether the index holds exactly the path base. It runs
// for every reference of every uploaded narinfo, twice, so it reads only
// the record's first field: json.Marshal writes pathRec's StorePath first,
// and store path names have no character JSON escapes. A record that does
// not start that way is decoded in full.
func hasBase(paths kv.Bucket, storeDir, base string) bool {
	v := paths.Get([]byte(narinfo.HashPartOf(base)))
	if v == nil {
		return false
	}
	const field = `{"storePath":"`
	if rest, ok := bytes.CutPrefix(v, []byte(field)); ok {
		want := storeDir + "/" + base
		if len(rest) > len(want) && string(rest[:len(want)]) == want && rest[len(want)] == '"' {
			return true
		}
		if !bytes.ContainsRune(rest[:bytes.IndexByte(rest, '"')+1], '\\') {
			return false
		}
	}
	var r struct {
		StorePath string `json:"storePath"`
	}
	return json.Unmarshal(v, &r) == nil && r.StorePath == storeDir+"/"+base
}

func putJSON(b kv.Bucket, k []byte, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put(k, data)
}

func getJSON(b kv.Bucket, k []byte, v any) (bool, error) {
	data := b.Get(k)
	if data == nil {
		return false, nil
	}
	if err := json.Unmarshal(data, v); err != nil {
		return false, fmt.Errorf("index record %q: %w", k, err)
	}
	return true, nil
}

// mapErr turns storage errors into the sentinels the server maps to status
// codes: a full disk is ErrNoSpace (507), whatever layer noticed it.
func mapErr(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, store.ErrNoSpace) || errors.Is(err, store.ErrInvalid) || errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrConflict) {
		return err
	}
	if isNoSpace(err) {
		return fmt.Errorf("%w: %v", store.ErrNoSpace, err)
	}
	return err
}

// background runs the periodic chores until Close.
func (s *Store) background() {
	defer s.wg.Done()
	flush := time.NewTicker(30 * time.Second)
	defer flush.Stop()
	sweep := time.NewTicker(max(s.opts.PendingGrace/4, time.Minute))
	defer sweep.Stop()
	var gcC <-chan time.Time
	if s.opts.GCInterval > 0 {
		t := time.NewTicker(s.opts.GCInterval)
		defer t.Stop()
		gcC = t.C
	}
	for {
		select {
		case <-s.stop:
			return
		case <-flush.C:
			s.flushAccess()
		case <-sweep.C:
			if _, err := s.SweepPending(context.Background()); err != nil {
				s.log.Error("pending NAR sweep failed", "err", err)
			}
		case <-gcC:
			rep, err := s.GC(context.Background(), false)
			if err != nil {
				s.log.Error("periodic GC failed", "err", err)
				continue
			}
			s.log.Info("periodic GC", "deleted", len(rep.Deleted), "freed", rep.Freed)
		}
	}
}

func has(m map[string]blob.Info, k string) bool { _, ok := m[k]; return ok }
