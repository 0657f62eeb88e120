// Package durable publishes files so that a crash never leaves half of one
// behind and a published file survives a power cut: the bytes go to a
// temporary file in the same directory, which is fsynced, then renamed (or
// hard-linked, to refuse replacing) into place, and the directory is
// fsynced so the new name is on disk too. Every package that writes state
// uses it rather than its own copy of these steps.
package durable

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// ErrExists is returned by WriteNew when path already exists.
var ErrExists = errors.New("already exists")

// WriteFile publishes data at path, replacing what was there.
func WriteFile(path string, data []byte, mode os.FileMode) error {
	return write(path, data, mode, (*File).Commit)
}

// WriteNew publishes data at path only if nothing is there yet: it links
// the temporary file into place, which, unlike rename, fails when the
// target exists (the error wraps ErrExists).
func WriteNew(path string, data []byte, mode os.FileMode) error {
	return write(path, data, mode, (*File).CommitNew)
}

// write fills a temporary file with data and publishes it with commit.
func write(path string, data []byte, mode os.FileMode, commit func(*File) error) error {
	f, err := Create(path, mode)
	if err != nil {
		return err
	}
	defer f.Abort()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return commit(f)
}

// File is a file being written that appears at its path only when
// committed, for contents too large to hold in memory (streamed uploads).
// Until then it is a temporary file in the same directory, named with
// TempPrefix(path), which Abort (or a cleanup after a crash) removes.
type File struct {
	*os.File
	path string
	done bool
}

// TempPrefix is how the temporary files of path start, so a caller that
// owns a directory can remove the leftovers of an interrupted run.
func TempPrefix(path string) string { return "." + filepath.Base(path) + ".tmp-" }

// IsTemp reports whether name (a base name) is a temporary file of this
// package, of any path.
func IsTemp(name string) bool { return strings.HasPrefix(name, ".") && strings.Contains(name, ".tmp-") }

// Create starts a file to be published at path with mode.
func Create(path string, mode os.FileMode) (*File, error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), TempPrefix(path)+"*")
	if err != nil {
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	return &File{File: tmp, path: path}, nil
}

// Path is where Commit publishes the file.
func (f *File) Path() string { return f.path }

// Commit publishes the file at its path, replacing what was there: fsync,
// close, rename, fsync of the directory. The file is gone from its
// temporary name whatever the outcome.
func (f *File) Commit() error { return f.commit(os.Rename) }

// CommitNew publishes the file only if nothing is at its path yet (the
// error then wraps ErrExists).
func (f *File) CommitNew() error {
	err := f.commit(os.Link)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s: %w", f.path, ErrExists)
	}
	return err
}

func (f *File) commit(place func(tmp, path string) error) error {
	if f.done {
		return fmt.Errorf("write %s: %w", f.path, os.ErrClosed)
	}
	f.done = true
	defer os.Remove(f.Name()) // after a link, or on failure
	if err := f.Sync(); err != nil {
		f.File.Close()
		return fmt.Errorf("write %s: sync: %w", f.path, err)
	}
	if err := f.File.Close(); err != nil {
		return fmt.Errorf("write %s: %w", f.path, err)
	}
	if err := place(f.Name(), f.path); err != nil {
		return fmt.Errorf("write %s: %w", f.path, err)
	}
	return SyncDir(filepath.Dir(f.path))
}

// Abort drops the file unpublished; after Commit it does nothing, so it
// can be deferred.
func (f *File) Abort() {
	if f.done {
		return
	}
	f.done = true
	f.File.Close()
	os.Remove(f.Name())
}

// SyncDir fsyncs directory dir, so the names created or renamed in it are
// on disk.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
