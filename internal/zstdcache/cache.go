package zstdcache

import (
	"bufio"
	"container/list"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"
	bolt "go.etcd.io/bbolt"

	"github.com/bos55/concordia/internal/compress"
	"github.com/bos55/concordia/internal/durable"
)

var (
	// ErrDisabled is returned by Open when dir is empty or maxBytes is not
	// positive: the caller should compress on the fly with NewWriter.
	ErrDisabled = errors.New("compression cache disabled")
	// ErrInvalidKey is returned for a key that cannot be a file name: keys
	// are NAR hashes (nix32 or hex, optionally "algo:" prefixed).
	ErrInvalidKey = errors.New("invalid cache key")
	// ErrIncomplete is returned by Entry.Seek while the entry is still
	// being produced: its size is not known yet.
	ErrIncomplete = errors.New("entry not complete")
)

const (
	indexName = "index.db"
	blobExt   = ".zst"
	tmpPrefix = ".tmp-"
	// flushInterval bounds how stale the persisted LRU times may be after
	// a crash; hits only touch memory, so a hot hit path never waits for a
	// bbolt write transaction.
	flushInterval = 10 * time.Second
	// writeBuffer batches the encoder's per-block writes (tens of KiB)
	// into fewer write(2) calls and fewer reader wake-ups.
	writeBuffer = 256 << 10
)

var bucketName = []byte("blobs")

// Cache is an on-disk, size-bounded cache of zstd-compressed NARs.
//
// Layout of dir: index.db (bbolt: key -> size, last access, complete
// flag), one <key>.zst per complete blob, and .tmp-* files for blobs being
// written. A blob gets its final name only after it is fully written and
// fsynced (then the directory is fsynced), so a crash never leaves a
// partial blob under a final name; Open removes temp leftovers, index
// records without a blob, and blobs without an index record.
//
// Eviction removes least-recently-used complete blobs until the total is at
// most maxBytes. Blobs being written are never evicted (they are not in the
// LRU yet). A blob open for reading may be evicted: on Linux an unlinked
// file stays readable through open descriptors, so readers finish normally,
// and the bound holds for everything reachable by name. Disk use may exceed
// maxBytes by the temp files of running compressions and by evicted blobs
// still held open.
//
// A production runs detached from the request that started it and goes on
// when every reader has left: the result is cached for the next host, which
// is what ten hosts pulling one closure want. It is cancelled only by Close.
type Cache struct {
	dir   string
	max   int64
	level zstd.EncoderLevel
	log   *slog.Logger
	db    *bolt.DB

	// syncer fsyncs dir: productions finishing together share fsyncs.
	syncer *durable.DirSyncer

	ctx    context.Context // lifetime of productions; cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // productions and the flusher
	kick   chan struct{}  // asks the flusher to write pending records now

	flushMu sync.Mutex // serializes flushes so batches reach bbolt in order

	mu      sync.Mutex
	closed  bool
	items   map[string]*list.Element // complete blobs; values are *item
	lru     *list.List               // front = most recently used
	size    int64                    // sum of complete blob sizes
	flights map[string]*flight
	pending map[string]pendingOp // index changes not yet in bbolt

	m counters
}

type item struct {
	key   string
	size  int64
	atime time.Time
}

// pendingOp is an index change waiting for the next flush; the newest
// change of a key replaces older ones.
type pendingOp struct {
	rec record
	del bool
}

// record is the index value: size, last access (unix ns), flags.
type record struct {
	size     int64
	atime    int64
	complete bool
}

const recordLen = 17

func (r record) marshal() []byte {
	b := make([]byte, recordLen)
	binary.BigEndian.PutUint64(b[0:], uint64(r.size))
	binary.BigEndian.PutUint64(b[8:], uint64(r.atime))
	if r.complete {
		b[16] = 1
	}
	return b
}

func unmarshalRecord(b []byte) (record, bool) {
	if len(b) != recordLen {
		return record{}, false
	}
	return record{
		size:     int64(binary.BigEndian.Uint64(b[0:])),
		atime:    int64(binary.BigEndian.Uint64(b[8:])),
		complete: b[16]&1 == 1,
	}, true
}

// Open opens (creating if needed) the cache in dir, bounded to maxBytes of
// compressed blobs, compressing at the CLI-style zstd level (see Level).
// It returns ErrDisabled when dir is "" or maxBytes <= 0. Only one process
// may have a dir open: a second Open fails after a second.
func Open(dir string, maxBytes int64, level int, log *slog.Logger) (*Cache, error) {
	if dir == "" || maxBytes <= 0 {
		return nil, ErrDisabled
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("open cache %s: %w", dir, err)
	}
	db, err := bolt.Open(filepath.Join(dir, indexName), 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return nil, fmt.Errorf("open cache index %s: %w", dir, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &Cache{
		dir:     dir,
		syncer:  durable.NewDirSyncer(dir),
		max:     maxBytes,
		level:   compress.Level(level),
		log:     log,
		db:      db,
		ctx:     ctx,
		cancel:  cancel,
		kick:    make(chan struct{}, 1),
		items:   make(map[string]*list.Element),
		lru:     list.New(),
		flights: make(map[string]*flight),
		pending: make(map[string]pendingOp),
	}
	if err := c.load(); err != nil {
		cancel()
		db.Close()
		return nil, err
	}
	c.mu.Lock()
	c.evictLocked()
	c.mu.Unlock()
	if err := c.flush(); err != nil {
		cancel()
		db.Close()
		return nil, err
	}
	c.wg.Add(1)
	go c.flushLoop()
	return c, nil
}

// load reconciles the directory with the index after a clean stop or a
// crash, and fills the in-memory LRU.
func (c *Cache) load() error {
	blobs, removed, err := c.scanDir()
	if err != nil {
		return err
	}
	items, err := c.reconcile(blobs)
	if err != nil {
		return fmt.Errorf("open cache index %s: %w", c.dir, err)
	}
	// A blob without a record was renamed into place but its record never
	// reached the index (crash in between): remove it, as the index is
	// the authority on what is in the cache.
	for key := range blobs {
		if err := os.Remove(c.blobPath(key)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("open cache: remove orphan blob %s: %w", key, err)
		}
		removed++
	}
	if removed > 0 {
		c.log.Info("compression cache: removed leftover files", "count", removed)
		if err := c.syncer.Sync(); err != nil {
			return fmt.Errorf("open cache %s: %w", c.dir, err)
		}
	}
	sort.Slice(items, func(i, j int) bool { return items[i].atime.Before(items[j].atime) })
	for _, it := range items {
		c.items[it.key] = c.lru.PushFront(it)
		c.size += it.size
	}
	return nil
}

// scanDir removes the temp files of interrupted productions and returns
// the sizes of the blob files (by key) and how many files it removed.
func (c *Cache) scanDir() (blobs map[string]int64, removed int, err error) {
	des, err := os.ReadDir(c.dir)
	if err != nil {
		return nil, 0, fmt.Errorf("open cache %s: %w", c.dir, err)
	}
	blobs = make(map[string]int64)
	for _, de := range des {
		name := de.Name()
		switch {
		case strings.HasPrefix(name, tmpPrefix):
			if err := os.Remove(filepath.Join(c.dir, name)); err != nil {
				return nil, 0, fmt.Errorf("open cache: remove leftover %s: %w", name, err)
			}
			removed++
		case strings.HasSuffix(name, blobExt) && de.Type().IsRegular():
			key := strings.TrimSuffix(name, blobExt)
			if !validKey(key) {
				continue // not ours
			}
			info, err := de.Info()
			if err != nil {
				return nil, 0, fmt.Errorf("open cache: stat %s: %w", name, err)
			}
			blobs[key] = info.Size()
		}
	}
	return blobs, removed, nil
}

// reconcile drops the index records without a complete blob of their
// size, and returns the others as items. The blobs it found a record for
// leave blobs: what is left there has none.
func (c *Cache) reconcile(blobs map[string]int64) ([]*item, error) {
	var items []*item
	err := c.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketName)
		if err != nil {
			return err
		}
		var drop [][]byte
		err = b.ForEach(func(k, v []byte) error {
			key := string(k)
			r, ok := unmarshalRecord(v)
			size, found := blobs[key]
			if !ok || !r.complete || !found || size != r.size {
				drop = append(drop, append([]byte(nil), k...))
				return nil
			}
			delete(blobs, key)
			items = append(items, &item{key: key, size: r.size, atime: time.Unix(0, r.atime)})
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range drop {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		if len(drop) > 0 {
			c.log.Info("compression cache: dropped index records without a complete blob", "count", len(drop))
		}
		return nil
	})
	return items, err
}

// Close cancels running productions (their readers get the error), waits
// for them, writes pending index changes and closes the index. Entries
// already handed out stay readable until they are closed.
func (c *Cache) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	c.cancel()
	c.wg.Wait()
	return errors.Join(c.flush(), c.db.Close())
}

// Get returns the zstd-compressed NAR stored under key (the NAR hash),
// running produce to create it when it is neither cached nor being
// produced. produce writes the UNCOMPRESSED NAR to w; it runs on its own
// goroutine with a context that ends only when the cache closes, so it must
// not depend on the caller's request context, and it must not touch w
// after it returns (w is a pooled encoder). A panic in produce becomes the
// production's error.
//
// Concurrent Gets of one key share one production: every reader gets an
// Entry that reads the bytes written so far and waits for more, sees EOF
// only after the production succeeded, and sees the production's error if
// it failed (nothing is cached then). ctx bounds the waits of the returned
// Entry's Read.
//
// The caller must Close the Entry.
func (c *Cache) Get(ctx context.Context, key string, produce func(ctx context.Context, w io.Writer) error) (*Entry, error) {
	if !validKey(key) {
		return nil, fmt.Errorf("get %q: %w", key, ErrInvalidKey)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("get %s: %w", key, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, fmt.Errorf("get %s: %w", key, compress.ErrClosed)
	}

	if el, ok := c.items[key]; ok {
		it := el.Value.(*item)
		f, err := os.Open(c.blobPath(key))
		if err == nil {
			it.atime = time.Now()
			c.lru.MoveToFront(el)
			c.pending[key] = pendingOp{rec: record{size: it.size, atime: it.atime.UnixNano(), complete: true}}
			c.m.hits.Add(1)
			return &Entry{c: c, f: f, size: it.size, hit: true}, nil
		}
		// Removed behind our back (by hand, or a failing disk): forget it
		// and produce it again rather than fail the request.
		c.log.Warn("compression cache: blob vanished", "key", key, "err", err)
		c.removeLocked(el)
	}

	if fl, ok := c.flights[key]; ok {
		f, err := fl.open()
		if err != nil {
			return nil, fmt.Errorf("get %s: join production: %w", key, err)
		}
		c.m.hits.Add(1)
		return &Entry{c: c, f: f, fl: fl, ctx: ctx, hit: true}, nil
	}

	tmp, err := os.CreateTemp(c.dir, tmpPrefix+key+"-*")
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", key, err)
	}
	r, err := os.Open(tmp.Name())
	if err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return nil, fmt.Errorf("get %s: %w", key, err)
	}
	fl := newFlight(key, tmp.Name())
	c.flights[key] = fl
	c.m.misses.Add(1)
	c.m.inProgress.Add(1)
	c.wg.Add(1)
	go c.run(fl, tmp, produce)
	return &Entry{c: c, f: r, fl: fl, ctx: ctx}, nil
}

// run produces, compresses and publishes one blob.
func (c *Cache) run(fl *flight, tmp *os.File, produce func(ctx context.Context, w io.Writer) error) {
	defer c.wg.Done()
	start := time.Now()

	size, err := c.compress(fl, tmp, produce)
	if err != nil {
		tmp.Close()
		// Out of the map before readers wake: a Get after the error
		// starts afresh instead of joining the failed production.
		c.mu.Lock()
		delete(c.flights, fl.key)
		c.mu.Unlock()
		c.m.inProgress.Add(-1)
		fl.fail(err)
		c.log.Error("compression cache: production failed", "key", fl.key, "err", err)
		return
	}
	// Readers have every byte now, but they see EOF only once the blob is
	// durable and in the LRU: when a reader is done, the next Get is a
	// hit. A failure from here on only means the blob is not kept.
	err = c.publish(fl, tmp)
	c.mu.Lock()
	delete(c.flights, fl.key)
	if err == nil {
		it := &item{key: fl.key, size: size, atime: time.Now()}
		c.items[fl.key] = c.lru.PushFront(it)
		c.size += size
		c.pending[fl.key] = pendingOp{rec: record{size: size, atime: it.atime.UnixNano(), complete: true}}
		c.evictLocked()
	}
	c.mu.Unlock()
	// Counters before readers wake: whoever saw EOF sees them settled.
	c.m.inProgress.Add(-1)
	fl.complete(size)
	if err != nil {
		c.log.Error("compression cache: cannot keep blob", "key", fl.key, "err", err)
		return
	}
	c.flushSoon()
	c.log.Debug("compression cache: stored", "key", fl.key, "bytes", size, "took", time.Since(start))
}

// compress runs produce through a pooled encoder into tmp, announcing
// progress to readers as compressed bytes land in the file.
func (c *Cache) compress(fl *flight, tmp *os.File, produce func(ctx context.Context, w io.Writer) error) (size int64, err error) {
	pw := &progressWriter{ctx: c.ctx, f: tmp, fl: fl, m: &c.m}
	bw := bufio.NewWriterSize(pw, writeBuffer)
	enc := compress.NewParallelWriter(bw, c.level)
	defer enc.Abort() // waits for its helpers; a no-op after Close
	// produce runs detached from any request: a panic in it must not take
	// the whole server down.
	func() {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("produce %s: panic: %v", fl.key, r)
			}
		}()
		err = produce(c.ctx, enc)
	}()
	if err != nil {
		return 0, fmt.Errorf("produce %s: %w", fl.key, err)
	}
	if err := enc.Close(); err != nil {
		return 0, fmt.Errorf("compress %s: %w", fl.key, err)
	}
	if err := bw.Flush(); err != nil {
		return 0, fmt.Errorf("compress %s: %w", fl.key, err)
	}
	return pw.n, nil
}

// publish makes tmp durable under its final name. It is durable.File's
// sequence (fsync, close, rename, fsync the directory) by hand because the
// rename and the flight's path must change together under fl.mu, so a
// reader joining the production opens the file by one name or the other,
// while the fsync must not hold that lock; and a failure must mark the
// flight gone under the same lock.
func (c *Cache) publish(fl *flight, tmp *os.File) error {
	err := tmp.Sync()
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	final := c.blobPath(fl.key)
	fl.mu.Lock()
	if err == nil {
		err = os.Rename(fl.path, final)
		if err == nil {
			fl.path = final
		}
	}
	if err == nil {
		err = c.syncer.Sync()
	}
	if err != nil {
		os.Remove(fl.path)
		fl.gone = err
	}
	fl.mu.Unlock()
	if err != nil {
		return fmt.Errorf("publish %s: %w", fl.key, err)
	}
	return nil
}

// evictLocked removes least-recently-used blobs until the total fits.
// Unlinking under c.mu keeps a new production of the same key from being
// published in between and then unlinked by mistake.
func (c *Cache) evictLocked() {
	for c.size > c.max {
		el := c.lru.Back()
		if el == nil {
			return
		}
		it := el.Value.(*item)
		c.removeLocked(el)
		if err := os.Remove(c.blobPath(it.key)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			c.log.Error("compression cache: evict", "key", it.key, "err", err)
		}
		c.m.evictions.Add(1)
	}
}

func (c *Cache) removeLocked(el *list.Element) {
	it := el.Value.(*item)
	c.lru.Remove(el)
	delete(c.items, it.key)
	c.size -= it.size
	c.pending[it.key] = pendingOp{del: true}
}

func (c *Cache) flushSoon() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

func (c *Cache) flushLoop() {
	defer c.wg.Done()
	t := time.NewTicker(flushInterval)
	defer t.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		case <-c.kick:
		}
		if err := c.flush(); err != nil {
			c.log.Error("compression cache: write index", "err", err)
		}
	}
}

// flush writes the pending index changes in one bbolt transaction.
func (c *Cache) flush() error {
	c.flushMu.Lock()
	defer c.flushMu.Unlock()
	c.mu.Lock()
	batch := c.pending
	c.pending = make(map[string]pendingOp)
	c.mu.Unlock()
	if len(batch) == 0 {
		return nil
	}
	err := c.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketName)
		for k, op := range batch {
			var err error
			if op.del {
				err = b.Delete([]byte(k))
			} else {
				err = b.Put([]byte(k), op.rec.marshal())
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		// Keep the changes for the next try, unless newer ones replaced them.
		c.mu.Lock()
		for k, op := range batch {
			if _, ok := c.pending[k]; !ok {
				c.pending[k] = op
			}
		}
		c.mu.Unlock()
		return fmt.Errorf("write cache index: %w", err)
	}
	return nil
}

func (c *Cache) blobPath(key string) string { return filepath.Join(c.dir, key+blobExt) }

// validKey accepts what a NAR hash can look like (nix32, hex, base64url,
// an "algo:" prefix) and nothing that could escape dir or collide with a
// temp file.
func validKey(key string) bool {
	if key == "" || len(key) > 128 {
		return false
	}
	for i := 0; i < len(key); i++ {
		ch := key[i]
		switch {
		case 'a' <= ch && ch <= 'z', 'A' <= ch && ch <= 'Z', '0' <= ch && ch <= '9':
		case ch == '-' || ch == '_' || ch == ':':
		default:
			return false
		}
	}
	return true
}
