package upstream

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Kinds of request and their results, the label values of
// concordia_upstream_requests_total.
const (
	kindNarinfo = "narinfo"
	kindNAR     = "nar"

	resultHit   = "hit"
	resultMiss  = "miss"
	resultBad   = "bad"
	resultError = "error"
)

// Reasons of a bad answer, the label values of concordia_upstream_bad_total
// this package uses; Bad takes the caller's ("nar-hash", "truncated", ...).
const (
	ReasonMalformed      = "malformed"
	ReasonOversize       = "oversize"
	ReasonWrongPath      = "wrong-path"
	ReasonUnsigned       = "unsigned"
	ReasonWrongSignature = "wrong-signature"
	ReasonTooManySigs    = "too-many-signatures"
	ReasonForeignURL     = "foreign-url"
	ReasonNarHash        = "nar-hash"
	ReasonNarSize        = "nar-size"
	ReasonTruncated      = "truncated"
	ReasonInvalidNAR     = "invalid-nar"
	ReasonCompression    = "compression"
)

var knownReasons = []string{ReasonMalformed, ReasonOversize, ReasonWrongPath, ReasonUnsigned,
	ReasonWrongSignature, ReasonTooManySigs, ReasonForeignURL, ReasonNarHash, ReasonNarSize, ReasonTruncated,
	ReasonInvalidNAR, ReasonCompression}

// metrics are the Set's series. They exist even without a Registry, so
// the code counts unconditionally; New registers them once per Set.
type metrics struct {
	requests *prometheus.CounterVec
	seconds  *prometheus.HistogramVec
	bytes    *prometheus.CounterVec
	bad      *prometheus.CounterVec
	cache    *prometheus.CounterVec
	up       *prometheus.GaugeVec

	cacheHit, cacheMiss prometheus.Counter
}

// upMetrics are one upstream's series, resolved once.
type upMetrics struct {
	m              *metrics
	name           string
	narinfo, nar   map[string]prometheus.Counter // by result
	narinfoS, narS prometheus.Observer
	bytes          prometheus.Counter
	up             prometheus.Gauge
}

func newMetrics() *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "concordia_upstream_requests_total",
			Help: "Requests to upstream caches, by upstream, kind (narinfo, nar) and result (hit, miss, bad, error).",
		}, []string{"upstream", "kind", "result"}),
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "concordia_upstream_request_seconds",
			Help:    "Time of a request to an upstream: a narinfo whole, a NAR until its body ended.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
		}, []string{"upstream", "kind"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "concordia_upstream_bytes_total",
			Help: "NAR file bytes received from upstreams, as sent (compressed).",
		}, []string{"upstream"}),
		bad: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "concordia_upstream_bad_total",
			Help: "Answers from upstreams that were refused (unsigned, wrong-path, malformed, nar-hash, truncated, ...): a hostile or broken upstream.",
		}, []string{"upstream", "reason"}),
		cache: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "concordia_upstream_cache_answers_total",
			Help: "Lookups answered from the in-memory cache of upstream answers (hit) or not (miss).",
		}, []string{"result"}),
		up: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "concordia_upstream_up",
			Help: "1 when the upstream is asked, 0 while it is skipped after failing (backoff).",
		}, []string{"upstream"}),
	}
	m.cacheHit = m.cache.WithLabelValues(resultHit)
	m.cacheMiss = m.cache.WithLabelValues(resultMiss)
	return m
}

func (m *metrics) register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.requests, m.seconds, m.bytes, m.bad, m.cache, m.up} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// forUpstream creates every series of one upstream, so a dashboard shows
// zeros rather than gaps before the first failure.
func (m *metrics) forUpstream(name string) *upMetrics {
	um := &upMetrics{m: m, name: name,
		narinfo: map[string]prometheus.Counter{}, nar: map[string]prometheus.Counter{}}
	for _, r := range []string{resultHit, resultMiss, resultBad, resultError} {
		um.narinfo[r] = m.requests.WithLabelValues(name, kindNarinfo, r)
		um.nar[r] = m.requests.WithLabelValues(name, kindNAR, r)
	}
	for _, r := range knownReasons {
		m.bad.WithLabelValues(name, r)
	}
	um.narinfoS = m.seconds.WithLabelValues(name, kindNarinfo)
	um.narS = m.seconds.WithLabelValues(name, kindNAR)
	um.bytes = m.bytes.WithLabelValues(name)
	um.up = m.up.WithLabelValues(name)
	um.up.Set(1)
	return um
}

func (um *upMetrics) badAnswer(reason string) {
	um.m.bad.WithLabelValues(um.name, reason).Inc()
}
