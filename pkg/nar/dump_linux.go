package nar

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"unsafe"

	"golang.org/x/sys/unix"
)

// On Linux the dump walks the tree with file descriptors: getdents64 for
// directory listings (its d_type saves an lstat per entry), openat and
// readlinkat relative to the parent directory, and names kept NUL-terminated
// in a per-depth arena so no syscall needs a freshly allocated C string.
// That makes the allocations of a dump O(depth), not O(files).

// statEveryEntry makes the dump ignore d_type, as it must on file systems
// that do not fill it in; tests set it to cover that path.
var statEveryEntry = false

type dumper struct {
	sink
	levels []*level
	dents  []byte
	link   []byte
	st     unix.Stat_t
}

// level is the state of one directory being dumped. Levels are reused by
// every directory at the same depth.
type level struct {
	fd    int
	names []byte // each name followed by a NUL
	ents  []dent
	cur   int
}

type dent struct {
	off, len uint32
	typ      uint8
}

func (l *level) name(i int) []byte {
	e := l.ents[i]
	return l.names[e.off : e.off+e.len]
}

func (l *level) Len() int           { return len(l.ents) }
func (l *level) Swap(i, j int)      { l.ents[i], l.ents[j] = l.ents[j], l.ents[i] }
func (l *level) Less(i, j int) bool { return bytes.Compare(l.name(i), l.name(j)) < 0 }

func (d *dumper) reset(w io.Writer) {
	d.sink.reset(w, dumpBufSize)
	if d.dents == nil {
		d.dents = make([]byte, 32<<10)
		d.link = make([]byte, unix.PathMax+1)
	}
}

// pathErr names the entry being dumped at depth (its parent's current
// entry), relative to the root, for error messages only.
func (d *dumper) pathErr(depth int, err error) error {
	p := "/"
	for i := 0; i < depth; i++ {
		l := d.levels[i]
		p = filepath.Join(p, string(l.name(l.cur)))
	}
	return fmt.Errorf("%s: %w", p, err)
}

func (d *dumper) root(path string) error {
	if err := unix.Lstat(path, &d.st); err != nil {
		return err
	}
	switch d.st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
		if err != nil {
			return err
		}
		return d.file(fd, 0)
	case unix.S_IFDIR:
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		return d.dir(fd, 0)
	case unix.S_IFLNK:
		n, err := readlink(path, d.link)
		if err != nil {
			return err
		}
		d.symlink(d.link[:n])
		return nil
	default:
		return errUnsupported(d.st.Mode)
	}
}

func errUnsupported(mode uint32) error {
	return fmt.Errorf("unsupported file type (mode %#o)", mode&unix.S_IFMT)
}

func readlink(path string, buf []byte) (int, error) {
	n, err := unix.Readlink(path, buf)
	if err != nil {
		return 0, err
	}
	if n >= len(buf) {
		return 0, errors.New("symlink target too long")
	}
	return n, nil
}

func (d *dumper) symlink(target []byte) {
	d.raw(tokSymlinkTarg)
	d.str(target)
	d.raw(tokClose)
}

// file dumps the regular file open at fd and closes it. Exactly st_size
// bytes are written, as Nix does; a file that shrinks meanwhile is an error.
func (d *dumper) file(fd, depth int) error {
	defer unix.Close(fd)
	if err := unix.Fstat(fd, &d.st); err != nil {
		return d.pathErr(depth, err)
	}
	if d.st.Mode&unix.S_IFMT != unix.S_IFREG {
		return d.pathErr(depth, errors.New("changed type while dumping"))
	}
	d.regularHeader(d.st.Mode, d.st.Size)
	return d.contents(fd, d.st.Size, depth)
}

func (d *dumper) regularHeader(mode uint32, size int64) {
	d.raw(tokRegular)
	if mode&unix.S_IXUSR != 0 {
		d.raw(tokExecutable)
	}
	d.raw(tokContents)
	d.u64(uint64(size))
}

// skippedFile dumps a regular file that may lie wholly before the bytes
// to skip, from its metadata: if its contents end before them, it is not
// even opened. It reports false when the file must be opened after all.
func (d *dumper) skippedFile(l *level, i, depth int) (bool, error) {
	// Rare enough (resumed downloads) for the name's string copy.
	if err := unix.Fstatat(l.fd, string(l.name(i)), &d.st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return true, d.pathErr(depth, err)
	}
	if d.st.Mode&unix.S_IFMT != unix.S_IFREG {
		return true, d.pathErr(depth, errors.New("changed type while dumping"))
	}
	// Where the contents end relative to what is still skipped: the
	// buffered bytes and the header come first.
	if d.skip < int64(d.n)+int64(len(tokRegular)+len(tokExecutable)+len(tokContents)+8)+d.st.Size {
		return false, nil
	}
	d.regularHeader(d.st.Mode, d.st.Size)
	return true, d.contents(-1, d.st.Size, depth)
}

// contents writes size bytes of the file open at fd, padding and the
// node's end. Bytes still to be skipped are not read: fd is read from the
// first byte that is written, and not at all (it may be -1) when the
// contents end before that.
func (d *dumper) contents(fd int, size int64, depth int) error {
	rem := size
	if d.skip > 0 {
		d.flush()
		if d.err != nil {
			return d.err
		}
		if skip := min(d.skip, size); skip > 0 {
			if skip < size {
				if _, err := unix.Seek(fd, skip, io.SeekStart); err != nil {
					return d.pathErr(depth, err)
				}
			}
			d.skip -= skip
			rem -= skip
		}
	}
	for rem > 0 {
		if d.err != nil {
			return d.err
		}
		free := len(d.buf) - d.n
		if free == 0 || (free < 64<<10 && int64(free) < rem) {
			d.flush()
			continue
		}
		p := d.buf[d.n:]
		if int64(len(p)) > rem {
			p = p[:rem]
		}
		n, err := unix.Read(fd, p)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return d.pathErr(depth, err)
		}
		if n == 0 {
			return d.pathErr(depth, fmt.Errorf("file shrank while dumping: %w", io.ErrUnexpectedEOF))
		}
		d.n += n
		rem -= int64(n)
	}
	d.raw(zeros[:padLen(uint64(size))])
	d.raw(tokClose)
	return d.err
}

// dir dumps the directory open at fd and closes it.
func (d *dumper) dir(fd, depth int) error {
	defer unix.Close(fd)
	if depth == len(d.levels) {
		d.levels = append(d.levels, &level{})
	}
	l := d.levels[depth]
	l.fd, l.names, l.ents, l.cur = fd, l.names[:0], l.ents[:0], 0
	if err := d.readDir(l); err != nil {
		return d.pathErr(depth, err)
	}
	sort.Sort(l)

	d.raw(tokDirectory)
	for i := range l.ents {
		l.cur = i
		name := l.name(i)
		d.raw(tokEntryName)
		d.str(name)
		d.raw(tokNode)
		if err := d.entry(l, i, depth+1); err != nil {
			return err
		}
		d.raw(tokClose)
		if d.err != nil {
			return d.err
		}
	}
	d.raw(tokClose)
	return d.err
}

func (d *dumper) entry(l *level, i, depth int) error {
	e := l.ents[i]
	name := &l.names[e.off] // NUL-terminated
	typ := e.typ
	if typ == unix.DT_UNKNOWN || statEveryEntry {
		// Some file systems do not fill d_type: ask the inode.
		fd, err := openat(l.fd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC)
		if err != nil {
			return d.pathErr(depth, err)
		}
		err = unix.Fstat(fd, &d.st)
		unix.Close(fd)
		if err != nil {
			return d.pathErr(depth, err)
		}
		switch d.st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			typ = unix.DT_REG
		case unix.S_IFDIR:
			typ = unix.DT_DIR
		case unix.S_IFLNK:
			typ = unix.DT_LNK
		default:
			return d.pathErr(depth, errUnsupported(d.st.Mode))
		}
	}
	switch typ {
	case unix.DT_REG:
		if d.skip > 0 {
			if done, err := d.skippedFile(l, i, depth); done {
				return err
			}
		}
		fd, err := openat(l.fd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NOCTTY)
		if err != nil {
			return d.pathErr(depth, err)
		}
		return d.file(fd, depth)
	case unix.DT_DIR:
		fd, err := openat(l.fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC)
		if err != nil {
			return d.pathErr(depth, err)
		}
		return d.dir(fd, depth)
	case unix.DT_LNK:
		n, err := readlinkat(l.fd, name, d.link)
		if err != nil {
			return d.pathErr(depth, err)
		}
		d.symlink(d.link[:n])
		return d.err
	default:
		return d.pathErr(depth, fmt.Errorf("unsupported file type (d_type %d)", typ))
	}
}

// readDir reads all entries of l.fd but "." and ".." into l.
func (d *dumper) readDir(l *level) error {
	for {
		n, err := unix.Getdents(l.fd, d.dents)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		b := d.dents[:n]
		for len(b) > 0 {
			// struct linux_dirent64: ino u64, off i64, reclen u16,
			// type u8, name (NUL-terminated, padded).
			if len(b) < 19 {
				return errors.New("short dirent")
			}
			reclen := int(binary.NativeEndian.Uint16(b[16:18]))
			if reclen < 19 || reclen > len(b) {
				return errors.New("bad dirent length")
			}
			typ := b[18]
			name := b[19:reclen]
			if i := bytes.IndexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			b = b[reclen:]
			if string(name) == "." || string(name) == ".." {
				continue
			}
			off := len(l.names)
			l.names = append(l.names, name...)
			l.names = append(l.names, 0)
			l.ents = append(l.ents, dent{off: uint32(off), len: uint32(len(name)), typ: typ})
		}
	}
}

// openat and readlinkat take the name as a pointer to a NUL-terminated
// byte string already in the level's arena, which unix.Openat (taking a Go
// string) would copy into a new allocation on every call.
func openat(dirfd int, name *byte, flags int) (int, error) {
	for {
		r, _, e := unix.Syscall6(unix.SYS_OPENAT, uintptr(dirfd), uintptr(unsafe.Pointer(name)), uintptr(flags), 0, 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return -1, e
		}
		return int(r), nil
	}
}

func readlinkat(dirfd int, name *byte, buf []byte) (int, error) {
	r, _, e := unix.Syscall6(unix.SYS_READLINKAT, uintptr(dirfd), uintptr(unsafe.Pointer(name)), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)), 0, 0)
	if e != 0 {
		return 0, e
	}
	if int(r) >= len(buf) {
		return 0, errors.New("symlink target too long")
	}
	return int(r), nil
}
