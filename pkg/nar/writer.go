package nar

import (
	"errors"
	"fmt"
	"io"
	"strings"
)

// ErrWriteOrder is wrapped by Writer errors about headers that do not form a
// canonical NAR (wrong order, unknown parent, bad name, short contents).
var ErrWriteOrder = errors.New("nar: headers out of NAR order")

// Writer produces a NAR from headers and contents, like archive/tar's
// Writer: WriteHeader for every node in NAR order (the root "/" first, a
// directory before its entries, entries sorted bytewise), Write for the
// contents of regular files, Close to finish. Header fields other than Path,
// Type, Size, Executable and LinkTarget are ignored. It buffers, and w sees
// the NAR only as far as the last flush until Close returns.
type Writer struct {
	s       sink
	stack   []frame // open directories
	fileRem int64   // contents still owed for the open regular file
	pad     int
	inFile  bool
	started bool
	done    bool // root complete
	closed  bool
}

// frame is a directory a Writer has open: its path and the last entry
// name written in it, to enforce strictly increasing names.
type frame struct {
	path    string
	prev    string
	hasPrev bool
}

// NewWriter returns a Writer of a NAR to w.
func NewWriter(w io.Writer) *Writer {
	nw := &Writer{}
	nw.s.reset(w, 64<<10)
	return nw
}

// WriteHeader starts the node h, ending the previous one. Directories stay
// open until a header outside them arrives or Close is called.
func (w *Writer) WriteHeader(h *Header) error {
	if w.closed {
		return fmt.Errorf("nar: write header after close: %w", ErrWriteOrder)
	}
	if err := w.endFile(); err != nil {
		return err
	}
	if w.done {
		return fmt.Errorf("nar: header %q after the root node: %w", h.Path, ErrWriteOrder)
	}
	if !w.started {
		if h.Path != "/" {
			return fmt.Errorf("nar: first header is %q, not the root \"/\": %w", h.Path, ErrWriteOrder)
		}
		w.started = true
		w.s.raw(tokMagic)
	} else {
		i := strings.LastIndexByte(h.Path, '/')
		if i < 0 {
			return fmt.Errorf("nar: header path %q is not absolute: %w", h.Path, ErrWriteOrder)
		}
		parent, name := h.Path[:i], h.Path[i+1:]
		if parent == "" {
			parent = "/"
		}
		if !validName([]byte(name)) || len(name) > MaxNameLen {
			return fmt.Errorf("nar: header path %q has an invalid name: %w", h.Path, ErrWriteOrder)
		}
		for len(w.stack) > 0 && w.stack[len(w.stack)-1].path != parent {
			w.closeDir()
		}
		if len(w.stack) == 0 {
			w.done = true
			return fmt.Errorf("nar: header %q: parent directory not open: %w", h.Path, ErrWriteOrder)
		}
		top := &w.stack[len(w.stack)-1]
		if top.hasPrev && name <= top.prev {
			return fmt.Errorf("nar: header %q after %q: entries must be sorted and unique: %w", h.Path, top.prev, ErrWriteOrder)
		}
		top.prev, top.hasPrev = name, true
		w.s.raw(tokEntryName)
		w.s.str([]byte(name))
		w.s.raw(tokNode)
	}
	switch h.Type {
	case TypeRegular:
		if h.Size < 0 {
			return fmt.Errorf("nar: header %q: negative size: %w", h.Path, ErrWriteOrder)
		}
		w.s.raw(tokRegular)
		if h.Executable {
			w.s.raw(tokExecutable)
		}
		w.s.raw(tokContents)
		w.s.u64(uint64(h.Size))
		w.inFile, w.fileRem, w.pad = true, h.Size, padLen(uint64(h.Size))
	case TypeSymlink:
		if h.LinkTarget == "" || strings.IndexByte(h.LinkTarget, 0) >= 0 || len(h.LinkTarget) > MaxTargetLen {
			return fmt.Errorf("nar: header %q: invalid symlink target %q: %w", h.Path, h.LinkTarget, ErrWriteOrder)
		}
		w.s.raw(tokSymlinkTarg)
		w.s.str([]byte(h.LinkTarget))
		w.s.raw(tokClose)
		w.endNode()
	case TypeDirectory:
		w.s.raw(tokDirectory)
		w.stack = append(w.stack, frame{path: h.Path})
	default:
		return fmt.Errorf("nar: header %q: unknown type %q: %w", h.Path, h.Type, ErrWriteOrder)
	}
	return w.s.err
}

// Write writes contents of the current regular file; writing more than its
// Size is an error.
func (w *Writer) Write(p []byte) (int, error) {
	if !w.inFile {
		return 0, fmt.Errorf("nar: write outside a regular file: %w", ErrWriteOrder)
	}
	if int64(len(p)) > w.fileRem {
		return 0, fmt.Errorf("nar: write of %d bytes exceeds the %d left of the file: %w", len(p), w.fileRem, ErrWriteOrder)
	}
	if w.s.err != nil {
		return 0, w.s.err
	}
	before := w.s.total + int64(w.s.n)
	w.s.raw(p)
	n := int(w.s.total + int64(w.s.n) - before)
	w.fileRem -= int64(n)
	return n, w.s.err
}

// Close ends the open nodes and flushes the NAR. It does not close the
// underlying writer.
func (w *Writer) Close() error {
	if w.closed {
		return nil
	}
	w.closed = true
	if err := w.endFile(); err != nil {
		return err
	}
	if !w.started {
		return fmt.Errorf("nar: close before the root header: %w", ErrWriteOrder)
	}
	for len(w.stack) > 0 {
		w.closeDir()
	}
	w.s.flush()
	return w.s.err
}

// Size is the number of NAR bytes written so far, buffered ones included.
func (w *Writer) Size() int64 { return w.s.total + int64(w.s.n) }

func (w *Writer) endFile() error {
	if !w.inFile {
		return nil
	}
	if w.fileRem != 0 {
		return fmt.Errorf("nar: file ended %d bytes short: %w", w.fileRem, ErrWriteOrder)
	}
	w.inFile = false
	w.s.raw(zeros[:w.pad])
	w.s.raw(tokClose)
	w.endNode()
	return w.s.err
}

func (w *Writer) closeDir() {
	w.stack = w.stack[:len(w.stack)-1]
	w.s.raw(tokClose)
	w.endNode()
}

// endNode closes the entry a finished node sat in, or marks the root done.
func (w *Writer) endNode() {
	if len(w.stack) > 0 {
		w.s.raw(tokClose)
	} else {
		w.done = true
	}
}
