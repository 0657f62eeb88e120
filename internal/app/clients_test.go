package app_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/bos55/concordia/internal/syncbuf"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/bos55/concordia/internal/app"
	"github.com/bos55/concordia/internal/auth"
	"github.com/bos55/concordia/internal/config"
	"github.com/bos55/concordia/internal/nartest"
	"github.com/bos55/concordia/internal/nixreplay"
)

// The scenarios every client profile runs against a cache built from the
// DEFAULT configuration (plus an upload dir and a tokens file): upload a
// closure in the profile's order with each compression, substitute it,
// survive a cut NAR download where the profile resumes, and get a clear
// answer from a private cache with and without credentials. Real Nix 2.8
// agrees with its profile (internal/nixreplay's ground-truth test).

// clientCache is a cache from the default config, behind a handler that
// can cut NAR downloads and counts the NAR bytes it sent.
type clientCache struct {
	url              string
	writeTok, readTk string
	log              *syncbuf.Buffer
	// cut, when > 0, cuts the first plain GET of each NAR URL after that
	// many bytes (a dropped connection); cutDone remembers which.
	cut     int64
	mu      sync.Mutex
	cutDone map[string]bool
	narSent atomic.Int64

	// restartBeforeNarinfo, when set, closes the cache and opens it
	// again from the same config and directories just before the first
	// narinfo PUT: a restart in the middle of a NARs-first upload.
	restartBeforeNarinfo atomic.Bool
	t                    *testing.T
	cfg                  *config.Config
	app                  atomic.Pointer[app.App]
}

func newClientCache(t *testing.T, extra string, private bool) *clientCache {
	t.Helper()
	dir := t.TempDir()
	c := &clientCache{log: &syncbuf.Buffer{}, cutDone: map[string]bool{}}
	var wl, rl string
	c.writeTok, wl, _ = auth.Generate("ci", auth.Read|auth.Write)
	c.readTk, rl, _ = auth.Generate("laptop", auth.Read)
	tokens := filepath.Join(dir, "tokens")
	if err := os.WriteFile(tokens, []byte(wl+"\n"+rl+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, _ := parse(t, extra+fmt.Sprintf("\n[upload]\ndir = %q\ntokens_file = %q\nprivate = %t\n", filepath.Join(dir, "up"), tokens, private))
	cfg.CompressionCache.Dir = filepath.Join(dir, "zstd")
	c.t, c.cfg = t, cfg
	c.open()
	t.Cleanup(func() { c.app.Load().Close() })
	hs := httptest.NewServer(c.wrap())
	t.Cleanup(hs.Close)
	c.url = hs.URL
	return c
}

func (c *clientCache) open() {
	a, err := app.Open(context.Background(), c.cfg, slog.New(slog.NewTextHandler(c.log, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		c.t.Error(err)
		return
	}
	c.app.Store(a)
}

// restart closes the cache and opens it again, as a service restart does.
func (c *clientCache) restart() {
	c.app.Load().Close()
	c.open()
}

func (c *clientCache) wrap() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && strings.HasSuffix(r.URL.Path, ".narinfo") && c.restartBeforeNarinfo.CompareAndSwap(true, false) {
			c.restart()
		}
		h := c.app.Load().Server
		if r.Method != http.MethodGet || !strings.HasPrefix(r.URL.Path, "/nar/") {
			h.ServeHTTP(w, r)
			return
		}
		cw := &countingWriter{ResponseWriter: w, sent: &c.narSent, limit: -1}
		c.mu.Lock()
		if c.cut > 0 && r.Header.Get("Range") == "" && !c.cutDone[r.URL.Path] {
			c.cutDone[r.URL.Path] = true
			cw.limit = c.cut
		}
		c.mu.Unlock()
		h.ServeHTTP(cw, r)
	})
}

// countingWriter counts body bytes and, past limit (>= 0), drops the
// connection the way a broken network does: the client sees a body
// shorter than its Content-Length.
type countingWriter struct {
	http.ResponseWriter
	sent  *atomic.Int64
	limit int64
	n     int64
}

func (w *countingWriter) Write(p []byte) (int, error) {
	if w.limit >= 0 && w.n+int64(len(p)) > w.limit {
		p = p[:w.limit-w.n]
		w.ResponseWriter.Write(p)
		w.sent.Add(int64(len(p)))
		if f, ok := w.ResponseWriter.(http.Flusher); ok {
			f.Flush()
		}
		panic(http.ErrAbortHandler)
	}
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	w.sent.Add(int64(n))
	return n, err
}

func (w *countingWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// storePath makes a fresh store path name (a random hash part).
func storePath(name string) string {
	b := make([]byte, 20)
	rand.Read(b)
	return "/nix/store/" + nixbase32.EncodeToString(b) + "-" + name
}

// testClosure is c -> b -> a and c -> a, b the largest (so a 2.35 upload,
// largest NAR first, differs from dependency order) and compressible like
// real store contents: 1 MiB of the running test binary (machine code)
// and this package's source text.
func testClosure(t *testing.T) (top string, paths []nixreplay.Path) {
	t.Helper()
	var text []byte
	for _, f := range []string{"app.go", "maintenance.go", "app_test.go", "clients_test.go"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		text = append(text, b...)
	}
	exe, err := os.ReadFile("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	big := append(exe[:min(len(exe), 1<<20)], text...)
	a, b, c := storePath("client-a"), storePath("client-b"), storePath("client-c")
	return c, []nixreplay.Path{
		{StorePath: c, NAR: nartest.File([]byte(b + " " + a)), References: []string{a, b}},
		{StorePath: a, NAR: nartest.File([]byte("leaf " + a))},
		{StorePath: b, NAR: nartest.File(append([]byte(a+"\n"), big...)), References: []string{a}},
	}
}

// compressions a profile uploads with in these tests: every method Nix
// can write a NAR in (br, lz4 and lzip through the Debian tools, which
// the test script installs).
var compressions = []string{"none", "zstd", "xz", "bzip2", "gzip", "br", "lz4", "lzip"}

func TestClientsAgainstDefaultConfig(t *testing.T) {
	for _, p := range nixreplay.Profiles {
		t.Run(p.Name, func(t *testing.T) {
			t.Parallel()
			c := newClientCache(t, "", false)
			for _, comp := range compressions {
				t.Run(comp, func(t *testing.T) {
					ctx := context.Background()
					top, paths := testClosure(t)
					up := &nixreplay.Client{Profile: p, BaseURL: c.url, Login: "ci", Password: c.writeTok}
					if err := up.Upload(ctx, paths, nixreplay.UploadOptions{Compression: comp}); err != nil {
						t.Fatalf("upload: %v\n%s", err, traceOf(up))
					}
					down := &nixreplay.Client{Profile: p, BaseURL: c.url}
					got, err := down.Substitute(ctx, top)
					if err != nil || len(got) != 3 {
						t.Fatalf("substitute: %d paths, %v\n%s", len(got), err, traceOf(down))
					}
				})
			}
		})
	}
}

// TestClientsResumeCutDownloads: with the default configuration every
// profile gets every NAR URL form without Content-Encoding and with
// Accept-Ranges, so a download cut halfway resumes with Range and the
// substitution succeeds.
func TestClientsResumeCutDownloads(t *testing.T) {
	for _, p := range nixreplay.Profiles {
		t.Run(p.Name, func(t *testing.T) {
			t.Parallel()
			c := newClientCache(t, "", false)
			for _, comp := range []string{"none", "zstd"} {
				t.Run(comp, func(t *testing.T) {
					ctx := context.Background()
					top, paths := testClosure(t)
					up := &nixreplay.Client{Profile: p, BaseURL: c.url, Login: "ci", Password: c.writeTok}
					if err := up.Upload(ctx, paths, nixreplay.UploadOptions{Compression: comp}); err != nil {
						t.Fatalf("upload: %v", err)
					}
					c.mu.Lock()
					c.cut = 64 << 10
					c.mu.Unlock()
					down := &nixreplay.Client{Profile: p, BaseURL: c.url}
					got, err := down.Substitute(ctx, top)
					if err != nil || len(got) != 3 {
						t.Fatalf("substitute through a cut download: %d paths, %v\n%s", len(got), err, traceOf(down))
					}
					if !slices.ContainsFunc(down.Trace(), func(e nixreplay.Entry) bool { return e.Range != "" && e.Status == http.StatusPartialContent }) {
						t.Fatalf("no resumed (206) request: the cut did not happen or was not resumed\n%s", traceOf(down))
					}
				})
			}
		})
	}
}

// TestEnableCompressionTradeOff is why enable_compression is off by
// default: with it on, clients that send Accept-Encoding: zstd (every Nix
// from 2.14, and Lix) get uncompressed NAR URLs Content-Encoded, which
// saves bandwidth but cannot be resumed: the cut download fails the
// substitution (or, for Lix, which resumes anyway at an offset of the
// encoded stream, fails its hash check). Nix 2.8, which asks for no
// encoding, resumes. The bytes sent are logged for the README's numbers.
func TestEnableCompressionTradeOff(t *testing.T) {
	for _, on := range []bool{false, true} {
		t.Run(fmt.Sprintf("enable_compression=%t", on), func(t *testing.T) {
			for _, p := range nixreplay.Profiles {
				t.Run(p.Name, func(t *testing.T) {
					c := newClientCache(t, fmt.Sprintf("enable_compression = %t\n", on), false)
					ctx := context.Background()
					top, paths := testClosure(t)
					up := &nixreplay.Client{Profile: p, BaseURL: c.url, Login: "ci", Password: c.writeTok}
					if err := up.Upload(ctx, paths, nixreplay.UploadOptions{Compression: "none"}); err != nil {
						t.Fatalf("upload: %v", err)
					}
					down := &nixreplay.Client{Profile: p, BaseURL: c.url}
					c.narSent.Store(0)
					if _, err := down.Substitute(ctx, top); err != nil {
						t.Fatalf("substitute: %v", err)
					}
					var narSize int
					for _, x := range paths {
						narSize += len(x.NAR)
					}
					t.Logf("%s, enable_compression=%t: %d NAR bytes sent for %d bytes of NAR (%.2f)", p.Name, on, c.narSent.Load(), narSize, float64(c.narSent.Load())/float64(narSize))

					c.mu.Lock()
					c.cut = 64 << 10
					c.mu.Unlock()
					again := &nixreplay.Client{Profile: p, BaseURL: c.url}
					c.mu.Lock()
					clear(c.cutDone)
					c.mu.Unlock()
					_, err := again.Substitute(ctx, top)
					encoded := on && p.AcceptEncoding != ""
					switch {
					case !encoded && err != nil:
						t.Fatalf("cut download without Content-Encoding: %v\n%s", err, traceOf(again))
					case encoded && err == nil:
						t.Fatalf("cut Content-Encoded download succeeded; if clients now resume these, reconsider the default\n%s", traceOf(again))
					case encoded && !errors.Is(err, nixreplay.ErrCut) && !errors.Is(err, nixreplay.ErrVerify):
						t.Fatalf("cut Content-Encoded download: %v, want a cut or a hash mismatch", err)
					}
				})
			}
		})
	}
}

// TestClientsAgainstPrivateCache: with a read token every profile
// substitutes; without one every profile fails (never a silent success
// with nothing), and the server says why in its log, since clients cache
// such a miss for an hour.
func TestClientsAgainstPrivateCache(t *testing.T) {
	for _, p := range nixreplay.Profiles {
		t.Run(p.Name, func(t *testing.T) {
			c := newClientCache(t, "", true)
			ctx := context.Background()
			top, paths := testClosure(t)
			up := &nixreplay.Client{Profile: p, BaseURL: c.url, Login: "ci", Password: c.writeTok}
			if err := up.Upload(ctx, paths, nixreplay.UploadOptions{Compression: "zstd"}); err != nil {
				t.Fatalf("upload with a write token: %v\n%s", err, traceOf(up))
			}
			reader := &nixreplay.Client{Profile: p, BaseURL: c.url, Login: "laptop", Password: c.readTk}
			if got, err := reader.Substitute(ctx, top); err != nil || len(got) != 3 {
				t.Fatalf("substitute with a read token: %d paths, %v\n%s", len(got), err, traceOf(reader))
			}
			anon := &nixreplay.Client{Profile: p, BaseURL: c.url}
			if _, err := anon.Substitute(ctx, top); err == nil {
				t.Fatalf("substitute without credentials succeeded\n%s", traceOf(anon))
			}
			if log := c.log.String(); !strings.Contains(log, "request refused") || !strings.Contains(log, "credentials required") {
				t.Fatalf("the server did not log why it refused:\n%s", log)
			}
			stranger := &nixreplay.Client{Profile: p, BaseURL: c.url, Login: "x", Password: "not-a-token"}
			if _, err := stranger.Substitute(ctx, top); err == nil {
				t.Fatal("substitute with an unknown token succeeded")
			}
			if log := c.log.String(); !strings.Contains(log, "unknown or revoked token") {
				t.Fatalf("the server did not log the unknown token:\n%s", log)
			}
		})
	}
}

// TestNARsFirstUploadAcrossRestart: Nix 2.35 sends every NAR of a closure
// before any narinfo; the cache restarts between the two (a deploy of the
// cache, a crash), and every narinfo is still accepted: the NARs waiting
// for them survived. The closure then substitutes and verifies.
func TestNARsFirstUploadAcrossRestart(t *testing.T) {
	for _, p := range nixreplay.Profiles {
		if p.Order != nixreplay.OrderNARsFirst {
			continue
		}
		t.Run(p.Name, func(t *testing.T) {
			c := newClientCache(t, "", false)
			ctx := context.Background()
			top, paths := testClosure(t)
			c.restartBeforeNarinfo.Store(true)
			up := &nixreplay.Client{Profile: p, BaseURL: c.url, Login: "ci", Password: c.writeTok}
			if err := up.Upload(ctx, paths, nixreplay.UploadOptions{Compression: "zstd"}); err != nil {
				t.Fatalf("upload across a restart: %v\n%s", err, traceOf(up))
			}
			if c.restartBeforeNarinfo.Load() {
				t.Fatal("the cache was not restarted")
			}
			down := &nixreplay.Client{Profile: p, BaseURL: c.url}
			if got, err := down.Substitute(ctx, top); err != nil || len(got) != 3 {
				t.Fatalf("substitute: %d paths, %v", len(got), err)
			}
		})
	}
}

func traceOf(c *nixreplay.Client) string {
	var b strings.Builder
	for _, e := range c.Trace() {
		fmt.Fprintf(&b, "  %s %s %d %s ae=%q ce=%q range=%q %s\n", e.Method, e.Path, e.Status, e.Outcome, e.AcceptEncoding, e.ContentEncoding, e.Range, e.Err)
	}
	return b.String()
}
