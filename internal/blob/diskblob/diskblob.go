// Package diskblob keeps blobs as files in one directory: the embedded
// default. A blob being written is a temp file (prefix .tmp-) in the same
// directory, renamed into place by Publish.
package diskblob

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/bos55/concordia/internal/blob"
	"github.com/bos55/concordia/internal/durable"
)

// TempPrefix starts the names of files being written.
const TempPrefix = ".tmp-"

// isTemp tells the files of unfinished writes: this package's, and those
// durable.Create left in a directory written that way before.
func isTemp(name string) bool { return strings.HasPrefix(name, TempPrefix) || durable.IsTemp(name) }

// Dir is a directory of blob files. Its Syncs share directory fsyncs
// (durable.DirSyncer): parallel uploads publish into it at once.
type Dir struct {
	path   string
	syncer *durable.DirSyncer
}

// Open makes (creating) the directory path a blob.Dir.
func Open(path string) (*Dir, error) {
	if err := os.MkdirAll(path, 0o755); err != nil {
		return nil, err
	}
	return &Dir{path: path, syncer: durable.NewDirSyncer(path)}, nil
}

func (d *Dir) Local() string { return d.path }

// SyncFile is (*os.File).Sync, replaced by tests to make fsync slow or fail.
var SyncFile = (*os.File).Sync

func (d *Dir) Create(ctx context.Context) (blob.Temp, error) {
	f, err := os.CreateTemp(d.path, TempPrefix+"*")
	if err != nil {
		return nil, err
	}
	return &temp{f: f, dir: d.path}, nil
}

func (d *Dir) file(name string) (string, error) {
	if name == "" || strings.ContainsRune(name, '/') || name == "." || name == ".." || strings.HasPrefix(name, TempPrefix) {
		return "", fmt.Errorf("blob name %q: not a plain file name", name)
	}
	return filepath.Join(d.path, name), nil
}

func (d *Dir) Open(ctx context.Context, name string) (blob.Reader, error) {
	p, err := d.file(name)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &File{File: f, size: fi.Size()}, nil
}

func (d *Dir) Stat(ctx context.Context, name string) (blob.Info, error) {
	p, err := d.file(name)
	if err != nil {
		return blob.Info{}, err
	}
	fi, err := os.Stat(p)
	if err != nil {
		return blob.Info{}, err
	}
	if !fi.Mode().IsRegular() {
		return blob.Info{}, fmt.Errorf("%s: not a regular file: %w", p, fs.ErrNotExist)
	}
	return blob.Info{Name: name, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

func (d *Dir) Remove(ctx context.Context, name string) error {
	p, err := d.file(name)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// List lists the published blobs; anything that is not a regular file
// is left out.
func (d *Dir) List(ctx context.Context, fn func(blob.Info) error) error {
	ents, err := os.ReadDir(d.path)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if isTemp(e.Name()) || !e.Type().IsRegular() {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue // removed meanwhile
		}
		if err := fn(blob.Info{Name: e.Name(), Size: fi.Size(), ModTime: fi.ModTime()}); err != nil {
			return err
		}
	}
	return nil
}

// Sweep removes temp files last written before cutoff.
func (d *Dir) Sweep(ctx context.Context, cutoff time.Time) (int, error) {
	ents, err := os.ReadDir(d.path)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range ents {
		if !isTemp(e.Name()) {
			continue
		}
		if fi, err := e.Info(); err == nil && fi.ModTime().Before(cutoff) {
			if os.Remove(filepath.Join(d.path, e.Name())) == nil {
				n++
			}
		}
	}
	return n, nil
}

func (d *Dir) Sync(ctx context.Context) error { return d.syncer.Sync() }

// SyncStats returns how many calls of Sync there were and how many
// directory fsyncs ran them.
func (d *Dir) SyncStats() (calls, syncs uint64) { return d.syncer.Stats() }

// File is a published blob file. Its *os.File is there for sendfile.
type File struct {
	*os.File
	size int64
}

func (f *File) Size() int64 { return f.size }

type temp struct {
	f         *os.File
	dir       string
	published bool
	once      sync.Once
	err       error
}

func (t *temp) Write(p []byte) (int, error) { return t.f.Write(p) }
func (t *temp) Sync() error                 { return SyncFile(t.f) }

func (t *temp) Publish(name string) error {
	if name == "" || strings.ContainsRune(name, '/') || strings.HasPrefix(name, TempPrefix) {
		return fmt.Errorf("blob name %q: not a plain file name", name)
	}
	if err := os.Rename(t.f.Name(), filepath.Join(t.dir, name)); err != nil {
		return err
	}
	t.published = true
	return nil
}

func (t *temp) Close() error {
	t.once.Do(func() {
		t.err = t.f.Close()
		if !t.published {
			os.Remove(t.f.Name())
		}
	})
	return t.err
}
