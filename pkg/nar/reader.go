package nar

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math"
)

// Reader reads a NAR as a stream of headers, like archive/tar: Next moves to
// the next node, Read reads the contents of a regular file. It accepts only
// the canonical form nix-store --dump writes (fields in their fixed order,
// entries sorted, names sane, padding zero, nothing after the root), so an
// accepted NAR re-serialises to the same bytes and thus the same NarHash.
// Every format error wraps ErrInvalid and is an *Error giving the offset.
//
// Memory is bounded whatever the input: only names and symlink targets are
// buffered, each at most MaxNameLen/MaxTargetLen bytes, plus one frame per
// open directory.
type Reader struct {
	br        *bufio.Reader
	off       int64
	state     readState
	stack     []frame
	path      string // node being parsed, for errors
	remaining int64  // unread contents of the current file
	pad       int    // padding after the current file's contents
	tok       []byte
	scratch   [8]byte // for lengths and padding; a local would escape
	err       error
}

type readState int

const (
	stStart   readState = iota
	stFile              // a regular file's header was returned
	stSymlink           // a symlink was returned, its ")" consumed
	stDir               // a directory was returned
	stEOF
)

// frame is an open directory: its path and the last entry name seen, to
// enforce strictly increasing names.
type frame struct {
	path    string
	prev    string
	hasPrev bool
}

// NewReader returns a Reader of the NAR in r. It buffers r, so r should not
// be read by others afterwards.
func NewReader(r io.Reader) *Reader {
	return &Reader{
		br:  bufio.NewReaderSize(r, 64<<10),
		tok: make([]byte, 0, MaxTargetLen+8),
	}
}

// Offset is the number of NAR bytes consumed so far. After Next returned
// io.EOF it is the size of the NAR.
func (r *Reader) Offset() int64 { return r.off }

// Next advances to the next node, skipping any unread contents of the
// current file, and returns its header. Nodes come in NAR order: a directory
// before its entries, entries sorted. After the root node is complete and
// the stream has ended it returns io.EOF; an error is sticky.
func (r *Reader) Next() (*Header, error) {
	if r.err != nil {
		return nil, r.err
	}
	h, err := r.next()
	if err != nil {
		r.err = err
		return nil, err
	}
	return h, nil
}

// Read reads from the contents of the current regular file, returning
// io.EOF at its end (or when the current node is no regular file).
func (r *Reader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if r.state != stFile || r.remaining == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > r.remaining {
		p = p[:r.remaining]
	}
	n, err := r.br.Read(p)
	r.off += int64(n)
	r.remaining -= int64(n)
	if err == io.EOF && r.remaining > 0 {
		r.err = r.fail(r.off, "truncated file contents", io.ErrUnexpectedEOF)
		return n, r.err
	}
	if err != nil && err != io.EOF {
		r.err = r.ioErr(err)
		return n, r.err
	}
	return n, nil
}

// Validate reads a whole NAR from r, checking its structure, and returns its
// size. Contents are read but not kept.
func Validate(r io.Reader) (narSize int64, err error) {
	nr := NewReader(r)
	for {
		if _, err := nr.Next(); err != nil {
			if err == io.EOF {
				return nr.off, nil
			}
			return nr.off, err
		}
	}
}

func (r *Reader) next() (*Header, error) {
	switch r.state {
	case stStart:
		if err := r.expect(magic); err != nil {
			return nil, err
		}
		return r.node("/")
	case stFile:
		if err := r.skipContents(); err != nil {
			return nil, err
		}
		if err := r.expect(")"); err != nil {
			return nil, err
		}
		if err := r.endNode(); err != nil {
			return nil, err
		}
	case stSymlink:
		if err := r.endNode(); err != nil {
			return nil, err
		}
	case stDir:
	case stEOF:
		return nil, io.EOF
	}
	for {
		if len(r.stack) == 0 {
			at := r.off
			if _, err := r.br.ReadByte(); err != io.EOF {
				if err != nil {
					return nil, r.ioErr(err)
				}
				r.path = ""
				return nil, r.fail(at, "trailing data after the root node", nil)
			}
			r.state = stEOF
			return nil, io.EOF
		}
		top := &r.stack[len(r.stack)-1]
		r.path = top.path
		at := r.off
		tok, err := r.readStr(16, "directory field")
		if err != nil {
			return nil, err
		}
		switch string(tok) {
		case "entry":
		case ")":
			r.stack = r.stack[:len(r.stack)-1]
			if err := r.endNode(); err != nil {
				return nil, err
			}
			continue
		default:
			return nil, r.fail(at, fmt.Sprintf(`expected "entry" or ")", got %q`, tok), nil)
		}
		if err := r.expect("("); err != nil {
			return nil, err
		}
		if err := r.expect("name"); err != nil {
			return nil, err
		}
		at = r.off
		name, err := r.readStr(MaxNameLen, "entry name")
		if err != nil {
			return nil, err
		}
		if !validName(name) {
			return nil, r.fail(at, fmt.Sprintf("invalid entry name %q", name), nil)
		}
		if top.hasPrev && string(name) <= top.prev {
			return nil, r.fail(at, fmt.Sprintf("entry %q follows %q: entries must be sorted and unique", name, top.prev), nil)
		}
		var p string
		if top.path == "/" {
			p = "/" + string(name)
		} else {
			p = top.path + "/" + string(name)
		}
		// The name is the tail of the path: no second allocation.
		top.prev, top.hasPrev = p[len(p)-len(name):], true
		if err := r.expect("node"); err != nil {
			return nil, err
		}
		return r.node(p)
	}
}

// node parses a node's header up to its contents (regular), its end
// (symlink) or its first entry (directory).
func (r *Reader) node(path string) (*Header, error) {
	r.path = path
	if err := r.expect("("); err != nil {
		return nil, err
	}
	if err := r.expect("type"); err != nil {
		return nil, err
	}
	at := r.off
	typ, err := r.readStr(16, "node type")
	if err != nil {
		return nil, err
	}
	h := &Header{Path: path}
	switch string(typ) {
	case "regular":
		h.Type = TypeRegular
		at = r.off
		tok, err := r.readStr(16, "regular file field")
		if err != nil {
			return nil, err
		}
		if string(tok) == "executable" {
			h.Executable = true
			at = r.off
			v, err := r.readStr(16, "executable marker")
			if err != nil {
				return nil, err
			}
			if len(v) != 0 {
				return nil, r.fail(at, fmt.Sprintf("executable marker must be empty, got %q", v), nil)
			}
			at = r.off
			if tok, err = r.readStr(16, "regular file field"); err != nil {
				return nil, err
			}
		}
		if string(tok) != "contents" {
			return nil, r.fail(at, fmt.Sprintf(`expected "contents", got %q`, tok), nil)
		}
		at = r.off
		size, err := r.readU64()
		if err != nil {
			return nil, err
		}
		if size > math.MaxInt64 {
			return nil, r.fail(at, fmt.Sprintf("file size %d out of range", size), nil)
		}
		h.Size = int64(size)
		h.Offset = r.off
		r.remaining, r.pad, r.state = h.Size, padLen(size), stFile
	case "symlink":
		h.Type = TypeSymlink
		if err := r.expect("target"); err != nil {
			return nil, err
		}
		at = r.off
		t, err := r.readStr(MaxTargetLen, "symlink target")
		if err != nil {
			return nil, err
		}
		// Neither can be created by symlink(2), so no real tree has it.
		if len(t) == 0 || bytes.IndexByte(t, 0) >= 0 {
			return nil, r.fail(at, fmt.Sprintf("invalid symlink target %q", t), nil)
		}
		h.LinkTarget = string(t)
		if err := r.expect(")"); err != nil {
			return nil, err
		}
		r.state = stSymlink
	case "directory":
		h.Type = TypeDirectory
		r.stack = append(r.stack, frame{path: path})
		r.state = stDir
	default:
		return nil, r.fail(at, fmt.Sprintf("unknown node type %q", typ), nil)
	}
	return h, nil
}

// endNode consumes the ")" closing the directory entry a finished node sat
// in, if it was not the root.
func (r *Reader) endNode() error {
	if len(r.stack) == 0 {
		return nil
	}
	r.path = r.stack[len(r.stack)-1].path
	return r.expect(")")
}

func (r *Reader) skipContents() error {
	for r.remaining > 0 {
		n := r.remaining
		if n > 1<<30 {
			n = 1 << 30
		}
		d, err := r.br.Discard(int(n))
		r.off += int64(d)
		r.remaining -= int64(d)
		if err != nil {
			if err == io.EOF {
				return r.fail(r.off, "truncated file contents", io.ErrUnexpectedEOF)
			}
			return r.ioErr(err)
		}
	}
	return r.readPad(r.pad)
}

func (r *Reader) readFull(p []byte) error {
	n, err := io.ReadFull(r.br, p)
	r.off += int64(n)
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return r.fail(r.off, "truncated", io.ErrUnexpectedEOF)
	}
	if err != nil {
		return r.ioErr(err)
	}
	return nil
}

func (r *Reader) readU64() (uint64, error) {
	b := &r.scratch
	if err := r.readFull(b[:]); err != nil {
		return 0, err
	}
	return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
		uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56, nil
}

func (r *Reader) readPad(n int) error {
	if n == 0 {
		return nil
	}
	at := r.off
	b := &r.scratch
	if err := r.readFull(b[:n]); err != nil {
		return err
	}
	for _, c := range b[:n] {
		if c != 0 {
			return r.fail(at, "non-zero padding", nil)
		}
	}
	return nil
}

// readStr reads a string token of at most max bytes. The result is valid
// until the next read. The length is checked before anything is buffered.
func (r *Reader) readStr(max int, what string) ([]byte, error) {
	at := r.off
	n, err := r.readU64()
	if err != nil {
		return nil, err
	}
	if n > uint64(max) {
		return nil, r.fail(at, fmt.Sprintf("%s length %d exceeds limit %d", what, n, max), nil)
	}
	return r.readBody(n)
}

// readBody reads the n bytes and the padding of a string token whose length
// was read and bounded by the caller.
func (r *Reader) readBody(n uint64) ([]byte, error) {
	b := r.tok[:n]
	if err := r.readFull(b); err != nil {
		return nil, err
	}
	if err := r.readPad(padLen(n)); err != nil {
		return nil, err
	}
	return b, nil
}

// expect reads a token that must be kw.
func (r *Reader) expect(kw string) error {
	at := r.off
	n, err := r.readU64()
	if err != nil {
		return err
	}
	if n != uint64(len(kw)) && n > 64 {
		return r.fail(at, fmt.Sprintf("expected %q, got a token of length %d", kw, n), nil)
	}
	b, err := r.readBody(n)
	if err != nil {
		return err
	}
	if string(b) != kw {
		return r.fail(at, fmt.Sprintf("expected %q, got %q", kw, b), nil)
	}
	return nil
}

func (r *Reader) fail(at int64, reason string, err error) error {
	return &Error{Offset: at, Path: r.path, Reason: reason, Err: err}
}

// ioErr reports a failure of the underlying reader, which says nothing about
// the NAR, so it does not wrap ErrInvalid.
func (r *Reader) ioErr(err error) error {
	return fmt.Errorf("nar: read at offset %d: %w", r.off, err)
}
