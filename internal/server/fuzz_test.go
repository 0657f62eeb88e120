package server_test

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
)

// FuzzReadPaths sends arbitrary paths, queries and headers through the
// real router over a fake store (which has no I/O errors): the answer
// must never be a 5xx or a 400, whatever the input.
func FuzzReadPaths(f *testing.F) {
	fx := newFixture(f, nil)
	nh := narHashOf(fx)
	for _, seed := range []string{
		"/" + fx.a + ".narinfo", "/" + fx.a + ".ls", "/nix-cache-info", "/",
		"/nar/" + fx.a + "-" + nh + ".nar", "/nar/" + fx.a + "-" + nh + ".nar.zst",
		"/nar/" + nh + ".nar?hash=" + fx.a, "/nar/" + fx.a + ".nar", "/log/" + fx.a + "-app.drv",
		"/realisations/sha256:" + nh + "!out.doi", "/build-trace-v2/" + fx.a + "-x.drv/out.doi",
		"/nar/../x", "/%00", "/nar/" + fx.a + "-" + nh + ".nar.",
	} {
		f.Add(seed, "bytes=0-10", "zstd")
	}
	f.Fuzz(func(t *testing.T, target, rng, ae string) {
		u, err := url.ParseRequestURI(target)
		if err != nil || u.Path == "" || u.Path[0] != '/' {
			return
		}
		req := &http.Request{Method: "GET", URL: u, Header: http.Header{}, Host: "x"}
		req = req.WithContext(t.Context())
		req.Header.Set("Range", rng)
		req.Header.Set("Accept-Encoding", ae)
		rec := httptest.NewRecorder()
		fx.srv.ServeHTTP(rec, req)
		if rec.Code >= 500 || rec.Code == 400 {
			t.Fatalf("GET %q (Range %q, AE %q): %d %s", target, rng, ae, rec.Code, rec.Body)
		}
		if ce := rec.Header().Get("Content-Encoding"); ce != "" && ce != "zstd" && ce != "bzip2" {
			t.Fatalf("Content-Encoding %q", ce)
		}
	})
}
