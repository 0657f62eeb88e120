// Package migrate copies one upload store into another (the embedded disk
// store into a shared bucket and index, and back) without losing what a
// user relies on: every path with its NAR file and narinfo (signatures as
// they are), its listing and times, the build logs, realisations, pins
// and tombstones. It works only through upload.Store, so any backend is
// a source or a destination.
//
// Every NAR goes through the destination's normal intake (PutNAR, then
// PutNarInfo or Adopt), so the destination verifies each one as it would
// an upload: file hash against the name, NAR format, NarHash and NarSize
// against the narinfo, and references present. A copy is resumable: a
// path the destination has with the same NAR hash is skipped without
// reading its NAR, and one it has with another NAR is a conflict,
// reported and left alone, never overwritten.
package migrate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"strings"
	"time"

	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/upload"
	"github.com/bos55/concordia/pkg/narinfo"
)

// Options configure a Run. The zero value is usable.
type Options struct {
	// Progress is called after each path is handled.
	Progress func(Progress)
	// Logger receives a line per conflict and failure; nil discards.
	Logger *slog.Logger
	// DryRun decides what would be copied, skipped or in conflict, and
	// writes nothing.
	DryRun bool
}

// Progress is where a Run is.
type Progress struct {
	Done, Total int    // paths handled, of all the source's
	Path        string // the one just handled
	Action      Action
}

// Action is what a Run did with one path.
type Action string

// The Actions.
const (
	Copied   Action = "copied"
	Skipped  Action = "skipped"  // the destination had it, same NAR
	Conflict Action = "conflict" // the destination has it with another NAR
	Failed   Action = "failed"
)

// Report is what a Run did.
type Report struct {
	DryRun bool `json:"dryRun,omitempty"`
	// Paths are the source's; Copied and Skipped add up to it when the
	// run is complete.
	Paths   int `json:"paths"`
	Copied  int `json:"copied"`
	Skipped int `json:"skipped"`
	// Blobs and Bytes are the NAR files copied (a file several paths
	// share is copied once) and their bytes as stored.
	Blobs int   `json:"blobs"`
	Bytes int64 `json:"bytes"`
	// Documents copied (or found the same at the destination).
	Listings      int `json:"listings"`
	Logs          int `json:"logs"`
	Realisations  int `json:"realisations"`
	Pins          int `json:"pins"`
	Tombstones    int `json:"tombstones"`
	UpstreamMarks int `json:"upstreamMarks"`
	// Conflicts are what the destination holds otherwise; Failed what
	// could not be copied; Missing what the final comparison found the
	// destination lacks beyond those.
	Conflicts []Problem `json:"conflicts,omitempty"`
	Failed    []Problem `json:"failed,omitempty"`
	Missing   []string  `json:"missing,omitempty"`
	Duration  Duration  `json:"duration"`
}

// Duration renders as a Go duration string in JSON.
type Duration time.Duration

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	*d = Duration(v)
	return err
}

// Problem is one thing not copied, and why.
type Problem struct {
	What string `json:"what"` // a store path, or "log X", "pin X", "realisation X"
	Err  string `json:"error"`
}

// ErrIncomplete is Run's error when something was not copied or the
// final comparison found a difference; the Report says what.
var ErrIncomplete = errors.New("migration incomplete")

// Run copies everything of from into to (see the package doc) and
// compares both ends at the end. A cancelled ctx stops it between or
// during paths; what was copied stays, and running again completes it.
func Run(ctx context.Context, from, to *upload.Store, opts Options) (*Report, error) {
	if from == to {
		return nil, errors.New("migrate: source and destination are the same store")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	start := time.Now()
	c := &copier{from: from, to: to, opts: opts, rep: &Report{DryRun: opts.DryRun},
		bad: map[string]bool{}, blobs: map[string]bool{}}
	err := c.run(ctx)
	c.rep.Duration = Duration(time.Since(start))
	if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		return c.rep, fmt.Errorf("migration interrupted (run it again to finish): %w", err)
	}
	if err != nil {
		return c.rep, fmt.Errorf("migrate: %w", err)
	}
	if r := c.rep; len(r.Conflicts)+len(r.Failed)+len(r.Missing) > 0 {
		return r, fmt.Errorf("%w: %d conflicts, %d failed, %d missing at the destination",
			ErrIncomplete, len(r.Conflicts), len(r.Failed), len(r.Missing))
	}
	return c.rep, nil
}

// copier is one Run's state.
type copier struct {
	from, to *upload.Store
	opts     Options
	rep      *Report
	bad      map[string]bool   // hash parts not copied: their referrers cannot be
	upstream map[string]string // hash part -> upstream: paths the source knows only an upstream has
	blobs    map[string]bool   // NAR files at the destination already
}

// run copies in the order the destination needs: upstream marks (which
// keep uploads that refer to pulled paths through its closure checks),
// then paths with references first, then what belongs to paths.
func (c *copier) run(ctx context.Context) error {
	if err := c.copyMarks(ctx); err != nil {
		return err
	}
	if err := c.copyPaths(ctx); err != nil {
		return err
	}
	for _, step := range []func(context.Context) error{c.copyLogs, c.copyRealisations, c.copyPins, c.copyTombstones} {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := step(ctx); err != nil {
			return err
		}
	}
	if c.opts.DryRun {
		return nil
	}
	return c.compare(ctx)
}

func (c *copier) conflict(what string, err error) {
	c.opts.Logger.Warn("not copied: the destination has it otherwise", "what", what, "err", err)
	c.rep.Conflicts = append(c.rep.Conflicts, Problem{What: what, Err: err.Error()})
}

func (c *copier) fail(what string, err error) {
	c.opts.Logger.Warn("not copied", "what", what, "err", err)
	c.rep.Failed = append(c.rep.Failed, Problem{What: what, Err: err.Error()})
}

// problem files err under what as a conflict or a failure; a cancelled
// run is neither, and is returned to stop it.
func (c *copier) problem(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if errors.Is(err, store.ErrConflict) {
		c.conflict(what, err)
	} else {
		c.fail(what, err)
	}
	return nil
}

func (c *copier) copyMarks(ctx context.Context) error {
	marks, err := c.from.UpstreamPaths(ctx)
	if err != nil {
		return fmt.Errorf("read the source's upstream paths: %w", err)
	}
	c.rep.UpstreamMarks, c.upstream = len(marks), maps.Clone(marks)
	tombs, err := c.from.Tombstones(ctx)
	if err != nil {
		return fmt.Errorf("read the source's tombstones: %w", err)
	}
	for _, t := range tombs {
		if t.Upstream != "" { // a pulled path evicted since
			c.upstream[hashOf(t.StorePath)] = t.Upstream
		}
	}
	if c.opts.DryRun || len(marks) == 0 {
		return nil
	}
	if err := c.to.PutUpstreamPaths(ctx, marks); err != nil {
		return fmt.Errorf("write upstream paths: %w", err)
	}
	return nil
}

// countReader counts the bytes read through it.
type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// hashOf is the hash part of a store path or base name.
func hashOf(p string) string {
	base := p[strings.LastIndexByte(p, '/')+1:]
	if len(base) < narinfo.HashPartLen {
		return base
	}
	return base[:narinfo.HashPartLen]
}
