//go:build !linux

package nar

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
)

// dumper is the portable walk through package os. It produces the same
// bytes as the Linux one but allocates per file; the fleet runs Linux.
type dumper struct {
	sink
}

func (d *dumper) reset(w io.Writer) { d.sink.reset(w, dumpBufSize) }

func (d *dumper) root(path string) error { return d.node(path) }

func (d *dumper) node(path string) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return err
	}
	switch {
	case fi.Mode().IsRegular():
		return d.file(path)
	case fi.IsDir():
		return d.dir(path)
	case fi.Mode()&os.ModeSymlink != 0:
		t, err := os.Readlink(path)
		if err != nil {
			return err
		}
		d.raw(tokSymlinkTarg)
		d.str([]byte(t))
		d.raw(tokClose)
		return d.err
	default:
		return fmt.Errorf("%s: unsupported file type %v", path, fi.Mode().Type())
	}
}

func (d *dumper) file(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s: changed type while dumping", path)
	}
	d.raw(tokRegular)
	if fi.Mode()&0o100 != 0 {
		d.raw(tokExecutable)
	}
	d.raw(tokContents)
	size := fi.Size()
	d.u64(uint64(size))
	for rem := size; rem > 0; {
		if d.err != nil {
			return d.err
		}
		if d.n == len(d.buf) {
			d.flush()
			continue
		}
		p := d.buf[d.n:]
		if int64(len(p)) > rem {
			p = p[:rem]
		}
		n, err := f.Read(p)
		d.n += n
		rem -= int64(n)
		if errors.Is(err, io.EOF) && rem > 0 {
			return fmt.Errorf("%s: file shrank while dumping: %w", path, io.ErrUnexpectedEOF)
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
	}
	d.raw(zeros[:padLen(uint64(size))])
	d.raw(tokClose)
	return d.err
}

func (d *dumper) dir(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return err
	}
	sort.Strings(names)
	d.raw(tokDirectory)
	for _, name := range names {
		d.raw(tokEntryName)
		d.str([]byte(name))
		d.raw(tokNode)
		if err := d.node(filepath.Join(path, name)); err != nil {
			return err
		}
		d.raw(tokClose)
	}
	d.raw(tokClose)
	return d.err
}
