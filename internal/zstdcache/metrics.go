package zstdcache

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// counters are the cache's numbers; Prometheus reads them through
// CounterFunc/GaugeFunc so the hot path pays one atomic add, no more.
type counters struct {
	hits, misses, written, served, evictions, inProgress atomic.Int64
}

// Stats is a snapshot of the cache's counters.
type Stats struct {
	Hits       int64 // Gets answered by a complete blob or a running production
	Misses     int64 // Gets that started a production
	Written    int64 // compressed bytes written to disk
	Served     int64 // compressed bytes read by hits
	Evictions  int64
	InProgress int64 // running productions
	Entries    int   // complete blobs
	Bytes      int64 // size of complete blobs
}

// Stats returns the current counters.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	entries, size := len(c.items), c.size
	c.mu.Unlock()
	return Stats{
		Hits:       c.m.hits.Load(),
		Misses:     c.m.misses.Load(),
		Written:    c.m.written.Load(),
		Served:     c.m.served.Load(),
		Evictions:  c.m.evictions.Load(),
		InProgress: c.m.inProgress.Load(),
		Entries:    entries,
		Bytes:      size,
	}
}

// Collectors returns Prometheus collectors for the cache, to be registered
// by whoever owns the registry.
func (c *Cache) Collectors() []prometheus.Collector {
	const ns, sub = "concordia", "zstd_cache"
	counter := func(name, help string, v *atomic.Int64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help},
			func() float64 { return float64(v.Load()) })
	}
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help}, f)
	}
	return []prometheus.Collector{
		counter("hits_total", "Gets answered from a cached blob or by joining a running compression.", &c.m.hits),
		counter("misses_total", "Gets that started a compression.", &c.m.misses),
		counter("written_bytes_total", "Compressed bytes written to the cache.", &c.m.written),
		counter("served_bytes_total", "Compressed bytes read by cache hits.", &c.m.served),
		counter("evictions_total", "Blobs evicted to stay within the size bound.", &c.m.evictions),
		gauge("compressions_in_progress", "Compressions running now.", func() float64 { return float64(c.m.inProgress.Load()) }),
		gauge("size_bytes", "Total size of complete cached blobs.", func() float64 { return float64(c.Stats().Bytes) }),
		gauge("entries", "Complete cached blobs.", func() float64 { return float64(c.Stats().Entries) }),
	}
}

// Register registers Collectors with reg.
func (c *Cache) Register(reg prometheus.Registerer) error {
	for _, col := range c.Collectors() {
		if err := reg.Register(col); err != nil {
			return err
		}
	}
	return nil
}
