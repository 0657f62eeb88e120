package nar

import (
	"bufio"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
)

// Listing is the .ls document a binary cache serves next to a NAR
// ({"version":1,"root":NODE}), which lets `nix store ls` and friends browse
// a path without fetching it. It holds the tree's shape, never contents.
type Listing struct {
	Root *Node
}

// Node is one file system object of a Listing.
type Node struct {
	Type       NodeType
	Size       int64 // regular files
	Executable bool  // regular files
	// NarOffset is where the file's contents start in the uncompressed
	// NAR, so a client can fetch one file with a range request.
	NarOffset int64
	Target    string  // symlinks
	Entries   []Entry // directories, sorted bytewise by name
}

// Entry is a named child of a directory Node.
type Entry struct {
	Name string
	Node *Node
}

// ListingFromReader reads and validates a whole NAR from r and returns its
// listing. Contents are skipped, so memory grows with the number of nodes
// only.
func ListingFromReader(r io.Reader) (*Listing, error) {
	return ListingFromReaderOptions(r, ReaderOptions{})
}

// ListingFromReaderOptions is ListingFromReader with the bounds of o.
func ListingFromReaderOptions(r io.Reader, o ReaderOptions) (*Listing, error) {
	o.OmitPath = true
	nr := NewReaderOptions(r, o)
	// open[d] is the directory at depth d on the way to the last node:
	// the reader guarantees NAR order, so a node's parent is there.
	var open []*Node
	var root *Node
	for {
		h, err := nr.Next()
		if err == io.EOF {
			return &Listing{Root: root}, nil
		}
		if err != nil {
			return nil, err
		}
		n := &Node{Type: h.Type}
		switch h.Type {
		case TypeRegular:
			n.Size, n.Executable, n.NarOffset = h.Size, h.Executable, h.Offset
		case TypeSymlink:
			n.Target = h.LinkTarget
		}
		if h.Depth == 0 {
			root = n
		} else {
			p := open[h.Depth-1]
			p.Entries = append(p.Entries, Entry{Name: h.Name, Node: n})
		}
		if h.Type == TypeDirectory {
			open = append(open[:h.Depth], n)
		}
	}
}

// WriteListing reads and validates a whole NAR from r, with the bounds of
// o, and writes its listing to w as Listing.MarshalJSON renders it, one
// node at a time: memory does not grow with the number of nodes, so a NAR
// of millions of files is listed in the reader's constant memory. It
// returns the number of bytes written. w may have received part of the
// listing when the NAR turns out invalid: write to a temporary place.
func WriteListing(w io.Writer, r io.Reader, o ReaderOptions) (int64, error) {
	o.OmitPath = true
	nr := NewReaderOptions(r, o)
	bw := &countWriter{w: bufio.NewWriterSize(w, 64<<10)}
	// hasEntries[d] says whether the open directory at depth d has had
	// an entry written (so the next one needs a comma).
	var hasEntries []bool
	var b []byte
	closeTo := func(depth int) {
		for len(hasEntries) > depth {
			hasEntries = hasEntries[:len(hasEntries)-1]
			b = append(b, "}}"...)
		}
	}
	b = append(b, `{"version":1,"root":`...)
	for {
		h, err := nr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return bw.n, err
		}
		closeTo(h.Depth)
		if h.Depth > 0 {
			if hasEntries[h.Depth-1] {
				b = append(b, ',')
			}
			hasEntries[h.Depth-1] = true
			b = appendString(b, h.Name)
			b = append(b, ':')
		}
		if h.Type == TypeDirectory {
			b = append(b, `{"type":"directory","entries":{`...)
			hasEntries = append(hasEntries, false)
		} else {
			b, _ = appendNode(b, &Node{Type: h.Type, Size: h.Size, Executable: h.Executable, NarOffset: h.Offset, Target: h.LinkTarget})
		}
		if len(b) >= 32<<10 {
			bw.Write(b)
			b = b[:0]
		}
	}
	closeTo(0)
	b = append(b, '}')
	bw.Write(b)
	if bw.err == nil {
		bw.err = bw.w.(*bufio.Writer).Flush()
	}
	return bw.n, bw.err
}

// countWriter counts what reaches w and keeps the first error.
type countWriter struct {
	w   io.Writer
	n   int64
	err error
}

func (c *countWriter) Write(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.w.Write(p)
	c.n += int64(n)
	c.err = err
	return n, err
}

// Lookup returns the node at path ("/" or "/a/b", or "" for the root), or
// nil if there is none. Symlinks are not followed.
func (l *Listing) Lookup(path string) *Node {
	n := l.Root
	for _, name := range strings.Split(strings.Trim(path, "/"), "/") {
		if name == "" {
			continue
		}
		if n == nil || n.Type != TypeDirectory {
			return nil
		}
		i := sort.Search(len(n.Entries), func(i int) bool { return n.Entries[i].Name >= name })
		if i == len(n.Entries) || n.Entries[i].Name != name {
			return nil
		}
		n = n.Entries[i].Node
	}
	return n
}

// MarshalJSON renders the listing exactly as Nix 2.8's binary cache store
// writes it with write-nar-listing=1: no whitespace, keys in the order
// type, size, executable (only when true), narOffset (only when non-zero),
// entries in NAR order, strings escaped the way Nix's JSON writer does.
// Call it directly: encoding/json.Marshal would re-escape <, > and &, which
// Nix does not.
func (l *Listing) MarshalJSON() ([]byte, error) {
	if l.Root == nil {
		return nil, fmt.Errorf("nar: listing has no root")
	}
	b := append([]byte(nil), `{"version":1,"root":`...)
	b, err := appendNode(b, l.Root)
	if err != nil {
		return nil, err
	}
	return append(b, '}'), nil
}

func appendNode(b []byte, n *Node) ([]byte, error) {
	switch n.Type {
	case TypeRegular:
		b = append(b, `{"type":"regular","size":`...)
		b = strconv.AppendInt(b, n.Size, 10)
		if n.Executable {
			b = append(b, `,"executable":true`...)
		}
		if n.NarOffset != 0 {
			b = append(b, `,"narOffset":`...)
			b = strconv.AppendInt(b, n.NarOffset, 10)
		}
		b = append(b, '}')
	case TypeSymlink:
		b = append(b, `{"type":"symlink","target":`...)
		b = appendString(b, n.Target)
		b = append(b, '}')
	case TypeDirectory:
		b = append(b, `{"type":"directory","entries":{`...)
		for i, e := range n.Entries {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, e.Name)
			b = append(b, ':')
			var err error
			if b, err = appendNode(b, e.Node); err != nil {
				return nil, err
			}
		}
		b = append(b, "}}"...)
	default:
		return nil, fmt.Errorf("nar: listing node of unknown type %q", n.Type)
	}
	return b, nil
}

// appendString quotes s as Nix's JSON writer (libutil/json.cc) does: only
// '"', '\\', control characters are escaped (\n, \r, \t by name, the rest as
// \u00xx in lower case); everything else, DEL and bytes that are not UTF-8
// included, is copied raw.
func appendString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c == '\n':
			b = append(b, `\n`...)
		case c == '\r':
			b = append(b, `\r`...)
		case c == '\t':
			b = append(b, `\t`...)
		case c < 0x20:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}
