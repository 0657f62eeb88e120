package server_test

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// discardWriter is a ResponseWriter that keeps nothing, so the benchmark
// measures the handler, not the recorder.
type discardWriter struct{ h http.Header }

func (d *discardWriter) Header() http.Header         { return d.h }
func (d *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (d *discardWriter) WriteHeader(int)             {}

// BenchmarkNarinfoHit is the hot path: a cached, signed narinfo.
func BenchmarkNarinfoHit(b *testing.B) {
	f := newFixture(b, nil)
	req := httptest.NewRequest("GET", "/"+f.a+".narinfo", nil)
	w := &discardWriter{h: http.Header{}}
	f.srv.ServeHTTP(w, req)
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		f.srv.ServeHTTP(w, req)
	}
}

// BenchmarkNarinfoMissing is a lookup the store answers with not-found.
func BenchmarkNarinfoMissing(b *testing.B) {
	f := newFixture(b, nil)
	req := httptest.NewRequest("GET", "/"+hashOf("none")+".narinfo", nil)
	w := &discardWriter{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		f.srv.ServeHTTP(w, req)
	}
}

// BenchmarkNarinfoHitParallel is the hit path from all cores at once (the
// LRU lock and the metrics are shared).
func BenchmarkNarinfoHitParallel(b *testing.B) {
	f := newFixture(b, nil)
	req := httptest.NewRequest("GET", "/"+f.a+".narinfo", nil)
	f.srv.ServeHTTP(&discardWriter{h: http.Header{}}, req)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		w := &discardWriter{h: http.Header{}}
		for pb.Next() {
			clear(w.h)
			f.srv.ServeHTTP(w, req)
		}
	})
}
