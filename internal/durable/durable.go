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
)

// ErrExists is returned by WriteNew when path already exists.
var ErrExists = errors.New("already exists")

// WriteFile publishes data at path, replacing what was there.
func WriteFile(path string, data []byte, mode os.FileMode) error {
	return write(path, data, mode, os.Rename)
}

// WriteNew publishes data at path only if nothing is there yet: it links
// the temporary file into place, which, unlike rename, fails when the
// target exists (the error wraps ErrExists).
func WriteNew(path string, data []byte, mode os.FileMode) error {
	err := write(path, data, mode, os.Link)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s: %w", path, ErrExists)
	}
	return err
}

func write(path string, data []byte, mode os.FileMode, place func(tmp, path string) error) (err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // after a link, or on failure
	defer func() {
		if cerr := tmp.Close(); err == nil && cerr != nil && !errors.Is(cerr, os.ErrClosed) {
			err = fmt.Errorf("write %s: %w", path, cerr)
		}
	}()
	if err := tmp.Chmod(mode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("write %s: sync: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := place(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return SyncDir(dir)
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
