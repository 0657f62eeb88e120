package nar

import (
	"encoding/binary"
	"fmt"
	"io"
	"sync"
)

// dumpBufSize is the size of the one buffer a dump writes through. File
// contents are read by the kernel straight into it and tokens are appended
// to it, so a tree of small files reaches the destination in few large
// writes: an eighth of the write calls Nix's 32 KiB BufferedSink makes,
// while small enough to stay in a core's L2 cache.
const dumpBufSize = 256 << 10

// Token sequences a dump writes, encoded once.
var (
	tokMagic       = tokens(magic)
	tokRegular     = tokens("(", "type", "regular")
	tokExecutable  = tokens("executable", "")
	tokContents    = tokens("contents")
	tokClose       = tokens(")")
	tokDirectory   = tokens("(", "type", "directory")
	tokEntryName   = tokens("entry", "(", "name")
	tokNode        = tokens("node")
	tokSymlinkTarg = tokens("(", "type", "symlink", "target")
	zeros          [8]byte
)

func tokens(ss ...string) []byte {
	var b []byte
	for _, s := range ss {
		b = binary.LittleEndian.AppendUint64(b, uint64(len(s)))
		b = append(b, s...)
		b = append(b, zeros[:padLen(uint64(len(s)))]...)
	}
	return b
}

// sink buffers the NAR on its way to w. Errors are sticky, so the dump code
// can write freely and check once per node. The first skip bytes are
// dropped instead of written (DumpPathFrom).
type sink struct {
	w     io.Writer
	buf   []byte
	n     int
	total int64
	skip  int64
	err   error
}

func (s *sink) reset(w io.Writer, size int) {
	s.w, s.n, s.total, s.skip, s.err = w, 0, 0, 0, nil
	if s.buf == nil {
		s.buf = make([]byte, size)
	}
}

func (s *sink) flush() {
	if s.err != nil || s.n == 0 {
		return
	}
	b := s.buf[:s.n]
	s.n = 0
	s.write(b)
}

// write sends b to w, less what is still to be skipped.
func (s *sink) write(b []byte) {
	if s.skip > 0 {
		if int64(len(b)) <= s.skip {
			s.skip -= int64(len(b))
			return
		}
		b = b[s.skip:]
		s.skip = 0
	}
	n, err := s.w.Write(b)
	s.total += int64(n)
	if err == nil && n != len(b) {
		err = io.ErrShortWrite
	}
	s.err = err
}

// raw appends b, flushing as needed. A block at least as large as the
// buffer goes to w directly rather than being copied through it.
func (s *sink) raw(b []byte) {
	if len(b) >= len(s.buf) && s.err == nil {
		s.flush()
		if s.err != nil {
			return
		}
		s.write(b)
		return
	}
	for len(b) > 0 {
		if s.n == len(s.buf) {
			s.flush()
			if s.err != nil {
				return
			}
		}
		c := copy(s.buf[s.n:], b)
		s.n += c
		b = b[c:]
	}
}

func (s *sink) u64(v uint64) {
	if len(s.buf)-s.n < 8 {
		s.flush()
		if s.err != nil {
			return
		}
	}
	binary.LittleEndian.PutUint64(s.buf[s.n:], v)
	s.n += 8
}

// str writes a string token: length, bytes, zero padding.
func (s *sink) str(b []byte) {
	s.u64(uint64(len(b)))
	s.raw(b)
	s.raw(zeros[:padLen(uint64(len(b)))])
}

// dumper is pooled so that a NAR costs a constant number of allocations
// however many files it holds, and repeated dumps cost almost none.
var dumperPool = sync.Pool{New: func() any { return new(dumper) }}

// DumpPath writes the NAR serialisation of the file system object at path
// to w, byte for byte what `nix-store --dump path` writes: directory entries
// sorted bytewise, a regular file executable when its owner x bit is set,
// symlinks not followed (the root included) and their targets kept as they
// are. Other file types (sockets, devices, fifos) are refused, as Nix does.
// It returns the number of bytes written.
func DumpPath(w io.Writer, path string) (int64, error) { return dump(w, path, 0) }

// DumpPathFrom writes what DumpPath would write after its first offset
// bytes, and returns the number of bytes written (none when the NAR is not
// longer than offset). The bytes before offset are not produced: on Linux
// the contents of the files wholly before it are not read at all (their
// size comes from the inode), so a client resuming the download of a large
// NAR near its end costs a walk of the tree's metadata, not a second read
// of everything it already has.
func DumpPathFrom(w io.Writer, path string, offset int64) (int64, error) {
	if offset < 0 {
		return 0, fmt.Errorf("nar: dump %s from offset %d: negative offset", path, offset)
	}
	return dump(w, path, offset)
}

func dump(w io.Writer, path string, offset int64) (int64, error) {
	// The path is used as given, like nix-store --dump does: "link/"
	// dumps the directory a symlink points to, "link" the symlink.
	d := dumperPool.Get().(*dumper)
	defer dumperPool.Put(d)
	d.reset(w)
	d.skip = offset
	d.raw(tokMagic)
	err := d.root(path)
	if err == nil {
		d.flush()
		err = d.err
	}
	total := d.total
	d.w = nil
	if err != nil {
		return total, fmt.Errorf("nar: dump %s: %w", path, err)
	}
	return total, nil
}
