package pullthrough

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bos55/concordia/internal/upstream"
)

// metrics are the pull-through's own; the upstream requests themselves
// are counted by package upstream.
type metrics struct {
	flights prometheus.Gauge
	joined  prometheus.Counter
	pulls   *prometheus.CounterVec   // upstream, result
	bytes   *prometheus.CounterVec   // upstream
	seconds *prometheus.HistogramVec // upstream
}

func newMetrics(reg prometheus.Registerer, set *upstream.Set) (*metrics, error) {
	m := &metrics{
		flights: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "concordia_pull_through_in_progress",
			Help: "Upstream NAR downloads under way.",
		}),
		joined: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "concordia_pull_through_joined_total",
			Help: "NAR requests that joined a download under way instead of starting one.",
		}),
		pulls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "concordia_pull_through_total",
			Help: "Upstream NAR downloads by upstream and result: ok (verified and kept), or why not.",
		}, []string{"upstream", "result"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "concordia_pull_through_bytes_total",
			Help: "Bytes of NAR files pulled from an upstream, verified and kept.",
		}, []string{"upstream"}),
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "concordia_pull_through_seconds",
			Help:    "Time from the first request of an upstream NAR to its verdict.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2.5, 12),
		}, []string{"upstream"}),
	}
	for _, u := range set.Upstreams() {
		if u.PullThrough {
			m.bytes.WithLabelValues(u.Name)
			m.pulls.WithLabelValues(u.Name, "ok")
			m.seconds.WithLabelValues(u.Name)
		}
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.flights, m.joined, m.pulls, m.bytes, m.seconds} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// result counts one finished flight.
func (m *metrics) result(upstream string, err error, d time.Duration, n int64) {
	m.seconds.WithLabelValues(upstream).Observe(d.Seconds())
	var b *badNAR
	switch {
	case err == nil:
		m.pulls.WithLabelValues(upstream, "ok").Inc()
		m.bytes.WithLabelValues(upstream).Add(float64(n))
	case errors.As(err, &b):
		m.pulls.WithLabelValues(upstream, b.reason).Inc()
	default:
		m.pulls.WithLabelValues(upstream, "error").Inc()
	}
}
