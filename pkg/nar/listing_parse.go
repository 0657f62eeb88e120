package nar

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
)

// ErrListing is wrapped by every error about a malformed .ls document, so a
// client can tell a cache's bad answer from its own I/O error.
var ErrListing = errors.New("invalid NAR listing")

// defaultListingDepth bounds a listing's nesting when the options do not:
// encoding/json's own bound, so the parser's recursion is never the limit.
const defaultListingDepth = 10000

// ParseListing reads a .ls document ({"version":1,"root":NODE}) as a binary
// cache serves it. It is a network input: the document is checked as the
// NAR reader checks a NAR (entry names that cannot escape their directory,
// no duplicates, the format's name and target lengths, sizes and offsets
// that are integers >= 0, one of the three node types with the fields it
// needs) and entries are sorted bytewise, so Lookup works on any
// valid order. Keys it does not know are skipped. Strings are JSON
// strings: a name Nix wrote as raw bytes that are not UTF-8 reads as
// U+FFFD.
func ParseListing(r io.Reader) (*Listing, error) {
	return ParseListingOptions(r, ReaderOptions{})
}

// ParseListingOptions is ParseListing within the bounds of o (MaxDepth,
// MaxEntries, MaxNameLen, MaxTargetLen; MaxSize bounds each file's size).
func ParseListingOptions(r io.Reader, o ReaderOptions) (*Listing, error) {
	p := &listingParser{dec: json.NewDecoder(r), o: o}
	p.dec.UseNumber()
	l, err := p.document()
	if err != nil {
		return nil, err
	}
	return l, nil
}

type listingParser struct {
	dec     *json.Decoder
	o       ReaderOptions
	entries int64
}

func (p *listingParser) fail(format string, a ...any) error {
	return fmt.Errorf("%w at byte %d: %s", ErrListing, p.dec.InputOffset(), fmt.Sprintf(format, a...))
}

// token reads the next token; a JSON syntax error is a bad listing, and so
// is the end of the input where more was due.
func (p *listingParser) token() (json.Token, error) {
	t, err := p.dec.Token()
	if err == io.EOF {
		return nil, p.fail("unexpected end")
	}
	var syn *json.SyntaxError
	if errors.As(err, &syn) || errors.Is(err, io.ErrUnexpectedEOF) {
		return nil, p.fail("%v", err)
	}
	return t, err
}

func (p *listingParser) delim(want json.Delim) error {
	t, err := p.token()
	if err != nil {
		return err
	}
	if d, ok := t.(json.Delim); !ok || d != want {
		return p.fail("want %q, got %v", want, t)
	}
	return nil
}

// key reads an object's next key, or reports the end of the object.
func (p *listingParser) key() (string, bool, error) {
	t, err := p.token()
	if err != nil {
		return "", false, err
	}
	if d, ok := t.(json.Delim); ok && d == '}' {
		return "", false, nil
	}
	k, ok := t.(string)
	if !ok {
		return "", false, p.fail("want a key, got %v", t)
	}
	return k, true, nil
}

func (p *listingParser) document() (*Listing, error) {
	if err := p.delim('{'); err != nil {
		return nil, err
	}
	var root *Node
	version := false
	for {
		k, more, err := p.key()
		if err != nil {
			return nil, err
		}
		if !more {
			break
		}
		switch k {
		case "version":
			n, err := p.integer()
			if err != nil {
				return nil, err
			}
			if n != 1 {
				return nil, p.fail("version %d (want 1)", n)
			}
			version = true
		case "root":
			if root != nil {
				return nil, p.fail("two roots")
			}
			if root, err = p.node(0); err != nil {
				return nil, err
			}
		default:
			if err := p.skip(); err != nil {
				return nil, err
			}
		}
	}
	if !version || root == nil {
		return nil, p.fail("want version 1 and a root")
	}
	if _, err := p.dec.Token(); err != io.EOF {
		return nil, p.fail("data after the document")
	}
	return &Listing{Root: root}, nil
}

// integer reads a JSON number that is an int64 >= 0.
func (p *listingParser) integer() (int64, error) {
	t, err := p.token()
	if err != nil {
		return 0, err
	}
	n, ok := t.(json.Number)
	if !ok {
		return 0, p.fail("want a number, got %v", t)
	}
	v, err := strconv.ParseInt(n.String(), 10, 64)
	if err != nil || v < 0 {
		return 0, p.fail("want an integer >= 0, got %s", n)
	}
	return v, nil
}

func (p *listingParser) str() (string, error) {
	t, err := p.token()
	if err != nil {
		return "", err
	}
	s, ok := t.(string)
	if !ok {
		return "", p.fail("want a string, got %v", t)
	}
	return s, nil
}

// skip reads one value of any shape (a key this parser does not know).
func (p *listingParser) skip() error {
	depth := 0
	for {
		t, err := p.token()
		if err != nil {
			return err
		}
		switch t {
		case json.Delim('{'), json.Delim('['):
			depth++
			if depth > defaultListingDepth {
				return p.fail("nested too deep")
			}
		case json.Delim('}'), json.Delim(']'):
			depth--
		}
		if depth == 0 {
			return nil
		}
	}
}

func (p *listingParser) node(depth int) (*Node, error) {
	maxDepth := p.o.MaxDepth
	if maxDepth <= 0 || maxDepth > defaultListingDepth {
		maxDepth = defaultListingDepth
	}
	if depth > maxDepth {
		return nil, p.fail("%v", &LimitError{Limit: LimitDepth, Max: int64(maxDepth), Got: int64(depth)})
	}
	p.entries++
	if p.o.MaxEntries > 0 && p.entries > p.o.MaxEntries {
		return nil, p.fail("%v", &LimitError{Limit: LimitEntries, Max: p.o.MaxEntries, Got: p.entries})
	}
	if err := p.delim('{'); err != nil {
		return nil, err
	}
	n := &Node{}
	var hasSize, hasTarget, hasEntries, hasExec, hasOffset bool
	seen := map[string]bool{}
	for {
		k, more, err := p.key()
		if err != nil {
			return nil, err
		}
		if !more {
			break
		}
		if seen[k] {
			return nil, p.fail("key %q twice", k)
		}
		seen[k] = true
		switch k {
		case "type":
			s, err := p.str()
			if err != nil {
				return nil, err
			}
			n.Type = NodeType(s)
		case "size":
			if n.Size, err = p.integer(); err != nil {
				return nil, err
			}
			if p.o.MaxSize > 0 && n.Size > p.o.MaxSize {
				return nil, p.fail("%v", &LimitError{Limit: LimitSize, Max: p.o.MaxSize, Got: n.Size})
			}
			hasSize = true
		case "executable":
			t, err := p.token()
			if err != nil {
				return nil, err
			}
			b, ok := t.(bool)
			if !ok {
				return nil, p.fail("executable is %v, not a boolean", t)
			}
			n.Executable, hasExec = b, true
		case "narOffset":
			if n.NarOffset, err = p.integer(); err != nil {
				return nil, err
			}
			hasOffset = true
		case "target":
			if n.Target, err = p.str(); err != nil {
				return nil, err
			}
			hasTarget = true
		case "entries":
			if n.Entries, err = p.dirEntries(depth); err != nil {
				return nil, err
			}
			hasEntries = true
		default:
			if err := p.skip(); err != nil {
				return nil, err
			}
		}
	}
	switch n.Type {
	case TypeRegular:
		if !hasSize || hasTarget || hasEntries {
			return nil, p.fail("a regular file needs a size and has no target or entries")
		}
	case TypeSymlink:
		maxTarget := p.o.MaxTargetLen
		if maxTarget <= 0 || maxTarget > MaxTargetLen {
			maxTarget = MaxTargetLen
		}
		switch {
		case !hasTarget || hasSize || hasEntries || hasExec || hasOffset:
			return nil, p.fail("a symlink needs a target and has nothing else")
		case n.Target == "" || bytes.IndexByte([]byte(n.Target), 0) >= 0:
			return nil, p.fail("symlink target %q", n.Target)
		case len(n.Target) > maxTarget:
			return nil, p.fail("%v", &LimitError{Limit: LimitTargetLen, Max: int64(maxTarget), Got: int64(len(n.Target))})
		}
	case TypeDirectory:
		if hasSize || hasTarget || hasExec || hasOffset {
			return nil, p.fail("a directory has entries only")
		}
	default:
		return nil, p.fail("node type %q", n.Type)
	}
	return n, nil
}

// dirEntries reads a directory's entries object: valid, distinct names,
// returned sorted bytewise (NAR order).
func (p *listingParser) dirEntries(depth int) ([]Entry, error) {
	if err := p.delim('{'); err != nil {
		return nil, err
	}
	maxName := p.o.MaxNameLen
	if maxName <= 0 || maxName > MaxNameLen {
		maxName = MaxNameLen
	}
	var out []Entry
	names := map[string]bool{}
	for {
		name, more, err := p.key()
		if err != nil {
			return nil, err
		}
		if !more {
			break
		}
		switch {
		case !validName([]byte(name)):
			return nil, p.fail("entry name %q", name)
		case len(name) > maxName:
			return nil, p.fail("%v", &LimitError{Limit: LimitNameLen, Max: int64(maxName), Got: int64(len(name))})
		case names[name]:
			return nil, p.fail("entry %q twice", name)
		}
		names[name] = true
		child, err := p.node(depth + 1)
		if err != nil {
			return nil, err
		}
		out = append(out, Entry{Name: name, Node: child})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}
