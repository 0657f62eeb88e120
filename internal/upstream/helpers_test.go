package upstream_test

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bos55/concordia/internal/nartest"
	"github.com/bos55/concordia/internal/syncbuf"
	"github.com/bos55/concordia/internal/upstream"
	"github.com/bos55/concordia/internal/upstream/upstreamtest"
	"github.com/bos55/concordia/pkg/narinfo"
)

// clock is a settable Options.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// fake is one upstreamtest server with its key.
type fake struct {
	srv *upstreamtest.Server
	sk  narinfo.SecretKey
	pk  narinfo.PublicKey
}

func newFake(t *testing.T, keyName string) *fake {
	sk, pk := upstreamtest.Key(t, keyName)
	return &fake{srv: upstreamtest.New(t), sk: sk, pk: pk}
}

// path adds a path named name to f and returns it.
func (f *fake) path(t *testing.T, name, compression string) *upstreamtest.Path {
	p := upstreamtest.NewPath(t, f.sk, name, nartest.File([]byte("contents of "+name)), compression)
	f.srv.Add(p)
	return p
}

// config is an upstream config for f, pulled through, with a short
// timeout so failing tests fail fast.
func (f *fake) config(name string) upstream.Config {
	return upstream.Config{Name: name, URL: f.srv.URL, Keys: []narinfo.PublicKey{f.pk},
		Timeout: 2 * time.Second, PullThrough: true}
}

// env is a Set under test and what it reports through.
type env struct {
	set   *upstream.Set
	reg   *prometheus.Registry
	log   *syncbuf.Buffer
	clock *clock
}

func newEnv(t *testing.T, cfgs ...upstream.Config) *env {
	t.Helper()
	e := &env{reg: prometheus.NewRegistry(), log: &syncbuf.Buffer{}, clock: newClock()}
	set, err := upstream.New(upstream.Options{
		Upstreams: cfgs,
		Registry:  e.reg,
		Logger:    slog.New(slog.NewTextHandler(e.log, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Now:       e.clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	e.set = set
	return e
}

// metric is the value of the series name{labels}, 0 when absent.
func (e *env) metric(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue()
			case m.Gauge != nil:
				return m.Gauge.GetValue()
			case m.Histogram != nil:
				return float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return 0
}

func (e *env) requests(t *testing.T, up, kind, result string) float64 {
	return e.metric(t, "concordia_upstream_requests_total", map[string]string{"upstream": up, "kind": kind, "result": result})
}

// ctx is a generous deadline: a test that hangs fails instead.
func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}
