// Package pullthrough is the store of paths an upstream binary cache has
// (cache.nixos.org, a private cache): the server asks it last, after the
// machine's /nix/store and the uploads, so one substituter serves a host
// its whole system, uploaded paths and upstream ones alike.
//
// A narinfo is the upstream's, believed only when one of that upstream's
// keys signed it (package upstream checks), and served with the
// upstream's signature passed through beside the cache's own. Asking for
// a narinfo never downloads anything. The first NAR request starts one
// download (a flight) however many clients ask at once: the upstream's
// file is written to a temporary file that every reader tails as it
// grows, and fed through the upload store's intake (PutNAR: the same
// hashing and validation as an upload), whose NarHash and NarSize must be
// the upstream narinfo's. Only then is the path adopted into the upload
// store (store.Adopter), from where every later client gets it at LAN
// speed, also while the upstream is unreachable; and only then does a
// reader get the last byte of its response. A NAR that fails any check
// is stored nowhere, and every reader of it sees its transfer fail.
package pullthrough

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bos55/concordia/internal/compress"
	"github.com/bos55/concordia/internal/limits"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/upstream"
	"github.com/bos55/concordia/pkg/narinfo"
)

// Options configure a Store.
type Options struct {
	// Upstreams are asked in order; only those with PullThrough serve
	// readers (Store), all of them count for writers (Checker).
	Upstreams *upstream.Set
	// Into keeps the pulled paths (the upload store).
	Into store.Adopter
	// TempDir holds the files of downloads in progress (default
	// os.TempDir()); put it on the disk of the upload store.
	TempDir string
	// Limits bound the decoding of a pulled NAR for a client that asks
	// for it uncompressed (limits.Default() when zero).
	Limits limits.Limits
	// Logger receives a line per failed pull; nil discards them.
	Logger *slog.Logger
	// Registry receives the concordia_pull_through_* metrics; nil
	// registers none.
	Registry prometheus.Registerer
}

// Store serves the paths of the pull-through upstreams. It is a
// store.Store, store.FileNAR and store.FileNARStat.
type Store struct {
	set     *upstream.Set
	into    store.Adopter
	tmp     string
	limits  limits.Limits
	log     *slog.Logger
	metrics *metrics

	ctx    context.Context // the flights', cancelled by Close
	cancel context.CancelFunc
	mu     sync.Mutex
	flying map[string]*flight // by hash part
	wg     sync.WaitGroup
}

var (
	_ store.Store       = (*Store)(nil)
	_ store.FileNAR     = (*Store)(nil)
	_ store.FileNARStat = (*Store)(nil)
)

// New builds the Store.
func New(opts Options) (*Store, error) {
	if opts.Upstreams == nil {
		return nil, errors.New("pullthrough: no upstreams")
	}
	if opts.Into == nil {
		return nil, errors.New("pullthrough: pulled paths need an upload store to be kept in")
	}
	if opts.TempDir == "" {
		opts.TempDir = os.TempDir()
	}
	if err := os.MkdirAll(opts.TempDir, 0o700); err != nil {
		return nil, fmt.Errorf("pullthrough: %w", err)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(opts.Registry, opts.Upstreams)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Store{
		set: opts.Upstreams, into: opts.Into, tmp: opts.TempDir,
		limits: opts.Limits.OrDefault(), log: opts.Logger, metrics: m,
		ctx: ctx, cancel: cancel, flying: map[string]*flight{},
	}, nil
}

// Close stops the downloads in progress (their readers fail) and waits
// for them.
func (p *Store) Close() error {
	p.cancel()
	p.wg.Wait()
	return nil
}

// StoreDir is the upload store's: answers name paths below it.
func (p *Store) StoreDir() string { return p.into.StoreDir() }

// PathInfo asks the pull-through upstreams. Anything but a checked answer
// is a miss: an unreachable upstream must cost a reader a 404, never a
// 5xx that makes Nix stop using the cache.
func (p *Store) PathInfo(ctx context.Context, hashPart string) (*store.PathInfo, error) {
	a, err := p.set.Lookup(ctx, hashPart, true)
	if err != nil {
		return nil, fmt.Errorf("upstreams: %s: %w", hashPart, store.ErrNotFound)
	}
	return pathInfo(a, p.into.StoreDir()), nil
}

// pathInfo is the store's view of an upstream answer.
func pathInfo(a *upstream.Answer, dir string) *store.PathInfo {
	ni := a.NarInfo
	info := &store.PathInfo{
		StorePath: ni.StorePath,
		NarHash:   ni.NarHash.Digest,
		NarSize:   ni.NarSize,
		Sigs:      append([]string(nil), ni.Sigs...),
		CA:        ni.CA,
		Origin:    a.Upstream.Name,
	}
	if ni.Deriver != "" {
		info.Deriver = dir + "/" + ni.Deriver
	}
	info.References = make([]string, len(ni.References))
	for i, r := range ni.References {
		info.References[i] = dir + "/" + r
	}
	return info
}

// answer is the upstream answer info came from, asked again (the
// upstream set keeps answers in memory, so this costs no request).
func (p *Store) answer(ctx context.Context, info *store.PathInfo) (*upstream.Answer, error) {
	hashPart := narinfo.HashPartOf(info.StorePath)
	a, err := p.set.Lookup(ctx, hashPart, true)
	if err != nil {
		return nil, fmt.Errorf("upstreams: %s: %w", hashPart, store.ErrNotFound)
	}
	if a.NarInfo.StorePath != info.StorePath || string(a.NarInfo.NarHash.Digest) != string(info.NarHash) {
		return nil, fmt.Errorf("upstream %s now answers another NAR for %s: %w", a.Upstream.Name, info.StorePath, store.ErrNotFound)
	}
	return a, nil
}

// fileOf is what the upstream says of its NAR file: its compression,
// hash and size. A file whose hash or size the narinfo leaves out (other
// than an uncompressed NAR, which is its own file) cannot be named in the
// upload store before it is whole, nor given a Content-Length: ok false.
func fileOf(ni *narinfo.NarInfo) (compression string, fileHash []byte, fileSize int64, ok bool) {
	comp := ni.Compression
	if comp == "" {
		comp = "bzip2" // Nix's reading of a narinfo without one
	}
	if _, known := narinfo.NARSuffix(comp); !known {
		return comp, nil, 0, false
	}
	if comp == "none" {
		return comp, ni.NarHash.Digest, int64(ni.NarSize), true
	}
	if ni.FileHash == nil || ni.FileHash.Algo != "sha256" || ni.FileSize == 0 {
		return comp, nil, 0, false
	}
	return comp, ni.FileHash.Digest, int64(ni.FileSize), true
}

// StatFileNAR describes the upstream's file without downloading it (the
// server renders narinfos with it). ErrNotFound when the upstream's
// narinfo does not say enough of it: the server then announces its own
// compression and the NAR is decoded for each reader (NAR).
func (p *Store) StatFileNAR(ctx context.Context, info *store.PathInfo) (string, []byte, int64, error) {
	if kept, err := p.kept(ctx, info); kept != nil || err != nil {
		if st, ok := p.into.(store.FileNARStat); ok && err == nil {
			return st.StatFileNAR(ctx, kept)
		}
		f, comp, fh, size, err := p.openKept(ctx, kept, err)
		if err != nil {
			return "", nil, 0, err
		}
		f.Close()
		return comp, fh, size, nil
	}
	a, err := p.answer(ctx, info)
	if err != nil {
		return "", nil, 0, err
	}
	comp, fh, size, ok := fileOf(a.NarInfo)
	if !ok {
		return "", nil, 0, fmt.Errorf("upstream %s does not describe the NAR file of %s: %w", a.Upstream.Name, info.StorePath, store.ErrNotFound)
	}
	return comp, fh, size, nil
}

// kept is the upload store's record of info's path when it has adopted
// it already (a flight finished between the server's lookup and now).
func (p *Store) kept(ctx context.Context, info *store.PathInfo) (*store.PathInfo, error) {
	k, err := p.into.PathInfo(ctx, narinfo.HashPartOf(info.StorePath))
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if k.StorePath != info.StorePath || string(k.NarHash) != string(info.NarHash) {
		return nil, nil
	}
	return k, nil
}

func (p *Store) openKept(ctx context.Context, kept *store.PathInfo, err error) (store.ReadSeekCloser, string, []byte, int64, error) {
	if err != nil {
		return nil, "", nil, 0, err
	}
	fn, ok := p.into.(store.FileNAR)
	if !ok {
		return nil, "", nil, 0, fmt.Errorf("the upload store keeps no NAR files: %w", store.ErrNotFound)
	}
	return fn.OpenFileNAR(ctx, kept)
}

// OpenFileNAR opens the upstream's file of info's path as it arrives: the
// flight's, started if none is under way. Reads block until the bytes are
// there; the last one comes only once the whole NAR was verified and
// kept, and a failed pull fails the read.
func (p *Store) OpenFileNAR(ctx context.Context, info *store.PathInfo) (store.ReadSeekCloser, string, []byte, int64, error) {
	if kept, err := p.kept(ctx, info); kept != nil || err != nil {
		return p.openKept(ctx, kept, err)
	}
	a, err := p.answer(ctx, info)
	if err != nil {
		return nil, "", nil, 0, err
	}
	comp, fh, size, ok := fileOf(a.NarInfo)
	if !ok {
		return nil, "", nil, 0, fmt.Errorf("upstream %s does not describe the NAR file of %s: %w", a.Upstream.Name, info.StorePath, store.ErrNotFound)
	}
	r, err := p.open(ctx, a, true)
	if err != nil {
		return nil, "", nil, 0, err
	}
	return r, comp, fh, size, nil
}

// NAR streams the uncompressed NAR of info's path: the kept copy, or the
// flight's file decoded as it arrives.
func (p *Store) NAR(ctx context.Context, info *store.PathInfo, w io.Writer) error {
	if kept, err := p.kept(ctx, info); err != nil {
		return err
	} else if kept != nil {
		return p.into.NAR(ctx, kept, w)
	}
	a, err := p.answer(ctx, info)
	if err != nil {
		return err
	}
	r, err := p.open(ctx, a, true)
	if err != nil {
		return err
	}
	defer r.Close()
	comp := a.NarInfo.Compression
	if comp == "" {
		comp = "bzip2"
	}
	dec, err := compress.NewReaderLimits(r, comp, p.limits.Decode(int64(a.NarInfo.NarSize)))
	if err != nil {
		return fmt.Errorf("pull %s from %s: %w", info.StorePath, a.Upstream.Name, err)
	}
	defer dec.Close()
	n, err := io.Copy(w, dec)
	if err == nil && uint64(n) != info.NarSize {
		err = fmt.Errorf("pull %s from %s: the NAR has %d bytes, not %d", info.StorePath, a.Upstream.Name, n, info.NarSize)
	}
	if err == nil {
		err = r.wait() // the verdict: the last bytes may decode before it
	}
	return err
}

// Checker is the view of every upstream (pull-through or not) that the
// upload store judges uploads against: a reference an upstream has is
// present, and an upload of a path an upstream has must be its NAR. Its
// PathInfo tells "cannot ask" (store.ErrUnavailable) from "absent", so an
// upload is refused rather than let through unchecked while an upstream
// is down. It needs no Store: an upload store whose upstreams serve no
// readers judges against them all the same.
func Checker(set *upstream.Set, storeDir string) store.Store { return checker{set, storeDir} }

type checker struct {
	set *upstream.Set
	dir string
}

func (c checker) StoreDir() string { return c.dir }

func (c checker) PathInfo(ctx context.Context, hashPart string) (*store.PathInfo, error) {
	a, err := c.set.Lookup(ctx, hashPart, false)
	if err != nil {
		return nil, err
	}
	return pathInfo(a, c.dir), nil
}

func (c checker) NAR(context.Context, *store.PathInfo, io.Writer) error {
	return fmt.Errorf("the upstream checker serves no NARs: %w", store.ErrNotFound)
}
