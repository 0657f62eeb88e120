package upload

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bos55/concordia/internal/store"
)

type metrics struct {
	uploads        *prometheus.CounterVec
	received       prometheus.Counter
	verifyFailures prometheus.Counter
	gcRuns         prometheus.Counter
	freed          prometheus.Counter
	size           prometheus.GaugeFunc
	paths          prometheus.GaugeFunc
}

func newMetrics(s *Store) *metrics {
	// Stats scans the index; scrapes reuse a result for a few seconds
	// so two gauges and frequent scrapers cost one scan.
	var (
		mu   sync.Mutex
		last Stats
		at   time.Time
	)
	stat := func(f func(Stats) float64) func() float64 {
		return func() float64 {
			mu.Lock()
			defer mu.Unlock()
			if time.Since(at) > 5*time.Second {
				st, err := s.Stats(context.Background())
				if err != nil {
					return f(last)
				}
				last, at = st, time.Now()
			}
			return f(last)
		}
	}
	return &metrics{
		uploads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "concordia_upload_requests_total",
			Help: "Uploads by kind (nar, narinfo, log, adopt: a path pulled from an upstream) and result (ok, invalid, conflict, nospace, unavailable, error).",
		}, []string{"kind", "result"}),
		received: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "concordia_upload_received_bytes_total",
			Help: "Bytes of NAR files received and verified.",
		}),
		verifyFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "concordia_upload_verification_failures_total",
			Help: "NAR uploads refused as invalid plus stored NAR files found damaged by verify.",
		}),
		gcRuns: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "concordia_gc_runs_total",
			Help: "Garbage collections completed.",
		}),
		freed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "concordia_gc_freed_bytes_total",
			Help: "Bytes of NAR files, build logs and realisations removed by garbage collection.",
		}),
		size: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "concordia_upload_store_bytes",
			Help: "Bytes of NAR files (pending uploads included), build logs and realisations in the upload store: what gc.max_size bounds.",
		}, stat(func(st Stats) float64 { return float64(st.Bytes) })),
		paths: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "concordia_upload_store_paths",
			Help: "Store paths in the upload store.",
		}, stat(func(st Stats) float64 { return float64(st.Paths) })),
	}
}

func (m *metrics) upload(kind string, err error) {
	result := "ok"
	switch {
	case err == nil:
	case errors.Is(err, store.ErrInvalid):
		result = "invalid"
		if kind == "nar" {
			m.verifyFailures.Inc()
		}
	case errors.Is(err, store.ErrConflict):
		result = "conflict"
	case errors.Is(err, store.ErrNoSpace):
		result = "nospace"
	case errors.Is(err, store.ErrUnavailable):
		result = "unavailable"
	default:
		result = "error"
	}
	m.uploads.WithLabelValues(kind, result).Inc()
}

// Collectors returns the store's Prometheus metrics for the server to
// register.
func (s *Store) Collectors() []prometheus.Collector {
	m := s.metrics
	return []prometheus.Collector{m.uploads, m.received, m.verifyFailures, m.gcRuns, m.freed, m.size, m.paths}
}
