package server

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/bos55/concordia/internal/store"
)

// statsTTL is how long the landing page's statistics are reused: counting
// the upload store is a scan of its index, which a page anyone may load
// must not start per request.
const statsTTL = 10 * time.Second

// siteStats is one snapshot of what the landing page shows. The ratios
// come from the server's own metrics (the counters the dashboard reads),
// so the page and Grafana never disagree on a definition.
type siteStats struct {
	At     time.Time
	Stores []storeStats
	// UploadsToday counts the upload store's paths registered since
	// midnight UTC; -1 without an upload store.
	UploadsToday int
	// Narinfo hits are 200s of narinfo requests out of 200s and 404s
	// (other codes are refusals and failures, not answers).
	NarinfoHits, NarinfoAnswers float64
	// MemHits are narinfos answered from the in-memory cache of signed
	// documents, of MemLookups.
	MemHits, MemLookups float64
	// NarCache are NARs found here (this machine, uploads, paths pulled
	// before), of NarRequests (also those pulled through now).
	NarCache, NarRequests float64
	// Zstd is the compression cache: nil when it is off.
	Zstd      *zstdStats
	Upstreams []upstreamStats
}

type storeStats struct {
	Name string
	Size store.StoreSize
	// Err is why the store could not be counted ("" when it was).
	Err string
}

type zstdStats struct {
	Entries, Bytes, Hits, Misses, Evictions float64
}

type upstreamStats struct {
	UpstreamInfo
	// Up is "up", "backing off" (failing, skipped for now) or "" when
	// the metric is absent (never asked yet).
	Up string
}

// statsCache holds the last snapshot; one request computes a stale one
// while the others wait for it.
type statsCache struct {
	mu   sync.Mutex
	last *siteStats
}

func (c *statsCache) get(ctx context.Context, compute func(context.Context) *siteStats) *siteStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.last == nil || time.Since(c.last.At) > statsTTL {
		c.last = compute(ctx)
	}
	return c.last
}

// storeName is how the pages name the store at index i.
func (s *Server) storeName(i int) string {
	switch i {
	case s.uploadIdx:
		return "uploads"
	case s.upstreamIdx:
		return "pulled through from upstreams"
	}
	return "Nix store " + s.storeDir
}

// siteStats counts the stores and reads the metrics.
func (s *Server) siteStats(ctx context.Context) *siteStats {
	now := time.Now().UTC()
	st := &siteStats{At: now, UploadsToday: -1}
	midnight := time.Date(now.Year(), now.Month(), now.Day(), 0, 0, 0, 0, time.UTC)
	for i, sto := range s.stores {
		sz, ok := sto.(store.Sizer)
		if !ok {
			continue
		}
		ss := storeStats{Name: s.storeName(i)}
		var err error
		ss.Size, err = sz.Size(ctx, midnight)
		if err != nil {
			s.log.Warn("landing page: counting a store", "store", ss.Name, "err", err)
			ss.Err = "could not be counted (see the cache's log)"
		}
		if i == s.uploadIdx && err == nil {
			st.UploadsToday = ss.Size.Since
		}
		st.Stores = append(st.Stores, ss)
	}
	fams, err := s.reg.Gather()
	if err != nil {
		// Gather returns what it could along with the error.
		s.log.Debug("landing page: gathering metrics", "err", err)
	}
	m := map[string]*dto.MetricFamily{}
	for _, f := range fams {
		m[f.GetName()] = f
	}
	sum := func(name string, match func(labels map[string]string) bool) (total float64, found bool) {
		f := m[name]
		if f == nil {
			return 0, false
		}
		for _, mt := range f.Metric {
			labels := map[string]string{}
			for _, l := range mt.Label {
				labels[l.GetName()] = l.GetValue()
			}
			if match != nil && !match(labels) {
				continue
			}
			switch {
			case mt.Counter != nil:
				total += mt.Counter.GetValue()
			case mt.Gauge != nil:
				total += mt.Gauge.GetValue()
			}
		}
		return total, true
	}
	label := func(k string, vals ...string) func(map[string]string) bool {
		return func(l map[string]string) bool {
			for _, v := range vals {
				if l[k] == v {
					return true
				}
			}
			return false
		}
	}
	narinfo := func(l map[string]string) bool { return l["route"] == "narinfo" }
	st.NarinfoHits, _ = sum("concordia_http_requests_total", func(l map[string]string) bool { return narinfo(l) && l["code"] == "200" })
	st.NarinfoAnswers, _ = sum("concordia_http_requests_total", func(l map[string]string) bool { return narinfo(l) && (l["code"] == "200" || l["code"] == "404") })
	st.MemHits, _ = sum("concordia_narinfo_cache_total", label("result", "hit"))
	st.MemLookups, _ = sum("concordia_narinfo_cache_total", nil)
	st.NarCache, _ = sum("concordia_nar_requests_total", label("source", "cache"))
	st.NarRequests, _ = sum("concordia_nar_requests_total", nil)
	if entries, ok := sum("concordia_zstd_cache_entries", nil); ok {
		z := &zstdStats{Entries: entries}
		z.Bytes, _ = sum("concordia_zstd_cache_size_bytes", nil)
		z.Hits, _ = sum("concordia_zstd_cache_hits_total", nil)
		z.Misses, _ = sum("concordia_zstd_cache_misses_total", nil)
		z.Evictions, _ = sum("concordia_zstd_cache_evictions_total", nil)
		st.Zstd = z
	}
	for _, u := range s.opts.Upstreams {
		us := upstreamStats{UpstreamInfo: u}
		if f := m["concordia_upstream_up"]; f != nil && hasLabel(f, "upstream", u.Name) {
			v, _ := sum("concordia_upstream_up", label("upstream", u.Name))
			us.Up = "up"
			if v == 0 {
				us.Up = "backing off"
			}
		}
		st.Upstreams = append(st.Upstreams, us)
	}
	return st
}

func hasLabel(f *dto.MetricFamily, k, v string) bool {
	for _, mt := range f.Metric {
		for _, l := range mt.Label {
			if l.GetName() == k && l.GetValue() == v {
				return true
			}
		}
	}
	return false
}

// landingData is the landing page's.
type landingData struct {
	URL, StoreDir, KeyList string
	Priority               int
	Keys                   []string
	Upstreams              []UpstreamInfo
	// Stats is nil for a reader of a private cache without a token.
	Stats *siteStats
}

func (s *Server) handleLanding(w http.ResponseWriter, r *http.Request) {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	keys := make([]string, len(s.keys))
	for i, k := range s.keys {
		keys[i] = k.Public().String()
	}
	d := landingData{URL: scheme + "://" + r.Host, StoreDir: s.storeDir, KeyList: strings.Join(keys, " "),
		Priority: s.opts.Priority, Keys: keys, Upstreams: s.opts.Upstreams}
	if r.Method != http.MethodHead && s.readable(r) {
		// Not the request's context: a reader who leaves must not
		// leave a failed count for the next ones.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 10*time.Second)
		d.Stats = s.stats.get(ctx, s.siteStats)
		cancel()
	}
	s.render(w, r, http.StatusOK, "landing", "Concordia binary cache", "cache", d)
}
