package nixreplay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/bos55/concordia/internal/nartest"
	"github.com/bos55/concordia/pkg/narinfo"
)

// closure is three synthetic paths: c -> b -> a and c -> a; b is the
// largest, so nars-first order differs from dependency order.
func closure() []Path {
	a := "/nix/store/0hraq79aq2fnj4c4gng1n4jdpvvy1402-a"
	b := "/nix/store/7gqs62hlsnbakz8nc5c871r0c8zq4qcc-b"
	c := "/nix/store/k5qzsjrfi9iryznsh0ri7z0laf94q7qr-c"
	return []Path{
		{StorePath: c, NAR: nartest.File([]byte(b + " " + a)), References: []string{a, b}},
		{StorePath: a, NAR: nartest.File([]byte("leaf"))},
		{StorePath: b, NAR: nartest.File(bytes.Repeat([]byte(a+"\n"), 2000)), References: []string{a}},
	}
}

func hp(p string) string { return narinfo.HashPartOf(p) }

// wantUpload is the sequence each profile claims for a fresh cache, written
// out independently of Upload's code.
func wantUpload(p Profile, paths []Path, comp string) []string {
	ae := func(m string) string {
		switch {
		case p.AcceptEncoding == "":
			return ""
		case m == "HEAD" && !p.AcceptEncOnHead, m == "PUT" && !p.AcceptEncOnPut:
			return ""
		}
		return p.AcceptEncoding
	}
	exp := ""
	if p.Expect100 {
		exp = "100-continue"
	}
	line := func(m, path, ct string, status int) string {
		e := ""
		if m == "PUT" {
			e = exp
		}
		return fmt.Sprintf("%s %s ae=%q ct=%q ce=%q expect=%q range=false status=%d", m, path, ae(m), ct, "", e, status)
	}
	ext := narExt(comp)
	a, b, c := paths[1].StorePath, paths[2].StorePath, paths[0].StorePath
	out := []string{
		line("GET", "/nix-cache-info", "", 404),
		line("PUT", "/nix-cache-info", "text/x-nix-cache-info", 200),
	}
	var q []string
	for _, x := range []string{a, b, c} {
		q = append(q, line("GET", "/"+hp(x)+".narinfo", "", 404))
	}
	slices.Sort(q)
	out = append(out, q...)
	nar := func(x string) []string {
		return []string{line("HEAD", "/nar("+hp(x)+")"+ext, "", 404), line("PUT", "/nar("+hp(x)+")"+ext, "application/x-nix-nar", 200)}
	}
	ni := func(x string) string { return line("PUT", "/"+hp(x)+".narinfo", "text/x-nix-narinfo", 200) }
	if p.Order == OrderNARsFirst { // b is largest, then c, then a
		out = append(out, nar(b)...)
		out = append(out, nar(c)...)
		out = append(out, nar(a)...)
		return append(out, ni(a), ni(b), ni(c))
	}
	for _, x := range []string{a, b, c} {
		out = append(out, nar(x)...)
		out = append(out, ni(x))
	}
	return out
}

func wantSubstitute(p Profile, paths []Path, ext string, heads int) []string {
	ae := func(m string) string {
		if m == "HEAD" && !p.AcceptEncOnHead {
			return ""
		}
		return p.AcceptEncoding
	}
	line := func(m, path string) string {
		return fmt.Sprintf("%s %s ae=%q ct=\"\" ce=\"\" expect=\"\" range=false status=200", m, path, ae(m))
	}
	a, b, c := paths[1].StorePath, paths[2].StorePath, paths[0].StorePath
	out := []string{line("GET", "/nix-cache-info")}
	for range heads {
		out = append(out, line("HEAD", "/"+hp(c)+".narinfo"))
	}
	q := []string{line("GET", "/"+hp(a)+".narinfo"), line("GET", "/"+hp(b)+".narinfo"), line("GET", "/"+hp(c)+".narinfo")}
	slices.Sort(q)
	out = append(out, q...)
	for _, x := range []string{a, b, c} {
		out = append(out, line("GET", "/nar("+hp(x)+")"+ext))
	}
	return out
}

func diff(t *testing.T, what string, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("%s:\ngot\n  %s\nwant\n  %s", what, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

func compressions(p Profile) []string {
	var out []string
	for _, c := range []string{"zstd", "none", "xz", "bzip2", "gzip", "br", "lz4", "lzip"} {
		if c != "zstd" && c != "none" && testing.Short() {
			continue
		}
		out = append(out, c)
	}
	return out
}

// TestProfileRoundTrip: every profile uploads a closure in each
// compression and substitutes it back from a fresh client; both traces,
// as the client recorded them and as the server saw them, equal what the
// profile claims.
func TestProfileRoundTrip(t *testing.T) {
	for _, p := range Profiles {
		for _, comp := range compressions(p) {
			t.Run(p.Name+"/"+comp, func(t *testing.T) {
				if !Available(comp) {
					t.Skipf("no %s tool installed", comp)
				}
				ctx := context.Background()
				f := newFakeCache(t)
				paths := closure()
				up := &Client{Profile: p, BaseURL: f.URL()}
				if err := up.Upload(ctx, paths, UploadOptions{Compression: comp}); err != nil {
					t.Fatal(err)
				}
				want := wantUpload(p, paths, comp)
				diff(t, "upload, client side", Normalize(up.Trace(), f.Owner), want)
				diff(t, "upload, server side", Normalize(f.Entries(), f.Owner), want)
				for _, x := range paths {
					ni, _ := f.file("/" + hp(x.StorePath) + ".narinfo")
					if !bytes.Contains(ni, []byte("Compression: "+comp+"\n")) {
						t.Errorf("narinfo of %s:\n%s", x.StorePath, ni)
					}
				}

				f.Reset()
				down := &Client{Profile: p, BaseURL: f.URL()}
				got, err := down.Substitute(ctx, paths[0].StorePath)
				if err != nil {
					t.Fatal(err)
				}
				want = wantSubstitute(p, paths, narExt(comp), p.CopyFromHEADs)
				diff(t, "substitute, client side", Normalize(down.Trace(), f.Owner), want)
				diff(t, "substitute, server side", Normalize(f.Entries(), f.Owner), want)
				if len(got) != 3 {
					t.Fatalf("got %d paths", len(got))
				}
				for _, x := range paths {
					i := slices.IndexFunc(got, func(g Fetched) bool { return g.NarInfo.StorePath == x.StorePath })
					if i < 0 || !bytes.Equal(got[i].NAR, x.NAR) {
						t.Errorf("%s: NAR differs or missing", x.StorePath)
					}
				}
			})
		}
	}
}

// TestMetaCompression: 2.32+ compress narinfo and .ls bodies and say so
// in Content-Encoding; older profiles refuse the option.
func TestMetaCompression(t *testing.T) {
	for _, p := range Profiles {
		t.Run(p.Name, func(t *testing.T) {
			f := newFakeCache(t)
			c := &Client{Profile: p, BaseURL: f.URL()}
			err := c.Upload(context.Background(), closure(), UploadOptions{Compression: "zstd", WriteNARListing: true, NarinfoCompression: "zstd", LSCompression: "zstd"})
			if !p.MetaCompression {
				if err == nil {
					t.Fatal("accepted narinfo-compression")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var ce []string
			for _, e := range f.Entries() {
				if e.Method == "PUT" && (strings.HasSuffix(e.Path, ".narinfo") || strings.HasSuffix(e.Path, ".ls")) {
					ce = append(ce, e.ContentEncoding)
				}
				if e.Method == "PUT" && strings.HasPrefix(e.Path, "/nar/") && e.ContentEncoding != "" {
					t.Errorf("NAR PUT with Content-Encoding %q", e.ContentEncoding)
				}
			}
			if len(ce) != 6 || slices.ContainsFunc(ce, func(s string) bool { return s != "zstd" }) {
				t.Errorf("Content-Encoding on narinfo/ls PUTs: %q", ce)
			}
		})
	}
}

func statusOn(method, suffix string, code int) func(r *http.Request) int {
	return func(r *http.Request) int {
		if r.Method == method && strings.HasSuffix(r.URL.Path, suffix) {
			return code
		}
		return 0
	}
}

// TestStatus drives each profile into the status codes whose treatment
// differs between versions.
func TestStatus(t *testing.T) {
	ctx := context.Background()
	count := func(f *fakeCache, method, suffix string) int {
		n := 0
		for _, e := range f.Entries() {
			if e.Method == method && strings.HasSuffix(e.Path, suffix) {
				n++
			}
		}
		return n
	}
	for _, p := range Profiles {
		t.Run(p.Name, func(t *testing.T) {
			// 401 on nix-cache-info: absent (then PUT) up to 2.25 and in Lix.
			f := newFakeCache(t)
			f.set(func() { f.status = statusOn("GET", "/nix-cache-info", 401) })
			err := (&Client{Profile: p, BaseURL: f.URL()}).Upload(ctx, closure(), UploadOptions{Compression: "zstd"})
			if p.CacheInfoForbiddenAbsent != (err == nil) || p.CacheInfoForbiddenAbsent != (count(f, "PUT", "/nix-cache-info") == 1) {
				t.Errorf("401 on nix-cache-info: err %v, PUTs %d", err, count(f, "PUT", "/nix-cache-info"))
			}

			// 401 on narinfo queries: absent, except 2.35 (fatal).
			f = newFakeCache(t)
			f.set(func() { f.status = statusOn("GET", ".narinfo", 401) })
			err = (&Client{Profile: p, BaseURL: f.URL()}).Upload(ctx, closure(), UploadOptions{Compression: "zstd"})
			if p.Unauthorized != errors.Is(err, ErrStatus) || count(f, "GET", ".narinfo") != map[bool]int{true: 1, false: 3}[p.Unauthorized] {
				t.Errorf("401 on narinfo: err %v, GETs %d", err, count(f, "GET", ".narinfo"))
			}

			// 503 on a narinfo: retried, Tries requests in all, then fatal.
			f = newFakeCache(t)
			if err := (&Client{Profile: p, BaseURL: f.URL()}).Upload(ctx, closure(), UploadOptions{Compression: "zstd"}); err != nil {
				t.Fatal(err)
			}
			f.Reset()
			f.set(func() { f.status = statusOn("GET", ".narinfo", 503) })
			_, err = (&Client{Profile: p, BaseURL: f.URL()}).Substitute(ctx, closure()[0].StorePath)
			if !errors.Is(err, ErrStatus) || count(f, "GET", ".narinfo") != p.Tries {
				t.Errorf("503 on narinfo: err %v, GETs %d, want %d", err, count(f, "GET", ".narinfo"), p.Tries)
			}

			// 500 on a NAR PUT: Nix retries, Lix does not.
			f = newFakeCache(t)
			f.set(func() { f.status = statusOn("PUT", ".nar.zst", 500) })
			err = (&Client{Profile: p, BaseURL: f.URL()}).Upload(ctx, closure(), UploadOptions{Compression: "zstd"})
			want := 1
			if p.RetryPuts {
				want = p.Tries
			}
			if !errors.Is(err, ErrStatus) || count(f, "PUT", ".nar.zst") != want {
				t.Errorf("500 on NAR PUT: err %v, PUTs %d, want %d", err, count(f, "PUT", ".nar.zst"), want)
			}

			// 403 on a NAR PUT: fatal at once for everyone.
			f = newFakeCache(t)
			f.set(func() { f.status = statusOn("PUT", ".nar.zst", 403) })
			err = (&Client{Profile: p, BaseURL: f.URL()}).Upload(ctx, closure(), UploadOptions{Compression: "zstd"})
			if !errors.Is(err, ErrStatus) || count(f, "PUT", ".nar.zst") != 1 {
				t.Errorf("403 on NAR PUT: err %v", err)
			}
		})
	}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		profile string
		kind    Kind
		status  int
		want    Outcome
	}{
		{"Nix 2.8", KindNarInfo, 403, Absent},
		{"Nix 2.8", KindNarInfo, 401, Absent},
		{"Nix 2.35", KindNarInfo, 401, Fatal},
		{"Nix 2.35", KindNarInfo, 403, Absent},
		{"Nix 2.35", KindExists, 407, Fatal},
		{"Nix 2.8", KindNarInfo, 400, Fatal},
		{"Nix 2.8", KindNarInfo, 408, Retry},
		{"Nix 2.8", KindNarInfo, 429, Retry},
		{"Nix 2.8", KindNarInfo, 501, Fatal},
		{"Nix 2.8", KindNarInfo, 502, Retry},
		{"Nix 2.8", KindCacheInfo, 403, Absent},
		{"Nix 2.22-2.25", KindCacheInfo, 401, Absent},
		{"Nix 2.14-2.30", KindCacheInfo, 401, Fatal},
		{"Lix", KindCacheInfo, 401, Absent},
		{"Lix", KindPut, 503, Fatal},
		{"Nix 2.34", KindPut, 503, Retry},
		{"Nix 2.8", KindPut, 404, Fatal},
	} {
		p, ok := ProfileAt(tc.profile)
		if !ok {
			t.Fatalf("no profile %q", tc.profile)
		}
		if got := p.Classify(tc.kind, tc.status); got != tc.want {
			t.Errorf("%s %s %d: %s, want %s", tc.profile, tc.kind, tc.status, got, tc.want)
		}
	}
}

// TestResume cuts a NAR download half way. An identity body with
// Accept-Ranges resumes with Range: bytes=N- for every profile; a
// Content-Encoded one is fatal for Nix and resumed by Lix.
func TestResume(t *testing.T) {
	ctx := context.Background()
	for _, p := range Profiles {
		for _, encode := range []string{"", "zstd"} {
			t.Run(p.Name+"/encode="+encode, func(t *testing.T) {
				f := newFakeCache(t)
				paths := closure()
				if err := (&Client{Profile: p, BaseURL: f.URL()}).Upload(ctx, paths, UploadOptions{Compression: "none"}); err != nil {
					t.Fatal(err)
				}
				big := "/" + mustNarInfoURL(t, f, paths[2].StorePath)
				body, _ := f.file(big)
				f.set(func() { f.cut[big] = len(body) / 2 })
				f.set(func() { f.encode = encode })
				if encode != "" {
					enc, _ := Compress(ctx, encode, body)
					f.set(func() { f.cut[big] = len(enc) / 2 })
				}
				f.Reset()
				c := &Client{Profile: p, BaseURL: f.URL()}
				_, err := c.Substitute(ctx, paths[0].StorePath)
				var ranges []string
				for _, e := range c.Trace() {
					if e.Range != "" {
						ranges = append(ranges, e.Range+" ae="+e.AcceptEncoding)
					}
				}
				resumes := encode == "" || p.ResumeIgnoresEncoding
				if resumes {
					if err != nil || len(ranges) != 1 || !strings.HasPrefix(ranges[0], fmt.Sprintf("bytes=%d-", f.cutAt(big, body, encode))) {
						t.Fatalf("want one resume: err %v, ranges %q", err, ranges)
					}
					if hasAE := !strings.HasSuffix(ranges[0], "ae="); p.AcceptEncoding != "" && hasAE != p.AcceptEncOnRange {
						t.Errorf("Accept-Encoding on the resumed request: %q", ranges[0])
					}
				} else if !errors.Is(err, ErrCut) || len(ranges) != 0 {
					t.Fatalf("want a fatal cut: err %v, ranges %q", err, ranges)
				}
			})
		}
	}
}

func (f *fakeCache) cutAt(p string, body []byte, encode string) int {
	if encode != "" {
		enc, _ := Compress(context.Background(), encode, body)
		return len(enc) / 2
	}
	return len(body) / 2
}

func mustNarInfoURL(t *testing.T, f *fakeCache, storePath string) string {
	t.Helper()
	b, ok := f.file("/" + hp(storePath) + ".narinfo")
	if !ok {
		t.Fatalf("no narinfo for %s", storePath)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if u, ok := strings.CutPrefix(l, "URL: "); ok {
			return u
		}
	}
	t.Fatalf("no URL in %s", b)
	return ""
}

// TestContentEncodingDecode: which profiles decode which Content-Encoding
// on a narinfo.
func TestContentEncodingDecode(t *testing.T) {
	ctx := context.Background()
	for _, p := range Profiles {
		for _, ce := range []string{"zstd", "gzip", "xz", "identity"} {
			t.Run(p.Name+"/"+ce, func(t *testing.T) {
				f := newFakeCache(t)
				paths := closure()
				if err := (&Client{Profile: p, BaseURL: f.URL()}).Upload(ctx, paths, UploadOptions{Compression: "zstd"}); err != nil {
					t.Fatal(err)
				}
				f.set(func() { f.encode = ce })
				_, err := (&Client{Profile: p, BaseURL: f.URL()}).Substitute(ctx, paths[0].StorePath)
				sniffed := ce // the bytes really are ce, except identity's
				if ce == "identity" {
					sniffed = ""
				}
				want := p.Decodes(ce, sniffed)
				if want != (err == nil) || !want && !errors.Is(err, ErrDecode) {
					t.Errorf("Content-Encoding %s: err %v, want decoded=%v", ce, err, want)
				}
			})
		}
	}
}
