package server

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/bos55/concordia/internal/store"
)

// Search bounds. A query longer than maxQuery is refused unread; a page
// lists at most maxReferrers referrers. Referrers of the upload store are
// a scan of its index (it keeps no reverse index), so their lists are
// kept referrerTTL, at most maxReferrerLists of them, and scans run one at
// a time: a public search box cannot keep more than one core scanning.
const (
	maxQuery         = 1024
	maxReferrers     = 100
	referrerTTL      = 30 * time.Second
	maxReferrerLists = 256
)

type searchCache struct {
	scan sync.Mutex // one referrer scan at a time
	mu   sync.Mutex
	m    map[string]referrerList
}

type referrerList struct {
	at    time.Time
	paths []string
	more  bool
}

// searchData is the search page's.
type searchData struct {
	Q string
	// Refused says why Q is not a store path or hash.
	Refused string
	// Missing is the hash part no store has.
	Missing string
	Found   *searchResult
}

type searchResult struct {
	Info    *store.PathInfo
	Store   string
	Hash    string
	Narinfo string
	// Compression and FileSize are the served NAR file's.
	Compression string
	FileSize    int64
	References  []string
	Referrers   []string
	// ReferrersMore: only the first maxReferrers are listed.
	ReferrersMore bool
	ReferrersErr  string
	// Pinned, and since when: never the pin's note or owner, which are
	// the admin's (GET /api/pins).
	Pinned      bool
	PinnedSince time.Time
}

// searchHash takes the hash part out of what a reader pastes: a hash
// part, a store path (with a file inside it, or without the store
// directory), a narinfo name or URL. The error says what was expected.
func searchHash(q, storeDir string) (string, error) {
	q = strings.TrimSpace(q)
	if i := strings.Index(q, "://"); i >= 0 {
		rest := q[i+3:]
		j := strings.IndexByte(rest, '/')
		if j < 0 {
			return "", errors.New("a URL of this cache names a narinfo, e.g. https://cache.example.org/<hash>.narinfo")
		}
		q = rest[j:]
	}
	q = strings.TrimPrefix(q, storeDir+"/")
	q = strings.TrimLeft(q, "/")
	if i := strings.IndexByte(q, '/'); i >= 0 {
		q = q[:i]
	}
	q = strings.TrimSuffix(q, ".narinfo")
	switch {
	case len(q) < 32:
		return "", errors.New("a store path is " + storeDir + "/<hash>-<name>, and its hash part is 32 characters")
	case !validHashPart(q[:32]):
		return "", errors.New("a hash part is 32 characters of Nix's base-32 alphabet (0-9 and a-z without e, o, t, u)")
	case len(q) > 32 && q[32] != '-':
		return "", errors.New("a store path's hash part is followed by '-' and its name")
	}
	return q[:32], nil
}

func (s *Server) handleSearch(w http.ResponseWriter, r *http.Request) {
	raw := r.URL.Query().Get("q")
	d := searchData{Q: raw}
	if len(raw) > maxQuery {
		d.Q = raw[:64] + "…"
		d.Refused = "the query is longer than any store path"
		s.render(w, r, http.StatusBadRequest, "search", "Search: refused", "search", d)
		return
	}
	if strings.TrimSpace(raw) == "" {
		s.render(w, r, http.StatusOK, "search", "Search", "search", d)
		return
	}
	hash, err := searchHash(raw, s.storeDir)
	if err != nil {
		d.Refused = err.Error()
		s.render(w, r, http.StatusBadRequest, "search", "Search: not a store path", "search", d)
		return
	}
	res, err := s.searchPath(r.Context(), hash)
	switch {
	case errors.Is(err, store.ErrNotFound):
		d.Missing = hash
		s.render(w, r, http.StatusNotFound, "search", "Search: not in this cache", "search", d)
		return
	case err != nil:
		s.fail(w, r, err)
		return
	}
	d.Found = res
	s.render(w, r, http.StatusOK, "search", "Search: "+storeBase(res.Info.StorePath), "search", d)
}

// searchPath is what the search page shows of one path: the narinfo Nix
// would get (the same lookup and rendering, signatures included).
func (s *Server) searchPath(ctx context.Context, hash string) (*searchResult, error) {
	info, idx, err := s.lookup(ctx, hash)
	if err != nil {
		return nil, err
	}
	ni, err := s.buildNarinfo(ctx, s.stores[idx], hash, info)
	if err != nil {
		return nil, err
	}
	res := &searchResult{Info: info, Store: s.storeName(idx), Hash: hash, Narinfo: ni.String(),
		Compression: ni.Compression, FileSize: int64(ni.FileSize)}
	for _, ref := range info.References {
		if ref != info.StorePath {
			res.References = append(res.References, ref)
		}
	}
	list, err := s.referrers(ctx, info.StorePath)
	if err != nil {
		s.log.Warn("search: referrers", "path", info.StorePath, "err", err)
		res.ReferrersErr = "could not be listed (see the cache's log)"
	}
	res.Referrers, res.ReferrersMore = list.paths, list.more
	if p, ok := s.upload.(store.Pinner); ok {
		pins, err := p.Pins(ctx)
		if err != nil {
			return nil, err
		}
		for _, pin := range pins {
			if pin.StorePath == info.StorePath || pin.StorePath == hash {
				res.Pinned, res.PinnedSince = true, pin.Created
			}
		}
	}
	return res, nil
}

// referrers merges the stores' referrers of storePath (the upstreams'
// are not asked: a cache cannot list who refers to a path elsewhere).
func (s *Server) referrers(ctx context.Context, storePath string) (referrerList, error) {
	c := &s.search
	cached := func() (referrerList, bool) {
		c.mu.Lock()
		defer c.mu.Unlock()
		l, ok := c.m[storePath]
		return l, ok && time.Since(l.at) < referrerTTL
	}
	if l, ok := cached(); ok {
		return l, nil
	}
	c.scan.Lock()
	defer c.scan.Unlock()
	if l, ok := cached(); ok { // scanned while this one waited
		return l, nil
	}
	var l referrerList
	for i, st := range s.stores {
		rs, ok := st.(store.Referrers)
		if !ok || i == s.upstreamIdx {
			continue
		}
		paths, more, err := rs.Referrers(ctx, storePath, maxReferrers)
		if err != nil {
			return l, err
		}
		l.more = l.more || more
		for _, p := range paths {
			if !slices.Contains(l.paths, p) {
				l.paths = append(l.paths, p)
			}
		}
	}
	slices.Sort(l.paths)
	if len(l.paths) > maxReferrers {
		l.paths, l.more = l.paths[:maxReferrers], true
	}
	l.at = time.Now()
	c.mu.Lock()
	if c.m == nil || len(c.m) >= maxReferrerLists {
		c.m = map[string]referrerList{}
	}
	c.m[storePath] = l
	c.mu.Unlock()
	return l, nil
}
