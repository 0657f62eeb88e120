// Package store defines what the cache server needs from a place that holds
// store paths: the machine's own /nix/store (package local) and the store of
// uploaded paths (package upload). The server talks only to these
// interfaces, so every backend is served the same way and passes the same
// compliance suite (storetest).
//
// The core interface is deliberately small; extra powers (ready-made
// compressed NARs, build logs, realisations, uploads, pins, GC) are optional
// capabilities discovered with a type assertion, as net/http does with
// http.Flusher.
package store

import (
	"context"
	"errors"
	"io"
	"time"
)

// ErrNotFound means the store does not have the thing asked for. The server
// answers it with 404; any other error is a 5xx, never a 404, so a broken
// disk is not mistaken for a missing path by clients.
var ErrNotFound = errors.New("not found")

// ErrInvalid means the client sent something malformed or inconsistent (a
// NAR whose hash does not match, a narinfo naming a missing reference): the
// server answers 400 with the error text, and nothing is stored.
var ErrInvalid = errors.New("invalid")

// ErrNoSpace means the disk is full: 507, and nothing partial is kept.
var ErrNoSpace = errors.New("insufficient storage")

// ErrUnavailable means a store that asks another service (an upstream
// binary cache) could not get an answer from it: not a miss, since the
// path may well be there. The read path turns it into a miss (a 5xx would
// make Nix disable the substituter); an upload that must be checked
// against the upstream is refused with 503 and retried by the client.
var ErrUnavailable = errors.New("unavailable")

// ErrConflict means an upload would change something the cache already
// serves: a store path with another NAR (or other references), or a
// listing, build log or realisation with other contents. Store paths are
// immutable, and hosts trust whatever the cache signs, so a write token
// must never be able to swap one: the server answers 409 with the error
// text (naming both versions), and nothing is changed.
var ErrConflict = errors.New("conflict")

// PathInfo is what a store knows about one valid store path. It mirrors a
// row of Nix's ValidPaths table, in the types the narinfo renderer wants.
type PathInfo struct {
	// StorePath is the full path, e.g. /nix/store/<hash>-<name>.
	StorePath string
	// NarHash is the raw SHA-256 digest (32 bytes) of the path's NAR.
	NarHash []byte
	// NarSize is the length in bytes of the uncompressed NAR.
	NarSize uint64
	// References are full store paths, sorted, self-reference included.
	References []string
	// Deriver is the full .drv path, or "" when unknown.
	Deriver string
	// Sigs are the signatures the store already holds ("name:base64").
	Sigs []string
	// CA is the content-address assertion ("fixed:r:sha256:..."), or "".
	CA string
	// Registered is when the path became valid in this store.
	Registered time.Time
	// Origin names the upstream cache the path was pulled from ("" for
	// a path of this machine or an upload): such a path is a cache of
	// the upstream's, evicted first by GC.
	Origin string
}

// Store is a read-only source of store paths.
type Store interface {
	// StoreDir is the logical store directory paths are named under
	// (normally /nix/store), which need not be where the bytes live.
	StoreDir() string
	// PathInfo looks a path up by its 32-character nix32 hash part.
	// It returns ErrNotFound when the store has no such path.
	PathInfo(ctx context.Context, hashPart string) (*PathInfo, error)
	// NAR streams the uncompressed NAR of the path described by info.
	// It returns ErrNotFound when the path vanished (garbage collected)
	// before streaming began; an error after bytes were written must be
	// reported to the caller so it can abort the response, never end it
	// cleanly with a short body.
	NAR(ctx context.Context, info *PathInfo, w io.Writer) error
}

// Logger is the optional capability of serving build logs.
type Logger interface {
	// BuildLog opens the log of a derivation, given by its basename
	// ("<hash>-<name>.drv"). compressed reports whether the stream is
	// bzip2 ("bz2") or plain (""). ErrNotFound when there is none.
	BuildLog(ctx context.Context, drvBase string) (r io.ReadCloser, compression string, err error)
}

// LogFiles is the optional capability of a Logger that keeps build logs
// compressed in files: the server sends such a file as it is to a client
// whose Accept-Encoding names its compression, and streams the log
// decoded (Logger.BuildLog) to the others.
type LogFiles interface {
	// OpenLogFile opens the stored file of a derivation's log: the bytes,
	// their compression as a Content-Encoding ("zstd") and the file's
	// size. ErrNotFound when there is none.
	OpenLogFile(ctx context.Context, drvBase string) (f ReadSeekCloser, encoding string, size int64, err error)
}

// Realisations is the optional capability of answering content-addressed
// derivation realisations (realisations/<drvhash>!<output>.doi).
type Realisations interface {
	// Realisation returns the JSON document for id ("sha256:<hash>!out"),
	// or ErrNotFound.
	Realisation(ctx context.Context, id string) ([]byte, error)
}

// FileNAR is the optional capability of a store that keeps NARs as
// ready-made (possibly compressed) files, like the upload store. The server
// then serves those bytes as they are instead of re-encoding.
type FileNAR interface {
	// OpenFileNAR opens the stored file of the path's NAR. compression is
	// the narinfo Compression value of the bytes ("none", "zstd", "xz",
	// ...); fileHash is the raw SHA-256 of the file bytes.
	OpenFileNAR(ctx context.Context, info *PathInfo) (f ReadSeekCloser, compression string, fileHash []byte, fileSize int64, err error)
}

// RangeNAR is the optional capability of streaming a NAR from an offset
// without producing the bytes before it, so a client resuming a download
// (Range: bytes=N-) costs about what it receives, not the whole NAR again.
type RangeNAR interface {
	// NARFrom writes the NAR of info's path from byte offset to its end:
	// what NAR writes after its first offset bytes. Its errors are NAR's;
	// it returns errors.ErrUnsupported, having written nothing, when it
	// cannot start at an offset cheaply for this path (the caller then
	// uses NAR).
	NARFrom(ctx context.Context, info *PathInfo, offset int64, w io.Writer) error
}

// ReadSeekCloser is what http.ServeContent needs plus Close.
type ReadSeekCloser interface {
	io.ReadSeeker
	io.Closer
}
