package nar

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math"
	"sync"
)

// Reader reads a NAR as a stream of headers, like archive/tar: Next moves to
// the next node, Read reads the contents of a regular file. It accepts only
// the canonical form nix-store --dump writes (fields in their fixed order,
// entries sorted, names sane, padding zero, nothing after the root), so an
// accepted NAR re-serialises to the same bytes and thus the same NarHash.
// Every format error wraps ErrInvalid and is an *Error giving the offset.
//
// Memory is bounded whatever the input: only names and symlink targets are
// buffered, each at most MaxNameLen/MaxTargetLen bytes, and the open
// directories are one stack of name segments, so a directory nested d deep
// costs its names once (d*255 bytes at most), not a path string per level.
// ReaderOptions bound the rest (size, depth, node count).
type Reader struct {
	br    *bufio.Reader
	opts  ReaderOptions
	off   int64
	state readState
	// stack holds the open directories. Their paths are prefixes of
	// path, which is the path of the last node read without the root's
	// "/" ("" for the root, "/a/b" below it): entering an entry
	// truncates it to the directory's length and appends "/name".
	stack []dirFrame
	path  []byte
	// errAt is how much of path names the node being parsed, for
	// errors; -1 is none (before the root, after it).
	errAt     int
	nodes     int64
	remaining int64 // unread contents of the current file
	pad       int   // padding after the current file's contents
	maxName   int
	maxTarget int
	tok       []byte
	scratch   [8]byte // for lengths and padding; a local would escape
	hdr       Header  // the node last parsed; Next hands out a copy
	target    []byte  // its symlink target, valid until the next read
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

// dirFrame is an open directory: the length of its path in Reader.path
// and of the last entry name read in it, which follows that path after a
// "/" (entries below it are appended after the name, never over it), to
// enforce strictly increasing names.
type dirFrame struct {
	pathLen int
	prevLen int // 0: no entry yet (names are never empty)
}

// ReaderOptions bound what a Reader accepts beyond the format's own rules.
// The zero value bounds nothing but the format (names of MaxNameLen,
// targets of MaxTargetLen bytes), so a package importing this one sets
// its own policy. A NAR that exceeds a bound is refused with an *Error
// that wraps ErrInvalid and a *LimitError naming the bound.
type ReaderOptions struct {
	// MaxSize bounds the NAR's length in bytes; a file whose contents
	// would end past it is refused at its header, before its contents
	// are read. 0: no bound.
	MaxSize int64
	// MaxDepth bounds how deep a node may sit: the root is at depth 0,
	// its entries at 1. 0: no bound.
	MaxDepth int
	// MaxEntries bounds the number of nodes, the root included. 0: no
	// bound.
	MaxEntries int64
	// MaxNameLen and MaxTargetLen lower the format's bounds on entry
	// names and symlink targets; 0 (or more than the format allows)
	// keeps MaxNameLen and MaxTargetLen.
	MaxNameLen   int
	MaxTargetLen int
	// OmitPath leaves Header.Path empty, saving building a string of the
	// whole path for every node (its length grows with depth): for
	// readers that rebuild the tree from Header.Name and Header.Depth.
	OmitPath bool
}

// Names of the ReaderOptions bounds, as LimitError.Limit reports them.
const (
	LimitSize      = "size"
	LimitDepth     = "depth"
	LimitEntries   = "entries"
	LimitNameLen   = "name length"
	LimitTargetLen = "target length"
)

// LimitError is wrapped by the *Error of a NAR that exceeds a bound: the
// NAR may be well formed, but it is larger or deeper than the reader was
// told to accept.
type LimitError struct {
	Limit string // one of the Limit* names
	Max   int64  // the bound
	Got   int64  // what the NAR has (at least)
}

func (e *LimitError) Error() string {
	return fmt.Sprintf("over the %s limit of %d", e.Limit, e.Max)
}

// NewReader returns a Reader of the NAR in r, bounded only by the format.
// It buffers r, so r should not be read by others afterwards.
func NewReader(r io.Reader) *Reader { return NewReaderOptions(r, ReaderOptions{}) }

// NewReaderOptions returns a Reader of the NAR in r with the bounds of o.
func NewReaderOptions(r io.Reader, o ReaderOptions) *Reader {
	nr := &Reader{
		br:        bufio.NewReaderSize(r, 64<<10),
		opts:      o,
		errAt:     -1,
		maxName:   MaxNameLen,
		maxTarget: MaxTargetLen,
		tok:       make([]byte, 0, MaxTargetLen+8),
	}
	if o.MaxNameLen > 0 && o.MaxNameLen < MaxNameLen {
		nr.maxName = o.MaxNameLen
	}
	if o.MaxTargetLen > 0 && o.MaxTargetLen < MaxTargetLen {
		nr.maxTarget = o.MaxTargetLen
	}
	return nr
}

// Offset is the number of NAR bytes consumed so far. After Next returned
// io.EOF it is the size of the NAR.
func (r *Reader) Offset() int64 { return r.off }

// Next advances to the next node, skipping any unread contents of the
// current file, and returns its header. Nodes come in NAR order: a directory
// before its entries, entries sorted. After the root node is complete and
// the stream has ended it returns io.EOF; an error is sticky.
func (r *Reader) Next() (*Header, error) {
	if err := r.advance(); err != nil {
		return nil, err
	}
	h := new(Header)
	*h = r.hdr
	if h.Depth > 0 {
		parent := r.stack[len(r.stack)-1]
		if h.Type == TypeDirectory {
			parent = r.stack[len(r.stack)-2]
		}
		nameLen := len(r.path) - parent.pathLen - 1
		if r.opts.OmitPath {
			h.Name = string(r.path[len(r.path)-nameLen:])
		} else {
			// The name is the tail of the path: no second allocation.
			h.Path = string(r.path)
			h.Name = h.Path[len(h.Path)-nameLen:]
		}
	} else if !r.opts.OmitPath {
		h.Path = "/"
	}
	if h.Type == TypeSymlink {
		h.LinkTarget = string(r.target)
	}
	return h, nil
}

// advance is Next without building the header's strings: r.hdr holds the
// node's fixed fields.
func (r *Reader) advance() error {
	if r.err != nil {
		return r.err
	}
	if err := r.next(); err != nil {
		r.err = err
		return err
	}
	return nil
}

func (r *Reader) pathString(n int) string {
	if n == 0 {
		return "/"
	}
	return string(r.path[:n])
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
	return ValidateOptions(r, ReaderOptions{})
}

// ValidateOptions is Validate with the bounds of o.
func ValidateOptions(r io.Reader, o ReaderOptions) (narSize int64, err error) {
	// The read buffer is pooled: an uploaded closure is mostly small
	// NARs, for which a fresh 64 KiB buffer each (cleared, and faulted
	// in) cost more than validating them.
	br := validateBufs.Get().(*bufio.Reader)
	br.Reset(r)
	defer func() { br.Reset(nil); validateBufs.Put(br) }()
	nr := NewReaderOptions(br, o) // a bufio.Reader this size is used as is
	for {
		if err := nr.advance(); err != nil {
			if err == io.EOF {
				return nr.off, nil
			}
			return nr.off, err
		}
	}
}

var validateBufs = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 64<<10) }}

func (r *Reader) next() error {
	switch r.state {
	case stStart:
		if err := r.expect(magic); err != nil {
			return err
		}
		return r.node()
	case stFile:
		if err := r.skipContents(); err != nil {
			return err
		}
		if err := r.expect(")"); err != nil {
			return err
		}
		if err := r.endNode(); err != nil {
			return err
		}
	case stSymlink:
		if err := r.endNode(); err != nil {
			return err
		}
	case stDir:
	case stEOF:
		return io.EOF
	}
	for {
		if len(r.stack) == 0 {
			at := r.off
			if _, err := r.br.ReadByte(); err != io.EOF {
				if err != nil {
					return r.ioErr(err)
				}
				r.errAt = -1
				return r.fail(at, "trailing data after the root node", nil)
			}
			r.state = stEOF
			return io.EOF
		}
		top := &r.stack[len(r.stack)-1]
		r.errAt = top.pathLen
		at := r.off
		tok, err := r.readStr(16, "directory field", "")
		if err != nil {
			return err
		}
		switch string(tok) {
		case "entry":
		case ")":
			r.stack = r.stack[:len(r.stack)-1]
			if err := r.endNode(); err != nil {
				return err
			}
			continue
		default:
			return r.fail(at, fmt.Sprintf(`expected "entry" or ")", got %q`, tok), nil)
		}
		if err := r.expect("("); err != nil {
			return err
		}
		if err := r.expect("name"); err != nil {
			return err
		}
		at = r.off
		name, err := r.readStr(r.maxName, "entry name", LimitNameLen)
		if err != nil {
			return err
		}
		if !validName(name) {
			return r.fail(at, fmt.Sprintf("invalid entry name %q", name), nil)
		}
		start := top.pathLen + 1
		if top.prevLen > 0 {
			if prev := r.path[start : start+top.prevLen]; bytes.Compare(name, prev) <= 0 {
				return r.fail(at, fmt.Sprintf("entry %q follows %q: entries must be sorted and unique", name, prev), nil)
			}
		}
		if d := len(r.stack); r.opts.MaxDepth > 0 && d > r.opts.MaxDepth {
			return r.limit(at, fmt.Sprintf("entry %q is nested %d directories deep", name, d), LimitDepth, int64(r.opts.MaxDepth), int64(d))
		}
		r.path = append(append(r.path[:top.pathLen], '/'), name...)
		top.prevLen = len(name)
		if err := r.expect("node"); err != nil {
			return err
		}
		return r.node()
	}
}

// node parses the header of the node at r.path up to its contents
// (regular), its end (symlink) or its first entry (directory).
func (r *Reader) node() error {
	r.errAt = len(r.path)
	r.nodes++
	if r.opts.MaxEntries > 0 && r.nodes > r.opts.MaxEntries {
		return r.limit(r.off, "too many nodes", LimitEntries, r.opts.MaxEntries, r.nodes)
	}
	if err := r.expect("("); err != nil {
		return err
	}
	if err := r.expect("type"); err != nil {
		return err
	}
	at := r.off
	typ, err := r.readStr(16, "node type", "")
	if err != nil {
		return err
	}
	r.hdr = Header{Depth: len(r.stack)}
	h := &r.hdr
	switch string(typ) {
	case "regular":
		h.Type = TypeRegular
		at = r.off
		tok, err := r.readStr(16, "regular file field", "")
		if err != nil {
			return err
		}
		if string(tok) == "executable" {
			h.Executable = true
			at = r.off
			v, err := r.readStr(16, "executable marker", "")
			if err != nil {
				return err
			}
			if len(v) != 0 {
				return r.fail(at, fmt.Sprintf("executable marker must be empty, got %q", v), nil)
			}
			at = r.off
			if tok, err = r.readStr(16, "regular file field", ""); err != nil {
				return err
			}
		}
		if string(tok) != "contents" {
			return r.fail(at, fmt.Sprintf(`expected "contents", got %q`, tok), nil)
		}
		at = r.off
		size, err := r.readU64()
		if err != nil {
			return err
		}
		if size > math.MaxInt64 {
			return r.fail(at, fmt.Sprintf("file size %d out of range", size), nil)
		}
		h.Size = int64(size)
		h.Offset = r.off
		// The NAR goes on past the contents with the padding and at
		// least a ")": refuse here what cannot fit rather than after
		// reading gigabytes of it.
		if max := r.opts.MaxSize; max > 0 && (h.Size > max || r.off+h.Size+int64(padLen(size)) > max) {
			end := int64(math.MaxInt64)
			if h.Size <= math.MaxInt64-r.off {
				end = r.off + h.Size
			}
			return r.limit(at, fmt.Sprintf("a file of %d bytes makes the NAR too large", size), LimitSize, max, end)
		}
		r.remaining, r.pad, r.state = h.Size, padLen(size), stFile
	case "symlink":
		h.Type = TypeSymlink
		if err := r.expect("target"); err != nil {
			return err
		}
		at = r.off
		t, err := r.readStr(r.maxTarget, "symlink target", LimitTargetLen)
		if err != nil {
			return err
		}
		// Neither can be created by symlink(2), so no real tree has it.
		if len(t) == 0 || bytes.IndexByte(t, 0) >= 0 {
			return r.fail(at, fmt.Sprintf("invalid symlink target %q", t), nil)
		}
		// t is in r.tok, which the ")" below overwrites: keep a copy.
		r.target = append(r.target[:0], t...)
		if err := r.expect(")"); err != nil {
			return err
		}
		r.state = stSymlink
	case "directory":
		h.Type = TypeDirectory
		r.stack = append(r.stack, dirFrame{pathLen: len(r.path)})
		r.state = stDir
	default:
		return r.fail(at, fmt.Sprintf("unknown node type %q", typ), nil)
	}
	return nil
}

// endNode consumes the ")" closing the directory entry a finished node sat
// in, if it was not the root.
func (r *Reader) endNode() error {
	if len(r.stack) == 0 {
		return nil
	}
	r.errAt = r.stack[len(r.stack)-1].pathLen
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
	if max := r.opts.MaxSize; max > 0 && r.off > max {
		return r.limit(r.off-int64(n), "the NAR is too large", LimitSize, max, r.off)
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
// until the next read. The length is checked before anything is buffered;
// when limit is set, a longer one is a LimitError of that name.
func (r *Reader) readStr(max int, what, limit string) ([]byte, error) {
	at := r.off
	n, err := r.readU64()
	if err != nil {
		return nil, err
	}
	if n > uint64(max) {
		reason := fmt.Sprintf("%s length %d exceeds limit %d", what, n, max)
		if limit != "" {
			return nil, r.limit(at, reason, limit, int64(max), int64(min(n, math.MaxInt64)))
		}
		return nil, r.fail(at, reason, nil)
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

// fail builds the error, and only then the path string it names.
func (r *Reader) fail(at int64, reason string, err error) error {
	p := ""
	if r.errAt >= 0 {
		p = r.pathString(r.errAt)
	}
	return &Error{Offset: at, Path: p, Reason: reason, Err: err}
}

func (r *Reader) limit(at int64, reason, limit string, max, got int64) error {
	return r.fail(at, reason, &LimitError{Limit: limit, Max: max, Got: got})
}

// ioErr reports a failure of the underlying reader, which says nothing about
// the NAR, so it does not wrap ErrInvalid.
func (r *Reader) ioErr(err error) error {
	return fmt.Errorf("nar: read at offset %d: %w", r.off, err)
}
