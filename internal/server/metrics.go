package server

import (
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/bos55/concordia/internal/auth"
)

// metrics are the server's Prometheus series. Label values on the hot
// path (narinfo 200/404) are resolved once here so a hit does no label
// lookup.
type metrics struct {
	requests      *prometheus.CounterVec
	duration      *prometheus.HistogramVec
	narBytes      *prometheus.CounterVec
	narinfoCache  *prometheus.CounterVec
	activeStreams prometheus.Gauge
	listingBuilds prometheus.Counter
	narSource     prometheus.Counter
	// narRequests: NAR requests answered from the cache's own stores
	// and from an upstream (pull-through), for the hit ratio.
	narRequests             *prometheus.CounterVec
	narFromCache, narPulled prometheus.Counter

	narinfoOK, narinfoMissing prometheus.Counter
	narinfoDur                prometheus.Observer
	cacheHit, cacheMiss       prometheus.Counter
}

func newMetrics(reg *prometheus.Registry, extra []prometheus.Collector) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "concordia_http_requests_total",
			Help: "HTTP requests answered, by route and status code.",
		}, []string{"route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "concordia_http_request_duration_seconds",
			Help: "Time to answer a request (whole body sent), by route.",
			// From 20us (a cached narinfo) to minutes (a large NAR).
			Buckets: []float64{.00002, .00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
		}, []string{"route"}),
		narBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "concordia_nar_bytes_sent_total",
			Help: "NAR body bytes written to clients, by the encoding of the bytes on the wire (none, zstd, xz, ...).",
		}, []string{"encoding"}),
		narinfoCache: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "concordia_narinfo_cache_total",
			Help: "Lookups in the in-memory cache of signed narinfos, by result (hit, miss).",
		}, []string{"result"}),
		activeStreams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "concordia_nar_active_streams",
			Help: "NAR responses being sent right now.",
		}),
		listingBuilds: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "concordia_listing_builds_total",
			Help: "Listings (.ls) built from a NAR; each is built once and kept, so this grows with distinct NARs listed, not with requests.",
		}),
		narSource: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "concordia_nar_source_bytes_total",
			Help: "NAR bytes stores produced to answer uncompressed NAR and /serve requests, those skipped before a range included: compare with concordia_nar_bytes_sent_total.",
		}),
		narRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "concordia_nar_requests_total",
			Help: "NAR requests by where the path was found: cache (this machine, uploads, paths pulled before) or upstream (pulled through now); the pull-through hit ratio is cache over the sum.",
		}, []string{"source"}),
	}
	m.narFromCache, m.narPulled = m.narRequests.WithLabelValues("cache"), m.narRequests.WithLabelValues("upstream")
	cs := []prometheus.Collector{m.requests, m.duration, m.narBytes, m.narinfoCache, m.activeStreams, m.listingBuilds, m.narSource, m.narRequests}
	cs = append(cs, extra...)
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	// Process and Go runtime series, unless the caller already has them.
	for _, c := range []prometheus.Collector{collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})} {
		if err := reg.Register(c); err != nil {
			if _, dup := err.(prometheus.AlreadyRegisteredError); !dup {
				return nil, err
			}
		}
	}
	m.narinfoOK = m.requests.WithLabelValues("narinfo", "200")
	m.narinfoMissing = m.requests.WithLabelValues("narinfo", "404")
	m.narinfoDur = m.duration.WithLabelValues("narinfo")
	m.cacheHit = m.narinfoCache.WithLabelValues("hit")
	m.cacheMiss = m.narinfoCache.WithLabelValues("miss")
	return m, nil
}

func (m *metrics) narRequest(upstream bool) {
	if upstream {
		m.narPulled.Inc()
	} else {
		m.narFromCache.Inc()
	}
}

func (m *metrics) observe(route string, code int, seconds float64) {
	if route == "narinfo" {
		switch code {
		case http.StatusOK:
			m.narinfoOK.Inc()
			m.narinfoDur.Observe(seconds)
			return
		case http.StatusNotFound:
			m.narinfoMissing.Inc()
			m.narinfoDur.Observe(seconds)
			return
		}
	}
	c := "aborted" // the response was cut mid-stream
	if code != 0 {
		c = strconv.Itoa(code)
	}
	m.requests.WithLabelValues(route, c).Inc()
	m.duration.WithLabelValues(route).Observe(seconds)
}

func (s *Server) metricsHandler() http.Handler {
	return promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{Registry: s.reg})
}

// tokenCollectors report the tokens file, so an alert can fire when an
// edit refused a line or the file became unreadable (no token works).
func tokenCollectors(t *auth.Tokens) []prometheus.Collector {
	return []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "concordia_tokens",
			Help: "Usable tokens in the tokens file (0 while it cannot be read).",
		}, func() float64 { return float64(t.FileStatus().Tokens) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "concordia_tokens_file_refused_lines",
			Help: "Lines of the tokens file that were refused (malformed, or a name or token on two lines): their tokens do not work.",
		}, func() float64 { return float64(len(t.FileStatus().Refused)) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "concordia_tokens_file_readable",
			Help: "1 when the tokens file could be read at its last check; 0 means no token works.",
		}, func() float64 {
			if t.FileStatus().Err != nil {
				return 0
			}
			return 1
		}),
	}
}
