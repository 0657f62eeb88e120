// Package upstreamtest is a binary cache on loopback that misbehaves on
// demand, for the tests of the packages that talk to upstream caches
// (upstream, pullthrough, the upload store's checks). A test adds paths
// (made valid by NewPath from NAR bytes) and faults (per path or for all,
// on the narinfo or the NAR), and counts the requests that arrived, so it
// can assert "exactly one NAR request" as well as what a reader got.
package upstreamtest

import (
	"crypto/sha256"
	"net/http"
	"net/http/httptest"
	"path"
	"strings"
	"sync"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/bos55/concordia/pkg/narinfo"
)

// StoreDir is the store directory of the paths NewPath makes.
const StoreDir = "/nix/store"

// Path is one store path the server can serve: its signed narinfo and
// its NAR, raw and as the file served.
type Path struct {
	NarInfo *narinfo.NarInfo
	// NAR is the uncompressed NAR; File the bytes served at NarInfo.URL
	// (NAR compressed as NarInfo.Compression says).
	NAR, File []byte
	// Key signed NarInfo; faults re-sign with it (WrongPath) or with
	// another key of its name (WrongSignature).
	Key narinfo.SecretKey
}

// Key makes a signing key named name (say "cache.nixos.org-1") and its
// public half, failing the test on error.
func Key(tb testing.TB, name string) (narinfo.SecretKey, narinfo.PublicKey) {
	tb.Helper()
	sk, pk, err := narinfo.GenerateKey(name)
	if err != nil {
		tb.Fatal(err)
	}
	return sk, pk
}

// NewPath makes a valid path named name (under StoreDir) whose NAR is
// nar: NarHash and NarSize computed, the file compressed with
// compression ("none" or "zstd") at nar/<file hash>.nar[.zst], FileHash
// and FileSize set, refs (base names) as References, signed by key. The
// hash part is derived from name and nar, so equal inputs give equal
// paths. Change NarInfo.URL before Add to serve the file elsewhere (the
// signature does not cover it).
func NewPath(tb testing.TB, key narinfo.SecretKey, name string, nar []byte, compression string, refs ...string) *Path {
	tb.Helper()
	file, suffix := nar, ".nar"
	switch compression {
	case "none":
	case "zstd":
		file, suffix = zstdEncode(tb, nar), ".nar.zst"
	default:
		tb.Fatalf("upstreamtest: compression %q: want none or zstd", compression)
	}
	id := sha256.Sum256(append([]byte(name+"\x00"), nar...))
	narHash, fileHash := sha256.Sum256(nar), sha256.Sum256(file)
	fh := narinfo.SHA256(fileHash[:])
	ni := &narinfo.NarInfo{
		StorePath:   StoreDir + "/" + nixbase32.EncodeToString(id[:20]) + "-" + name,
		URL:         "nar/" + nixbase32.EncodeToString(fileHash[:]) + suffix,
		Compression: compression,
		FileHash:    &fh,
		FileSize:    uint64(len(file)),
		NarHash:     narinfo.SHA256(narHash[:]),
		NarSize:     uint64(len(nar)),
		References:  refs,
	}
	ni.Sign(key)
	if err := ni.Validate(); err != nil {
		tb.Fatalf("upstreamtest: path %s: %v", name, err)
	}
	return &Path{NarInfo: ni, NAR: nar, File: file, Key: key}
}

func zstdEncode(tb testing.TB, b []byte) []byte {
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		tb.Fatal(err)
	}
	defer enc.Close()
	return enc.EncodeAll(b, nil)
}

// HashPart is the path's hash part, the name of its narinfo.
func (p *Path) HashPart() string { return p.NarInfo.HashPart() }

// StorePath is the path's full store path.
func (p *Path) StorePath() string { return p.NarInfo.StorePath }

// Doc names the document of a path a fault applies to.
type Doc int

const (
	NarInfo Doc = iota // <hash>.narinfo
	NAR                // the file at the narinfo's URL
)

// Server is the misbehaving cache. Its methods are safe for concurrent
// use; the test's cleanup closes it.
type Server struct {
	// URL is the base URL, http://127.0.0.1:<port>; any path prefix
	// added to it is served the same (files are found by base name).
	URL string

	srv    *httptest.Server
	mu     sync.Mutex
	paths  map[string]*Path // by hash part
	files  map[string]*Path // by the base name of the narinfo's URL
	faults map[faultKey]Fault
	counts map[string]int // by URL path
	byHash map[faultKey]int
	header http.Header // of the last request
	hold   chan struct{}
	done   chan struct{}
	close  sync.Once
}

type faultKey struct {
	hashPart string // "" for every path
	doc      Doc
}

// New starts a server on loopback, closed when the test ends.
func New(tb testing.TB) *Server {
	s := &Server{
		paths: map[string]*Path{}, files: map[string]*Path{}, faults: map[faultKey]Fault{},
		counts: map[string]int{}, byHash: map[faultKey]int{}, done: make(chan struct{}),
	}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	s.URL = s.srv.URL
	tb.Cleanup(s.Close)
	return s
}

// Close makes every held or hanging request return, then stops the
// server. It may be called more than once.
func (s *Server) Close() {
	s.close.Do(func() {
		close(s.done)
		s.srv.Close()
	})
}

// Add serves p (its narinfo and its file).
func (s *Server) Add(ps ...*Path) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range ps {
		s.paths[p.HashPart()] = p
		s.files[path.Base(p.NarInfo.URL)] = p
	}
}

// SetFault makes doc of the path with hashPart (of every path when
// hashPart is "") answer with f; OK removes the fault. A path's own
// fault wins over the one for every path.
func (s *Server) SetFault(hashPart string, doc Doc, f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults[faultKey{hashPart, doc}] = f
}

// Hold makes every request from now on wait (counted, before any answer)
// until release is called or the server closes: for tests of requests
// in flight at once.
func (s *Server) Hold() (release func()) {
	ch := make(chan struct{})
	s.mu.Lock()
	s.hold = ch
	s.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			if s.hold == ch {
				s.hold = nil
			}
			s.mu.Unlock()
			close(ch)
		})
	}
}

// Count is how many requests arrived for urlPath (e.g. "/<hash>.narinfo").
func (s *Server) Count(urlPath string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counts[urlPath]
}

// NarInfoRequests is how many requests arrived for hashPart's narinfo.
func (s *Server) NarInfoRequests(hashPart string) int { return s.countDoc(hashPart, NarInfo) }

// NARRequests is how many requests arrived for the NAR file of the path
// with hashPart.
func (s *Server) NARRequests(hashPart string) int { return s.countDoc(hashPart, NAR) }

func (s *Server) countDoc(hashPart string, doc Doc) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.byHash[faultKey{hashPart, doc}]
}

// Requests is how many requests arrived in all.
func (s *Server) Requests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.counts {
		n += c
	}
	return n
}

// Header is a copy of the last request's header (nil before any).
func (s *Server) Header() http.Header {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.header.Clone()
}

// route counts r and finds what it asks for: the path, which document,
// the fault in force and the hold to wait on.
func (s *Server) route(r *http.Request) (p *Path, doc Doc, f Fault, hold chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.counts[r.URL.Path]++
	s.header = r.Header.Clone()
	base := path.Base(r.URL.Path)
	if h, ok := strings.CutSuffix(base, ".narinfo"); ok {
		p, doc = s.paths[h], NarInfo
		s.byHash[faultKey{h, NarInfo}]++
	} else {
		p, doc = s.files[base], NAR
		if p != nil {
			s.byHash[faultKey{p.HashPart(), NAR}]++
		}
	}
	if p != nil {
		f = s.faults[faultKey{"", doc}]
		if pf, ok := s.faults[faultKey{p.HashPart(), doc}]; ok {
			f = pf
		}
	}
	return p, doc, f, s.hold
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	p, doc, f, hold := s.route(r)
	if hold != nil {
		select {
		case <-hold:
		case <-s.done:
		case <-r.Context().Done():
		}
	}
	if p == nil {
		http.NotFound(w, r)
		return
	}
	body, ctype := p.File, "application/x-nix-nar"
	if doc == NarInfo {
		body, ctype = []byte(narinfoFor(p, f)), narinfo.ContentType
	} else if f == WrongNarHash {
		body = alteredFile(p)
	}
	s.answer(w, r, f, ctype, body)
}
