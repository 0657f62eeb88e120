package upstream_test

import (
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/upstream"
	"github.com/bos55/concordia/internal/upstream/upstreamtest"
	"github.com/bos55/concordia/pkg/narinfo"
)

func TestNewRefuses(t *testing.T) {
	_, pk := upstreamtest.Key(t, "k-1")
	keys := []narinfo.PublicKey{pk}
	for _, tc := range []struct {
		name string
		cfgs []upstream.Config
	}{
		{"ftp", []upstream.Config{{URL: "ftp://cache.example", Keys: keys}}},
		{"no host", []upstream.Config{{URL: "http:///x", Keys: keys}}},
		{"relative", []upstream.Config{{URL: "cache.example", Keys: keys}}},
		{"query", []upstream.Config{{URL: "https://cache.example?priority=10", Keys: keys}}},
		{"user in URL", []upstream.Config{{URL: "https://u:p@cache.example", Keys: keys}}},
		{"no keys", []upstream.Config{{URL: "https://cache.example"}}},
		{"token and user", []upstream.Config{{URL: "https://cache.example", Keys: keys, Token: "t", User: "u"}}},
		{"negative timeout", []upstream.Config{{URL: "https://cache.example", Keys: keys, Timeout: -time.Second}}},
		{"same name", []upstream.Config{{URL: "https://a.example", Name: "x", Keys: keys}, {URL: "https://b.example", Name: "x", Keys: keys}}},
		{"same default name", []upstream.Config{{URL: "https://a.example", Keys: keys}, {URL: "https://a.example/other", Keys: keys}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := upstream.New(upstream.Options{Upstreams: tc.cfgs}); !errors.Is(err, upstream.ErrConfig) {
				t.Fatalf("New = %v, want ErrConfig", err)
			}
		})
	}
	if _, err := upstream.New(upstream.Options{StoreDir: "nix/store"}); !errors.Is(err, upstream.ErrConfig) {
		t.Fatalf("relative store dir: %v, want ErrConfig", err)
	}
}

func TestNewDefaults(t *testing.T) {
	_, pk := upstreamtest.Key(t, "k-1")
	s, err := upstream.New(upstream.Options{Upstreams: []upstream.Config{
		{URL: "https://cache.nixos.org/", Keys: []narinfo.PublicKey{pk}},
		{URL: "http://10.0.0.1:8080/sub", Name: "lan", Keys: []narinfo.PublicKey{pk}, Timeout: time.Second, NegativeTTL: time.Hour},
	}})
	if err != nil {
		t.Fatal(err)
	}
	ups := s.Upstreams()
	if len(ups) != 2 {
		t.Fatalf("%d upstreams", len(ups))
	}
	a, b := ups[0], ups[1]
	if a.Name != "cache.nixos.org" || a.URL != "https://cache.nixos.org" || a.Timeout != upstream.DefaultTimeout || a.NegativeTTL != upstream.DefaultNegativeTTL {
		t.Fatalf("defaults: %+v", a.Config)
	}
	if b.Name != "lan" || b.Timeout != time.Second || b.NegativeTTL != time.Hour {
		t.Fatalf("given values: %+v", b.Config)
	}
}

// The series exist from the start, for each upstream, and one Set
// registers them once.
func TestMetricsRegistered(t *testing.T) {
	f := newFake(t, "k-1")
	e := newEnv(t, f.config("u"))
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, mf := range mfs {
		have[mf.GetName()] = true
	}
	for _, name := range []string{"concordia_upstream_requests_total", "concordia_upstream_request_seconds",
		"concordia_upstream_bytes_total", "concordia_upstream_bad_total", "concordia_upstream_cache_answers_total",
		"concordia_upstream_up"} {
		if !have[name] {
			t.Errorf("%s not registered", name)
		}
	}
	if got := e.metric(t, "concordia_upstream_up", map[string]string{"upstream": "u"}); got != 1 {
		t.Fatalf("up = %v at start", got)
	}
	// A second Set on the same registry is refused, not merged.
	if _, err := upstream.New(upstream.Options{Upstreams: []upstream.Config{f.config("u")}, Registry: e.reg}); err == nil {
		t.Fatal("a second Set registered the same series")
	}
}

// The default client ignores the environment's proxy (the cache's
// HTTP_PROXY is for its builds) and bounds the wait for headers.
func TestDefaultClient(t *testing.T) {
	_, pk := upstreamtest.Key(t, "k-1")
	s, err := upstream.New(upstream.Options{Upstreams: []upstream.Config{
		{URL: "https://cache.nixos.org", Keys: []narinfo.PublicKey{pk}, Timeout: 3 * time.Second},
	}})
	if err != nil {
		t.Fatal(err)
	}
	c := s.Upstreams()[0].HTTPClient()
	tr, ok := c.Transport.(*http.Transport)
	if !ok {
		t.Fatalf("transport %T", c.Transport)
	}
	if tr.Proxy != nil || tr.ResponseHeaderTimeout != 3*time.Second || tr.MaxIdleConnsPerHost < 16 || !tr.ForceAttemptHTTP2 {
		t.Fatalf("transport: proxy %v, header timeout %v, idle per host %d, h2 %v",
			tr.Proxy != nil, tr.ResponseHeaderTimeout, tr.MaxIdleConnsPerHost, tr.ForceAttemptHTTP2)
	}
	if c.Timeout != 0 {
		t.Fatalf("client timeout %v would cut long NAR downloads", c.Timeout)
	}
	// A given client is used as is.
	mine := &http.Client{}
	s, err = upstream.New(upstream.Options{Client: mine, Upstreams: []upstream.Config{
		{URL: "https://cache.nixos.org", Keys: []narinfo.PublicKey{pk}},
	}})
	if err != nil || s.Upstreams()[0].HTTPClient() != mine {
		t.Fatalf("Options.Client not used: %v", err)
	}
}
