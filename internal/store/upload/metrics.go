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
	gcFailures     prometheus.Counter
	// gcLastOK and gcLastFailed are when GC last completed and last
	// failed: "the last GC failed" is one comparison, whatever the
	// interval.
	gcLastOK, gcLastFailed prometheus.Gauge
	freed                  prometheus.Counter
	size                   prometheus.GaugeFunc
	paths                  prometheus.GaugeFunc
	// maxSize and hardMaxSize are the configured bounds, so a rule can
	// compare the store's size with them.
	maxSize, hardMaxSize prometheus.Gauge
	// commits and commitTxs are narinfo commits and the index
	// transactions that ran them (kv.Group); dirSyncs and dirFsyncs the
	// blob directory's syncs and the fsyncs that ran them, where it has
	// any (durable.DirSyncer): how much parallel uploads share.
	commits, commitTxs  prometheus.CounterFunc
	dirSyncs, dirFsyncs prometheus.CounterFunc
	// inlined counts the NAR files committed into the index with their
	// narinfo (inlineblob), not written as files.
	inlined prometheus.Counter
}

// syncStats is a blob.Dir whose Syncs share directory fsyncs (diskblob).
type syncStats interface {
	SyncStats() (calls, syncs uint64)
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
	// s.commits is made after the metrics, once the index is open.
	commitStat := func(f func(calls, txs uint64) uint64) func() float64 {
		return func() float64 {
			if s.commits == nil {
				return 0
			}
			return float64(f(s.commits.Stats()))
		}
	}
	m := &metrics{
		commits: prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "concordia_upload_narinfo_commits_total",
			Help: "Narinfo commits to the upload index; concurrent ones share transactions (concordia_upload_narinfo_commit_transactions_total).",
		}, commitStat(func(calls, _ uint64) uint64 { return calls })),
		commitTxs: prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "concordia_upload_narinfo_commit_transactions_total",
			Help: "Write transactions of the upload index that ran the narinfo commits (more than one for a group in which one commit failed).",
		}, commitStat(func(_, txs uint64) uint64 { return txs })),
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
		gcFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "concordia_gc_failures_total",
			Help: "Garbage collections that failed (periodic or asked for); nothing was deleted or the deletion stopped part way.",
		}),
		gcLastOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "concordia_gc_last_success_timestamp_seconds",
			Help: "When a garbage collection last completed (Unix time; 0: none since start).",
		}),
		gcLastFailed: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "concordia_gc_last_failure_timestamp_seconds",
			Help: "When a garbage collection last failed (Unix time; 0: none since start). Above the last success: the last GC failed.",
		}),
		maxSize: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "concordia_gc_max_size_bytes",
			Help: "gc.max_size: the size GC brings concordia_upload_store_bytes down to, past the paths it keeps for writers (0: no bound).",
		}),
		hardMaxSize: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "concordia_gc_hard_max_size_bytes",
			Help: "The size past which GC also collects paths kept for writers (gc.hard_max_size, by default one and a half times gc.max_size; 0: no bound).",
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
	m.inlined = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "concordia_upload_inline_nars_total",
		Help: "Uploaded NAR files of at most upload.inline_max_size kept in the index, committed with their narinfo, rather than written as files.",
	})
	if d, ok := s.blobs.(syncStats); ok {
		dirStat := func(f func(calls, syncs uint64) uint64) func() float64 {
			return func() float64 { return float64(f(d.SyncStats())) }
		}
		m.dirSyncs = prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "concordia_upload_blob_dir_syncs_total",
			Help: "Requests to make the NAR directory's new names durable; concurrent ones share directory fsyncs (concordia_upload_blob_dir_fsyncs_total).",
		}, dirStat(func(calls, _ uint64) uint64 { return calls }))
		m.dirFsyncs = prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "concordia_upload_blob_dir_fsyncs_total",
			Help: "Fsyncs of the NAR directory run for those requests.",
		}, dirStat(func(_, syncs uint64) uint64 { return syncs }))
	}
	return m
}

// bounds records the configured size bounds; the hard bound defaults as
// GC computes it.
func (m *metrics) bounds(maxSize, hardMaxSize int64) {
	if hardMaxSize == 0 {
		hardMaxSize = maxSize + maxSize/2
	}
	m.maxSize.Set(float64(maxSize))
	m.hardMaxSize.Set(float64(hardMaxSize))
}

// gcDone counts one GC run that was not a dry run.
func (m *metrics) gcDone(at time.Time, err error) {
	if err != nil {
		m.gcFailures.Inc()
		m.gcLastFailed.Set(float64(at.UnixNano()) / 1e9)
		return
	}
	m.gcRuns.Inc()
	m.gcLastOK.Set(float64(at.UnixNano()) / 1e9)
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
	cs := []prometheus.Collector{m.uploads, m.received, m.verifyFailures, m.gcRuns, m.gcFailures, m.gcLastOK, m.gcLastFailed,
		m.freed, m.size, m.paths, m.maxSize, m.hardMaxSize, m.commits, m.commitTxs, m.inlined}
	if m.dirSyncs != nil {
		cs = append(cs, m.dirSyncs, m.dirFsyncs)
	}
	return cs
}
