package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"

	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/pkg/narinfo"
)

// BuildLog opens the log Nix kept for a derivation, given by its base name.
// Like Nix it looks for <2 chars>/<rest> then the flat <base>, each plain
// and then .bz2. The name must be a valid .drv base name, and the file is
// opened through an os.Root, so neither the name nor a symlink in the log
// directory can reach outside it.
func (s *Store) BuildLog(ctx context.Context, drvBase string) (io.ReadCloser, string, error) {
	if _, _, err := narinfo.ParseDerivation(drvBase); err != nil {
		return nil, "", store.ErrNotFound
	}
	if err := ctx.Err(); err != nil {
		return nil, "", err
	}
	root, err := os.OpenRoot(s.logDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, "", store.ErrNotFound
	}
	if err != nil {
		return nil, "", fmt.Errorf("local store: log dir: %w", err)
	}
	defer root.Close()
	for _, name := range []string{drvBase[:2] + "/" + drvBase[2:], drvBase} {
		for _, c := range []struct{ suffix, compression string }{{"", ""}, {".bz2", "bz2"}} {
			f, err := openLog(root, name+c.suffix)
			if err == nil {
				return f, c.compression, nil
			}
			if !errors.Is(err, fs.ErrNotExist) {
				s.log.Warn("build log refused", "drv", drvBase, "file", name+c.suffix, "err", err)
				return nil, "", store.ErrNotFound
			}
		}
	}
	return nil, "", store.ErrNotFound
}

// errNotRegular refuses a log that is a directory, device or fifo.
var errNotRegular = errors.New("not a regular file")

// openLog opens a regular file below root. O_NONBLOCK keeps a fifo planted
// in the log directory from hanging the request in open(2); it has no
// effect on regular files.
func openLog(root *os.Root, name string) (*os.File, error) {
	f, err := root.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s: %w", name, errNotRegular)
	}
	return f, nil
}
