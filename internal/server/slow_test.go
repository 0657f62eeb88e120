package server_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/server"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/upload"
	"github.com/bos55/concordia/pkg/narinfo"
)

// slowEnv is a public cache with uploads whose connections are counted.
type slowEnv struct {
	srv       *server.Server
	url, addr string
	ts        *tokenSet
	up        *upload.Store
	local     *fakeStore
	open      atomic.Int64 // connections accepted and not yet closed
}

// smallBufListener gives each accepted connection a small send buffer, so
// a client that stops reading blocks the server's writes after a few KiB
// instead of after the megabytes kernel autotuning would buffer.
type smallBufListener struct{ net.Listener }

func (l smallBufListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetWriteBuffer(16 << 10)
	}
	return c, err
}

func newSlowEnv(t *testing.T, mutate func(*server.Options)) *slowEnv {
	t.Helper()
	e := &slowEnv{ts: newTokenSet(t), local: newFakeStore()}
	var err error
	e.up, err = upload.Open(context.Background(), t.TempDir(), upload.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.up.Close() })
	sk, _, _ := narinfo.GenerateKey("slow-test-1")
	opts := server.Options{
		Stores: []store.Store{e.up, e.local},
		Upload: &server.Uploads{Store: e.up, Tokens: e.ts.toks},
		Keys:   []narinfo.SecretKey{sk},
	}
	if mutate != nil {
		mutate(&opts)
	}
	srv, err := server.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	e.srv = srv
	hs := httptest.NewUnstartedServer(srv)
	hs.Listener = smallBufListener{hs.Listener}
	hs.Config.ConnState = func(c net.Conn, st http.ConnState) {
		switch st {
		case http.StateNew:
			e.open.Add(1)
		case http.StateClosed, http.StateHijacked:
			e.open.Add(-1)
		}
	}
	hs.Start()
	t.Cleanup(hs.Close)
	e.url, e.addr = hs.URL, hs.Listener.Addr().String()
	return e
}

// settle waits until cond holds, up to 15 s.
func settle(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 15s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// rawRequest sends a request head with a declared body length and the
// first bytes of the body, and returns the connection.
func rawRequest(t *testing.T, addr, method, path, auth string, declared int, first []byte) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Error(err)
		return nil
	}
	head := fmt.Sprintf("%s %s HTTP/1.1\r\nHost: cache\r\nContent-Length: %d\r\n", method, path, declared)
	if auth != "" {
		head += "Authorization: Bearer " + auth + "\r\n"
	}
	if _, err := c.Write(append([]byte(head+"\r\n"), first...)); err != nil {
		t.Error(err)
	}
	return c
}

// TestSlowUnauthenticatedPuts plays 200 clients that each declare a body
// (1 MiB, or 64 KiB: under net/http's own 256 KiB discard limit) on a write
// route, send 3 bytes and then nothing, never closing. Each gets its
// 401 (or 403 for a token without the permission) without the server
// waiting for the body, the server ends every one of those connections,
// the goroutines go away, and an honest client is served meanwhile.
func TestSlowUnauthenticatedPuts(t *testing.T) {
	e := newSlowEnv(t, nil)
	p := newUpPath(t, "slow-honest", []byte("honest"))
	// Warm up (the first request starts a few long-lived goroutines).
	if code, _, _ := call(t, "GET", e.url+"/nix-cache-info", "", nil); code != 200 {
		t.Fatal(code)
	}
	settle(t, "warm-up connection closed", func() bool { http.DefaultClient.CloseIdleConnections(); return e.open.Load() == 0 })
	base := runtime.NumGoroutine()

	byName := map[string][]struct{ method, path string }{
		"put-nar":         {{"PUT", "/nar/" + p.fileName}},
		"put-narinfo":     {{"PUT", "/" + p.hash + ".narinfo"}},
		"put-ls":          {{"PUT", "/" + p.hash + ".ls"}},
		"put-log":         {{"PUT", "/log/" + p.hash + "-x.drv"}},
		"put-realisation": {{"PUT", "/realisations/sha256:" + strings.Repeat("ab", 32) + "!out.doi"}},
		"put-build-trace": {{"PUT", "/build-trace-v2/" + p.hash + "-x.drv/out.doi"}},
		"put-cache-info":  {{"PUT", "/nix-cache-info"}},
		"put-debuginfo":   {{"PUT", "/debuginfo/" + strings.Repeat("ab", 20)}},
		"pin":             {{"POST", "/api/pins/" + p.hash}, {"PUT", "/api/pins/" + p.hash}},
		"unpin":           {{"DELETE", "/api/pins/" + p.hash}},
		"gc":              {{"POST", "/api/gc"}},
		"verify":          {{"POST", "/api/verify"}},
		"forget":          {{"DELETE", "/api/tombstones/" + p.hash}},
		"put-deploy":      {{"PUT", "/api/deploys/d-slow"}},
	}
	var routes []struct{ method, path string }
	for _, rt := range server.Routes(e.srv) {
		for _, m := range rt.Methods {
			if m == "PUT" || m == "POST" || m == "DELETE" {
				if _, ok := byName[rt.Name]; !ok {
					t.Errorf("write route %q (%s %s) is not attacked here: add it", rt.Name, m, rt.Path)
				}
			}
		}
	}
	for _, rs := range byName {
		routes = append(routes, rs...)
	}
	const n = 200
	var wg sync.WaitGroup
	var answered, closed atomic.Int64
	errs := make(chan error, n)
	for i := range n {
		rt := routes[i%len(routes)]
		declared := 1 << 20
		if i%2 == 1 {
			declared = 64 << 10
		}
		tok, want := "", "401"
		if i%3 == 2 {
			tok, want = e.ts.read, "403"
		}
		c := rawRequest(t, e.addr, rt.method, rt.path, tok, declared, []byte("abc"))
		if c == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			br := bufio.NewReader(c)
			status, err := br.ReadString('\n')
			if err != nil || !strings.HasPrefix(status, "HTTP/1.1 "+want) {
				errs <- fmt.Errorf("%s %s: status %q %v, want %s", rt.method, rt.path, status, err, want)
				return
			}
			answered.Add(1)
			// The server must end the connection: we never send more.
			if _, err := io.Copy(io.Discard, br); err != nil && !errors.Is(err, syscall.ECONNRESET) {
				errs <- fmt.Errorf("%s %s: connection not closed by the server: %v", rt.method, rt.path, err)
				return
			}
			closed.Add(1)
		}()
	}
	// An honest client, meanwhile: a read and an authenticated upload.
	if code, _, _ := call(t, "GET", e.url+"/nix-cache-info", "", nil); code != 200 {
		t.Errorf("honest read during the attack: %d", code)
	}
	if code, body, _ := call(t, "PUT", e.url+"/nar/"+p.fileName, e.ts.write, p.file); code != 200 {
		t.Errorf("honest upload during the attack: %d %s", code, body)
	}
	if code, body, _ := call(t, "PUT", e.url+"/"+p.hash+".narinfo", e.ts.write, []byte(p.info.String())); code != 200 {
		t.Errorf("honest narinfo during the attack: %d %s", code, body)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if answered.Load() != n || closed.Load() != n {
		t.Fatalf("%d of %d answered, %d closed by the server", answered.Load(), n, closed.Load())
	}
	// Routes that do not exist, or not for that method, never read the
	// body either.
	for _, rq := range []struct{ method, path, want string }{
		{"PUT", "/no/such/route", "404"}, {"PATCH", "/nix-cache-info", "405"}, {"PUT", "/a/../b", "404"},
	} {
		c := rawRequest(t, e.addr, rq.method, rq.path, "", 64<<10, []byte("abc"))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(c)
		status, err := br.ReadString('\n')
		if err != nil || !strings.HasPrefix(status, "HTTP/1.1 "+rq.want) {
			t.Errorf("%s %s: %q %v", rq.method, rq.path, status, err)
		}
		if _, err := io.Copy(io.Discard, br); err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("%s %s: connection not closed by the server: %v", rq.method, rq.path, err)
		}
		c.Close()
	}
	http.DefaultClient.CloseIdleConnections()
	settle(t, "every connection closed on the server", func() bool { return e.open.Load() == 0 })
	settle(t, "goroutines released", func() bool { return runtime.NumGoroutine() <= base+5 })
	if code, _, _ := call(t, "GET", e.url+"/"+p.hash+".narinfo", "", nil); code != 200 {
		t.Errorf("the honest upload is not served: %d", code)
	}
}

// TestSlowAuthenticatedPut: a client with a valid write token that stops
// sending its body is cut after the read progress timeout (408, connection
// closed, nothing kept); one that sends slowly but keeps sending, for
// several times that timeout, completes.
func TestSlowAuthenticatedPut(t *testing.T) {
	const progress = 300 * time.Millisecond
	e := newSlowEnv(t, func(o *server.Options) { o.ReadProgress = progress })
	random := make([]byte, 32<<10)
	rand.Read(random)
	p := newUpPath(t, "slow-auth", random)

	c := rawRequest(t, e.addr, "PUT", "/nar/"+p.fileName, e.ts.write, len(p.file), p.file[:3])
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	status, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(status, "HTTP/1.1 408") {
		t.Fatalf("stalled upload: %q %v", status, err)
	}
	if _, err := io.Copy(io.Discard, br); err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("stalled upload's connection left open: %v", err)
	}
	if ok, _ := e.up.HasNAR(context.Background(), p.fileName); ok {
		t.Fatal("part of a stalled upload was kept")
	}

	// The same upload, 4 KiB every 100 ms (about 1 s in all, three times
	// the progress timeout): it moves, so it is never cut.
	c2 := rawRequest(t, e.addr, "PUT", "/nar/"+p.fileName, e.ts.write, len(p.file), nil)
	defer c2.Close()
	for rest := p.file; len(rest) > 0; {
		k := min(4096, len(rest))
		if _, err := c2.Write(rest[:k]); err != nil {
			t.Fatalf("slow upload cut: %v", err)
		}
		rest = rest[k:]
		time.Sleep(100 * time.Millisecond)
	}
	c2.SetReadDeadline(time.Now().Add(10 * time.Second))
	status, err = bufio.NewReader(c2).ReadString('\n')
	if err != nil || !strings.HasPrefix(status, "HTTP/1.1 200") {
		t.Fatalf("slow but moving upload: %q %v", status, err)
	}
}

// slowClient reads with a small receive buffer (set before connecting),
// so the server's writes block as soon as the reader falls behind.
func slowClient() *http.Client {
	d := &net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) {
			syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 16<<10)
		})
	}}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext, DisableCompression: true}}
}

// TestSlowDownloads: with a 1 s write progress timeout, a client reading a
// 6 MiB NAR at 64 KiB every 100 ms (for 3 s, so for three timeouts, with
// the server's writes blocked most of the time) gets all of it, byte for
// byte; one that stops reading for 3 s is dropped (the server's writes
// fail, the response ends short). Both for a NAR streamed from a store and
// for an uploaded NAR file (sent with sendfile).
func TestSlowDownloads(t *testing.T) {
	e := newSlowEnv(t, func(o *server.Options) { o.WriteProgress = time.Second })
	big := make([]byte, 6<<20)
	rand.Read(big)
	lp := e.local.addTree(t, hashOf("slow-download"), "big", map[string]string{"f": string(big)})
	up := newUpPath(t, "slow-download-file", big)
	ctx := context.Background()
	if _, err := e.up.PutNAR(ctx, up.fileName, bytes.NewReader(up.file)); err != nil {
		t.Fatal(err)
	}
	if err := e.up.PutNarInfo(ctx, up.hash, strings.NewReader(up.info.String())); err != nil {
		t.Fatal(err)
	}
	lh := hashOf("slow-download")
	targets := map[string][]byte{
		"/nar/" + lh + "-" + narinfo.SHA256(lp.info.NarHash).String()[7:] + ".nar": lp.nar,
		"/nar/" + up.fileName: up.file,
	}
	for url, want := range targets {
		t.Run("slow reader "+url[:12], func(t *testing.T) {
			resp, err := slowClient().Get(e.url + url)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			h := sha256.New()
			buf := make([]byte, 64<<10)
			for start := time.Now(); time.Since(start) < 3*time.Second; {
				n, err := io.ReadFull(resp.Body, buf)
				h.Write(buf[:n])
				if err != nil {
					t.Fatalf("slow reader cut after %v: %v", time.Since(start), err)
				}
				time.Sleep(100 * time.Millisecond)
			}
			if _, err := io.Copy(h, resp.Body); err != nil {
				t.Fatalf("rest of the body: %v", err)
			}
			if sum := sha256.Sum256(want); !bytes.Equal(h.Sum(nil), sum[:]) {
				t.Fatal("slowly read body differs")
			}
		})
		t.Run("stalled reader "+url[:12], func(t *testing.T) {
			resp, err := slowClient().Get(e.url + url)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if _, err := io.ReadFull(resp.Body, make([]byte, 64<<10)); err != nil {
				t.Fatal(err)
			}
			time.Sleep(3 * time.Second)
			n, err := io.Copy(io.Discard, resp.Body)
			if err == nil || n+64<<10 >= int64(len(want)) {
				t.Fatalf("a reader that stopped got the whole body (%d bytes, %v)", n+64<<10, err)
			}
		})
	}
	settle(t, "dropped connections closed", func() bool { return e.open.Load() <= 2 })
}

// TestSlowClientsHTTP2 repeats the slow-client cases over HTTP/2 (TLS,
// through Run), where a deadline is a timer that resets the stream: a
// handler that is busy for longer than the write timeout before it writes
// is not cut (on HTTP/1 either), a slow reader gets the whole NAR, one
// that stops reading is dropped, and an upload that stops sending is 408.
func TestSlowClientsHTTP2(t *testing.T) {
	const wd, rd = time.Second, 300 * time.Millisecond
	e := newSlowEnv(t, func(o *server.Options) { o.WriteProgress, o.ReadProgress = wd, rd })
	big := make([]byte, 12<<20)
	rand.Read(big)
	h := hashOf("slow-h2")
	lp := e.local.addTree(t, h, "big", map[string]string{"f": string(big)})
	narURL := "/nar/" + h + "-" + narinfo.SHA256(lp.info.NarHash).String()[7:] + ".nar"

	certFile, keyFile, pool := selfSigned(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- e.srv.Run(ctx, smallBufListener{ln}, server.RunOptions{TLSCert: certFile, TLSKey: keyFile, ShutdownTimeout: time.Second})
	}()
	t.Cleanup(func() { cancel(); <-done })
	base := "https://" + ln.Addr().String()
	client := func() *http.Client {
		return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true, DisableCompression: true}}
	}
	get := func(t *testing.T, c *http.Client, url string) *http.Response {
		t.Helper()
		resp, err := c.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		if resp.ProtoMajor != 2 && strings.HasPrefix(url, "https") {
			t.Fatalf("not HTTP/2: %s", resp.Proto)
		}
		return resp
	}

	t.Run("busy handler", func(t *testing.T) {
		for _, url := range []string{base + narURL, e.url + narURL} {
			lp.entered, lp.block = make(chan struct{}, 1), make(chan struct{})
			go func() { <-lp.entered; time.Sleep(2*wd + wd/2); close(lp.block) }()
			resp := get(t, client(), url)
			got, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || !bytes.Equal(got, lp.nar) {
				t.Fatalf("%s: a handler busy for longer than the write timeout was cut: %d bytes, %v", url[:5], len(got), err)
			}
		}
		lp.entered, lp.block = nil, nil
	})
	t.Run("slow reader", func(t *testing.T) {
		resp := get(t, client(), base+narURL)
		defer resp.Body.Close()
		sum := sha256.New()
		buf := make([]byte, 64<<10)
		for start := time.Now(); time.Since(start) < 3*wd; {
			n, err := io.ReadFull(resp.Body, buf)
			sum.Write(buf[:n])
			if err != nil {
				t.Fatalf("slow reader cut: %v", err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if _, err := io.Copy(sum, resp.Body); err != nil {
			t.Fatal(err)
		}
		if want := sha256.Sum256(lp.nar); !bytes.Equal(sum.Sum(nil), want[:]) {
			t.Fatal("slowly read body differs")
		}
	})
	t.Run("stalled reader", func(t *testing.T) {
		resp := get(t, client(), base+narURL)
		defer resp.Body.Close()
		io.ReadFull(resp.Body, make([]byte, 64<<10))
		time.Sleep(3 * wd)
		n, err := io.Copy(io.Discard, resp.Body)
		if err == nil || n+64<<10 >= int64(len(lp.nar)) {
			t.Fatalf("a reader that stopped got the whole body (%d bytes, %v)", n+64<<10, err)
		}
	})
	t.Run("stalled upload", func(t *testing.T) {
		p := newUpPath(t, "slow-h2-up", []byte("h2 upload"))
		pr, pw := io.Pipe()
		defer pw.Close()
		req, _ := http.NewRequest("PUT", base+"/nar/"+p.fileName, pr)
		req.ContentLength = int64(len(p.file))
		req.Header.Set("Authorization", "Bearer "+e.ts.write)
		go pw.Write(p.file[:3])
		resp, err := client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 408 {
			t.Fatalf("stalled upload over HTTP/2: %d", resp.StatusCode)
		}
	})
}
