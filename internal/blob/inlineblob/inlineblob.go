// Package inlineblob keeps small blobs inside the index, beside the
// records that name them, and the rest in another blob.Dir.
//
// Why: most paths of a closure are small (a script, a config file, a .drv
// output of a few KB), and as files each costs a temp file create, a
// write, a rename, an fsync of the file and one of its directory before
// the narinfo that claims it can commit, and the index commit after that.
// Kept in the index, the NAR is written by that same commit: one durable
// write per path. The upload store writes them with Put, inside its own
// commit transaction; everything else (serving, verify, GC, migrate) sees
// one blob.Dir in which a name is inline or a file.
//
// An inline blob is the value of its name in one bucket: 8 bytes of its
// publication time (Unix nanoseconds, big-endian), then its bytes.
package inlineblob

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/bos55/concordia/internal/blob"
	"github.com/bos55/concordia/internal/kv"
)

// Dir is a blob.Dir whose small blobs are in bucket of db and whose other
// blobs are in Files. Create writes files; only Put writes inline.
type Dir struct {
	Files  blob.Dir
	db     kv.DB
	bucket []byte
}

// New is a Dir over files and the bucket of db, which must exist.
func New(files blob.Dir, db kv.DB, bucket []byte) *Dir {
	return &Dir{Files: files, db: db, bucket: bucket}
}

const headerLen = 8

// Put stores data as the inline blob name in tx (a write transaction of
// the Dir's index): it is published when tx commits, durable as the
// index is. A file of that name stays; Open prefers the inline blob.
func (d *Dir) Put(tx kv.Tx, name string, data []byte, now time.Time) error {
	if err := checkName(name); err != nil {
		return err
	}
	v := make([]byte, headerLen+len(data))
	binary.BigEndian.PutUint64(v, uint64(now.UnixNano()))
	copy(v[headerLen:], data)
	return tx.Bucket(d.bucket).Put([]byte(name), v)
}

// Has reports whether name is an inline blob, in tx.
func (d *Dir) Has(tx kv.Tx, name string) bool {
	return len(tx.Bucket(d.bucket).Get([]byte(name))) >= headerLen
}

// checkName refuses what no blob is called, as diskblob does, so a name
// is valid or not whichever half would hold it.
func checkName(name string) error {
	if name == "" || name == "." || name == ".." || bytes.ContainsRune([]byte(name), '/') {
		return fmt.Errorf("blob name %q: not a plain file name", name)
	}
	return nil
}

// inline is the stored value of name, copied out of the transaction; ok
// is false when name is not inline.
func (d *Dir) inline(name string) (data []byte, mod time.Time, ok bool, err error) {
	err = d.db.View(func(tx kv.Tx) error {
		v := tx.Bucket(d.bucket).Get([]byte(name))
		if len(v) < headerLen {
			return nil
		}
		ok = true
		mod = time.Unix(0, int64(binary.BigEndian.Uint64(v)))
		data = bytes.Clone(v[headerLen:])
		return nil
	})
	return data, mod, ok, err
}

func (d *Dir) Create(ctx context.Context) (blob.Temp, error) {
	t, err := d.Files.Create(ctx)
	if err != nil {
		return nil, err
	}
	return &temp{Temp: t, d: d}, nil
}

// CreateNamed is the files' CreateNamed when they have one.
func (d *Dir) CreateNamed(ctx context.Context, name string) (blob.Temp, error) {
	t, err := blob.CreateFor(ctx, d.Files, name)
	if err != nil {
		return nil, err
	}
	return &temp{Temp: t, d: d}, nil
}

// Open opens the inline blob name, else the file.
func (d *Dir) Open(ctx context.Context, name string) (blob.Reader, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	data, _, ok, err := d.inline(name)
	if err != nil {
		return nil, err
	}
	if ok {
		return &Reader{Reader: bytes.NewReader(data)}, nil
	}
	return d.Files.Open(ctx, name)
}

func (d *Dir) Stat(ctx context.Context, name string) (blob.Info, error) {
	if err := checkName(name); err != nil {
		return blob.Info{}, err
	}
	data, mod, ok, err := d.inline(name)
	if err != nil {
		return blob.Info{}, err
	}
	if ok {
		return blob.Info{Name: name, Size: int64(len(data)), ModTime: mod}, nil
	}
	return d.Files.Stat(ctx, name)
}

// Remove deletes name, inline and as a file.
func (d *Dir) Remove(ctx context.Context, name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	if err := d.removeInline(name); err != nil {
		return err
	}
	return d.Files.Remove(ctx, name)
}

// removeInline deletes the inline blob name, if there is one: a write
// transaction only then.
func (d *Dir) removeInline(name string) error {
	var has bool
	if err := d.db.View(func(tx kv.Tx) error { has = d.Has(tx, name); return nil }); err != nil || !has {
		return err
	}
	return d.db.Update(func(tx kv.Tx) error { return tx.Bucket(d.bucket).Delete([]byte(name)) })
}

// List lists the inline blobs, then the files that are not also inline.
func (d *Dir) List(ctx context.Context, fn func(blob.Info) error) error {
	var infos []blob.Info
	if err := d.db.View(func(tx kv.Tx) error {
		return tx.Bucket(d.bucket).ForEach(func(k, v []byte) error {
			if len(v) < headerLen {
				return nil
			}
			infos = append(infos, blob.Info{Name: string(k), Size: int64(len(v) - headerLen),
				ModTime: time.Unix(0, int64(binary.BigEndian.Uint64(v)))})
			return nil
		})
	}); err != nil {
		return err
	}
	seen := make(map[string]bool, len(infos))
	for _, fi := range infos {
		seen[fi.Name] = true
		if err := fn(fi); err != nil {
			return err
		}
	}
	return d.Files.List(ctx, func(fi blob.Info) error {
		if seen[fi.Name] {
			return nil
		}
		return fn(fi)
	})
}

func (d *Dir) Sweep(ctx context.Context, cutoff time.Time) (int, error) {
	return d.Files.Sweep(ctx, cutoff)
}

// Sync makes the published file names durable; inline blobs are durable
// when their transaction commits.
func (d *Dir) Sync(ctx context.Context) error { return d.Files.Sync(ctx) }

// Local is "": an inline blob is no file a caller could rename or send
// with sendfile (Open's readers of files still are *os.File-backed).
func (d *Dir) Local() string { return "" }

// SyncStats is the files' directory fsync counts, when they keep them.
func (d *Dir) SyncStats() (calls, syncs uint64) {
	if s, ok := d.Files.(interface{ SyncStats() (uint64, uint64) }); ok {
		return s.SyncStats()
	}
	return 0, 0
}

// Reader reads an inline blob from memory.
type Reader struct{ *bytes.Reader }

func (r *Reader) Close() error { return nil }

// temp is a file being written; its Publish also drops an inline blob of
// the name, which would otherwise hide the new file (Publish replaces).
type temp struct {
	blob.Temp
	d *Dir
}

func (t *temp) Publish(name string) error {
	if err := t.Temp.Publish(name); err != nil {
		return err
	}
	return t.d.removeInline(name)
}
