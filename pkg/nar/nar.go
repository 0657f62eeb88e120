package nar

import (
	"errors"
	"fmt"
)

// NodeType is the kind of a file system object in a NAR. The values are the
// words the format itself uses, so they can be compared with listing JSON.
type NodeType string

const (
	TypeRegular   NodeType = "regular"
	TypeDirectory NodeType = "directory"
	TypeSymlink   NodeType = "symlink"
)

// Header describes one node of a NAR, in the order the archive holds them.
type Header struct {
	// Path is "/" for the root and "/a/b" below it. Names are raw bytes:
	// a NAR may hold any name a Unix file system can. A Reader with
	// ReaderOptions.OmitPath leaves it empty.
	Path string
	// Name is the last element of Path ("" for the root) and Depth the
	// number of elements (0 for the root), filled by Reader: enough to
	// rebuild the tree without Path.
	Name  string
	Depth int
	Type  NodeType
	// Size is the length of a regular file's contents.
	Size int64
	// Executable mirrors the owner x bit; only regular files have it.
	Executable bool
	// LinkTarget is a symlink's target, byte for byte.
	LinkTarget string
	// Offset is where a regular file's contents start in the NAR, the
	// narOffset of .ls listings. Zero for other types.
	Offset int64
}

// ErrInvalid is wrapped by every error about a malformed NAR, so callers
// (the upload handler) can answer 400 rather than 500.
var ErrInvalid = errors.New("invalid NAR")

// Error says where a NAR went wrong: the byte offset of the offending token
// and the path of the node being read. errors.Is(err, ErrInvalid) holds, and
// Err (for example io.ErrUnexpectedEOF on truncation) is wrapped too.
type Error struct {
	Offset int64
	Path   string
	Reason string
	Err    error
}

func (e *Error) Error() string {
	s := fmt.Sprintf("invalid NAR at offset %d", e.Offset)
	if p := e.Path; p != "" {
		// A path may be as long as its depth allows (a NAR can nest
		// thousands of 255-byte names): the message keeps both ends.
		if len(p) > 512 {
			p = fmt.Sprintf("%s...(%d bytes)...%s", p[:200], len(p)-400, p[len(p)-200:])
		}
		s += fmt.Sprintf(" (in %q)", p)
	}
	s += ": " + e.Reason
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *Error) Unwrap() []error {
	if e.Err == nil {
		return []error{ErrInvalid}
	}
	return []error{ErrInvalid, e.Err}
}

// Limits on tokens the reader must buffer. File contents are streamed and
// may be as long as an int64 allows; names and symlink targets are held in
// memory, so a hostile length field must be refused before allocating. The
// values are the format bounds current Nix enforces (narMaxName,
// narMaxTarget in libutil/archive.cc), which match Linux's NAME_MAX and
// PATH_MAX-1, so no NAR of a real tree exceeds them.
const (
	MaxNameLen   = 255
	MaxTargetLen = 4095
)

// NAR keywords.
const (
	magic = "nix-archive-1"
)

// padLen is the number of zero bytes following a token of n bytes.
func padLen(n uint64) int { return int((8 - n%8) % 8) }

// validName reports whether name may appear as a directory entry: Nix
// refuses names that could escape the directory or be ambiguous.
func validName(name []byte) bool {
	if len(name) == 0 || string(name) == "." || string(name) == ".." {
		return false
	}
	for _, c := range name {
		if c == '/' || c == 0 {
			return false
		}
	}
	return true
}
