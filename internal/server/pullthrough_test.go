package server_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	closurecheck "github.com/bos55/concordia/internal/closure"
	"github.com/bos55/concordia/internal/nartest"
	"github.com/bos55/concordia/internal/server"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/pullthrough"
	"github.com/bos55/concordia/internal/store/upload"
	"github.com/bos55/concordia/internal/upstream"
	"github.com/bos55/concordia/internal/upstream/upstreamtest"
	"github.com/bos55/concordia/pkg/narinfo"
)

// pullEnv is an upload server with one pull-through upstream.
type pullEnv struct {
	*upEnv
	up  *upstreamtest.Server
	key narinfo.SecretKey // the upstream's
	pub narinfo.PublicKey
}

func newPullEnv(t *testing.T) *pullEnv {
	t.Helper()
	sk, pk := upstreamtest.Key(t, "cache.nixos.org-1")
	e := &pullEnv{up: upstreamtest.New(t), key: sk, pub: pk}
	set, err := upstream.New(upstream.Options{Upstreams: []upstream.Config{{
		Name: "nixos", URL: e.up.URL, Keys: []narinfo.PublicKey{pk}, Timeout: 300 * time.Millisecond, PullThrough: true}}})
	if err != nil {
		t.Fatal(err)
	}
	check := pullthrough.Checker(set, upstreamtest.StoreDir)
	e.upEnv = newUpEnvOpts(t, t.TempDir(), false, nil, true, func(o *server.Options) {
		p, err := pullthrough.New(pullthrough.Options{Upstreams: set, Into: o.Upload.Store.(store.Adopter), TempDir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		o.Upstream, o.UpstreamCheck = p, check
	}, upload.Options{Others: []store.Store{check}})
	return e
}

func (e *pullEnv) path(t *testing.T, name, contents string, refs ...string) *upstreamtest.Path {
	p := upstreamtest.NewPath(t, e.key, name, nartest.File([]byte(contents)), "zstd", refs...)
	e.up.Add(p)
	return p
}

func (e *pullEnv) narinfo(t *testing.T, hash, token string) (int, *narinfo.NarInfo) {
	t.Helper()
	code, body := e.do(t, "GET", "/"+hash+".narinfo", token, nil)
	if code != 200 {
		return code, nil
	}
	ni, err := narinfo.Parse(strings.NewReader(body))
	if err != nil {
		t.Fatalf("narinfo: %v\n%s", err, body)
	}
	return code, ni
}

// TestPullThroughServes: a path only the upstream has is served with the
// upstream's signature and the cache's, from a narinfo lookup that
// downloads nothing; its NAR is the upstream's file; once pulled it is
// served with the upstream stopped.
func TestPullThroughServes(t *testing.T) {
	e := newPullEnv(t)
	p := e.path(t, "hello-2.12", "hello")
	code, ni := e.narinfo(t, p.HashPart(), "")
	if code != 200 {
		t.Fatalf("narinfo: %d", code)
	}
	if _, ok := ni.Verify([]narinfo.PublicKey{e.pub}); !ok {
		t.Errorf("the upstream's signature is not passed through: %v", ni.Sigs)
	}
	if _, ok := ni.Verify([]narinfo.PublicKey{e.upEnv.key.Public()}); !ok {
		t.Errorf("not signed by the cache: %v", ni.Sigs)
	}
	if n := e.up.NARRequests(p.HashPart()); n != 0 {
		t.Fatalf("a narinfo lookup downloaded the NAR")
	}
	code, body := e.do(t, "GET", "/"+ni.URL, "", nil)
	if code != 200 || body != string(p.File) {
		t.Fatalf("NAR: %d, %d bytes", code, len(body))
	}
	e.up.Close()
	if code, again := e.narinfo(t, p.HashPart(), ""); code != 200 || again.URL != ni.URL {
		t.Fatalf("narinfo with the upstream stopped: %d %+v", code, again)
	}
	if code, body := e.do(t, "GET", "/"+ni.URL, "", nil); code != 200 || body != string(p.File) {
		t.Fatalf("NAR with the upstream stopped: %d, %d bytes", code, len(body))
	}
}

// TestPullThroughUnreachableIsAMiss: a hanging or failing upstream costs
// a reader a 404, never a 5xx, and a writer's probe the same.
func TestPullThroughUnreachableIsAMiss(t *testing.T) {
	for _, fault := range []upstreamtest.Fault{upstreamtest.Hang, upstreamtest.Status500, upstreamtest.Status503, upstreamtest.Status429,
		upstreamtest.Unsigned, upstreamtest.WrongSignature, upstreamtest.WrongPath, upstreamtest.Malformed} {
		e := newPullEnv(t)
		p := e.path(t, "x", "x")
		e.up.SetFault("", upstreamtest.NarInfo, fault)
		for _, tok := range []string{"", e.writeTok} {
			if code, _ := e.narinfo(t, p.HashPart(), tok); code != 404 {
				t.Errorf("fault %d, write token %v: narinfo %d, want 404", fault, tok != "", code)
			}
		}
	}
}

// TestPullThroughBadNARFailsTheTransfer: a NAR that is not the signed one
// reaches no client as a complete body, and is not kept.
func TestPullThroughBadNARFailsTheTransfer(t *testing.T) {
	e := newPullEnv(t)
	p := e.path(t, "victim", strings.Repeat("payload", 1<<15))
	_, ni := e.narinfo(t, p.HashPart(), "")
	e.up.SetFault(p.HashPart(), upstreamtest.NAR, upstreamtest.WrongNarHash)
	resp, err := http.Get(e.url + "/" + ni.URL)
	if err == nil {
		b, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		if rerr == nil && resp.StatusCode == 200 {
			t.Fatalf("a wrong NAR was sent whole (%d bytes)", len(b))
		}
	}
	if _, err := e.up2(t).PathInfo(context.Background(), p.HashPart()); err == nil {
		t.Fatalf("the wrong NAR was kept")
	}
}

func (e *pullEnv) up2(t *testing.T) *upload.Store { return e.upEnv.up }

// TestPullThroughSingleFlight: 16 clients of one cold NAR, one upstream
// request, 16 whole bodies.
func TestPullThroughSingleFlight(t *testing.T) {
	e := newPullEnv(t)
	p := e.path(t, "big", strings.Repeat("0123456789", 1<<17))
	_, ni := e.narinfo(t, p.HashPart(), "")
	release := e.up.Hold()
	var wg sync.WaitGroup
	bodies := make([][]byte, 16)
	for i := range bodies {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Get(e.url + "/" + ni.URL)
			if err != nil {
				return
			}
			defer resp.Body.Close()
			if resp.StatusCode == 200 {
				bodies[i], _ = io.ReadAll(resp.Body)
			}
		}()
	}
	for e.up.NARRequests(p.HashPart()) == 0 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // let the others arrive while it is held
	release()
	wg.Wait()
	for i, b := range bodies {
		if !bytes.Equal(b, p.File) {
			t.Errorf("client %d got %d bytes", i, len(b))
		}
	}
	if n := e.up.NARRequests(p.HashPart()); n != 1 {
		t.Errorf("%d upstream requests for 16 clients", n)
	}
}

// TestWriterSkipsUpstreamPaths: a write token's probe of an upstream path
// answers 200 without a download, and a narinfo referring to it is
// accepted although it was never uploaded.
func TestWriterSkipsUpstreamPaths(t *testing.T) {
	e := newPullEnv(t)
	lib := e.path(t, "glibc-2.40", "libc")
	if code, _ := e.narinfo(t, lib.HashPart(), e.writeTok); code != 200 {
		t.Fatalf("writer probe: %d", code)
	}
	if n := e.up.NARRequests(lib.HashPart()); n != 0 {
		t.Fatalf("a writer's probe downloaded the NAR")
	}
	libBase := lib.StorePath()[len("/nix/store/"):]
	app := newUpPath(t, "app", []byte("app"), libBase)
	e.upload(t, app)
	if n := e.up.NARRequests(lib.HashPart()); n != 0 {
		t.Errorf("the closure check downloaded the reference's NAR")
	}
}

// TestUploadCannotPoisonUpstreamPath: an upload of a path the upstream
// has, with another NAR, is refused naming both hashes, and the path is
// still the upstream's; with the upstream unreachable such an upload is
// refused (503), not accepted unchecked.
func TestUploadCannotPoisonUpstreamPath(t *testing.T) {
	e := newPullEnv(t)
	lib := e.path(t, "glibc-2.40", "the real libc")
	evil := newUpPath(t, "glibc-2.40", []byte("a backdoored libc"))
	evil.info.StorePath = lib.StorePath()
	evil.hash = lib.HashPart()
	if code, msg := e.do(t, "PUT", "/nar/"+evil.fileName, e.writeTok, evil.file); code != 200 {
		t.Fatalf("PUT NAR: %d %s", code, msg)
	}
	code, msg := e.do(t, "PUT", "/"+evil.hash+".narinfo", e.writeTok, []byte(evil.info.String()))
	if code != 409 || !strings.Contains(msg, lib.NarInfo.NarHash.String()) || !strings.Contains(msg, evil.info.NarHash.String()) {
		t.Fatalf("poisoning upload: %d %s", code, msg)
	}
	_, ni := e.narinfo(t, lib.HashPart(), "")
	if ni == nil || ni.NarHash.String() != lib.NarInfo.NarHash.String() {
		t.Fatalf("the path changed: %+v", ni)
	}
	other := e.path(t, "openssl", "the real openssl")
	e.up.SetFault(other.HashPart(), upstreamtest.NarInfo, upstreamtest.Status503)
	evil2 := newUpPath(t, "openssl", []byte("bad"))
	evil2.info.StorePath, evil2.hash = other.StorePath(), other.HashPart()
	e.do(t, "PUT", "/nar/"+evil2.fileName, e.writeTok, evil2.file)
	if code, msg := e.do(t, "PUT", "/"+evil2.hash+".narinfo", e.writeTok, []byte(evil2.info.String())); code != 503 {
		t.Fatalf("upload while the upstream cannot be asked: %d %s", code, msg)
	}
}

// TestDeployCheckTrustsUpstreamKeys: the deployer's closure check of a
// system whose closure is part uploaded, part upstream passes for a node
// that trusts the cache's key, and sees the upstream paths signed for a
// node that trusts only the upstream's key; an upstream path no trusted
// key signed is reported unsigned, never skipped.
func TestDeployCheckTrustsUpstreamKeys(t *testing.T) {
	e := newPullEnv(t)
	lib := e.path(t, "glibc-2.40", "libc")
	sys := newUpPath(t, "nixos-system", []byte("system"), lib.StorePath()[len("/nix/store/"):])
	e.upload(t, sys)
	ctx := context.Background()
	res, err := (&closurecheck.Checker{Cache: e.url, Trusted: []narinfo.PublicKey{e.upEnv.key.Public()}}).Check(ctx, sys.info.StorePath)
	if err != nil || !res.OK() || res.Paths != 2 {
		t.Fatalf("trusting the cache's key: %+v %v", res, err)
	}
	res, err = (&closurecheck.Checker{Cache: e.url, Trusted: []narinfo.PublicKey{e.pub}}).Check(ctx, sys.info.StorePath)
	if err != nil || len(res.Missing) != 0 || len(res.Unsigned) != 1 || res.Unsigned[0] != sys.info.StorePath {
		t.Fatalf("trusting the upstream's key only: %+v %v (want only the uploaded path unsigned)", res, err)
	}
}

// TestLandingShowsUpstreams: the landing page names each upstream and
// whether it is pulled through.
func TestLandingShowsUpstreams(t *testing.T) {
	e := newUpEnvWith(t, t.TempDir(), false, nil, true, func(o *server.Options) {
		o.Upstreams = []server.UpstreamInfo{{Name: "nixos", URL: "https://cache.nixos.org", Keys: []string{"cache.nixos.org-1:xyz"}, PullThrough: true}}
	})
	code, body := e.do(t, "GET", "/", "", nil)
	for _, want := range []string{"https://cache.nixos.org", "cache.nixos.org-1:xyz", "pulled through"} {
		if code != 200 || !strings.Contains(body, want) {
			t.Errorf("landing page (%d) lacks %q", code, want)
		}
	}
}

// TestPinPullsUpstreamClosure: a pin asking for it pulls the pinned
// system's upstream paths into the upload store, where the pin keeps
// them through GC, so the system is served whole with the upstream gone.
func TestPinPullsUpstreamClosure(t *testing.T) {
	e := newPullEnv(t)
	lib := e.path(t, "glibc-2.40", "libc")
	tool := e.path(t, "coreutils", "tools", lib.StorePath()[len("/nix/store/"):])
	sys := newUpPath(t, "nixos-system", []byte("system"), tool.StorePath()[len("/nix/store/"):])
	e.upload(t, sys)
	body := fmt.Sprintf(`{"storePath": %q, "upstream": true}`, sys.info.StorePath)
	if code, msg := e.do(t, "POST", "/api/pins/"+sys.hash, e.pinTok, []byte(body)); code != 200 || !strings.Contains(msg, "pulling") {
		t.Fatalf("pin: %d %s", code, msg)
	}
	ctx := context.Background()
	deadline := time.Now().Add(20 * time.Second)
	for _, p := range []*upstreamtest.Path{lib, tool} {
		for {
			info, err := e.up2(t).PathInfo(ctx, p.HashPart())
			if err == nil {
				if info.Origin != "nixos" {
					t.Errorf("%s kept with origin %q", p.StorePath(), info.Origin)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s not pulled: %v", p.StorePath(), err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	rep, err := e.up2(t).GCWith(ctx, store.Policy{MaxSize: 1}, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Deleted) != 0 {
		t.Errorf("GC deleted %v of a pinned closure", rep.Deleted)
	}
	e.up.Close()
	for _, p := range []*upstreamtest.Path{lib, tool} {
		if code, _ := e.narinfo(t, p.HashPart(), ""); code != 200 {
			t.Errorf("%s with the upstream gone: %d", p.StorePath(), code)
		}
	}
}
