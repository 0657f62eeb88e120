package server_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/bos55/concordia/internal/auth"
	"github.com/bos55/concordia/internal/server"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/upload"
	"github.com/bos55/concordia/pkg/nar"
	"github.com/bos55/concordia/pkg/narinfo"
)

// upPath is a consistent store path to upload: NAR, zstd file, narinfo.
type upPath struct {
	base, hash, fileName string
	nar, file            []byte
	info                 *narinfo.NarInfo
}

func newUpPath(t testing.TB, name string, contents []byte, refs ...string) *upPath {
	t.Helper()
	var buf bytes.Buffer
	w := nar.NewWriter(&buf)
	w.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeRegular, Size: int64(len(contents))})
	w.Write(contents)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	defer enc.Close()
	p := &upPath{nar: buf.Bytes()}
	p.file = enc.EncodeAll(p.nar, nil)
	hs := sha256.Sum256([]byte(name))
	p.hash = nixbase32.EncodeToString(hs[:20])
	p.base = p.hash + "-" + name
	fh, nh := sha256.Sum256(p.file), sha256.Sum256(p.nar)
	p.fileName = nixbase32.EncodeToString(fh[:]) + ".nar.zst"
	fhash := narinfo.SHA256(fh[:])
	p.info = &narinfo.NarInfo{
		StorePath: "/nix/store/" + p.base, URL: "nar/" + p.fileName, Compression: "zstd",
		FileHash: &fhash, FileSize: uint64(len(p.file)),
		NarHash: narinfo.SHA256(nh[:]), NarSize: uint64(len(p.nar)), References: refs,
	}
	return p
}

// upEnv is a server with an upload store and tokens.
type upEnv struct {
	url               string
	up                *upload.Store
	tokens            string // path of the tokens file
	writeTok, readTok string
	// pinTok has pin (the deployer's), adminTok admin (GC, verify, any pin).
	pinTok, adminTok string
	key              narinfo.SecretKey
	puts             atomic.Int64 // PUT requests seen
	blobGets         atomic.Int64 // GETs of /nar/<filehash>.nar.<ext>
	dir              string
}

func newUpEnv(t testing.TB, dir string, private bool) *upEnv {
	t.Helper()
	return newUpEnvStores(t, dir, private, nil)
}

// newFileUpEnv is newUpEnv whose upload store keeps every NAR as a file,
// for tests that damage, remove or count the files (small NARs are
// otherwise in the index).
func newFileUpEnv(t testing.TB, dir string) *upEnv {
	t.Helper()
	return newUpEnvOpts(t, dir, false, nil, false, nil, upload.Options{InlineMax: -1})
}

// newUpEnvStores serves the stores in before ahead of the upload store
// (e.g. the local store with prefer = "local"); they also count as
// present for references.
func newUpEnvStores(t testing.TB, dir string, private bool, before []store.Store) *upEnv {
	t.Helper()
	return newUpEnvWith(t, dir, private, before, false, nil)
}

// newUpEnvWith serves others after the upload store when uploadFirst
// (prefer = "upload"), else before it, and lets mutate change the server
// options.
func newUpEnvWith(t testing.TB, dir string, private bool, others []store.Store, uploadFirst bool, mutate func(*server.Options)) *upEnv {
	t.Helper()
	return newUpEnvOpts(t, dir, private, others, uploadFirst, mutate, upload.Options{})
}

// newUpEnvOpts is newUpEnvWith with the upload store opened with upOpts
// (its SignKeys are the environment's; others come before its Others).
func newUpEnvOpts(t testing.TB, dir string, private bool, others []store.Store, uploadFirst bool, mutate func(*server.Options), upOpts upload.Options) *upEnv {
	t.Helper()
	e := &upEnv{dir: dir}
	sk, _, err := narinfo.GenerateKey("concordia-test-1")
	if err != nil {
		t.Fatal(err)
	}
	e.key = sk
	tdir := t.TempDir()
	e.tokens = filepath.Join(tdir, "tokens")
	var wl, rl string
	e.writeTok, wl, _ = auth.Generate("ci", auth.Read|auth.Write)
	e.readTok, rl, _ = auth.Generate("laptop", auth.Read)
	var pl, al string
	e.pinTok, pl, _ = auth.Generate("deploy", auth.Pin)
	e.adminTok, al, _ = auth.Generate("ops", auth.Admin)
	os.WriteFile(e.tokens, []byte(wl+"\n"+rl+"\n"+pl+"\n"+al+"\n"), 0o600)
	toks, err := auth.Load(e.tokens, nil)
	if err != nil {
		t.Fatal(err)
	}
	toks.SetRecheck(0)
	upOpts.SignKeys, upOpts.Others = []narinfo.SecretKey{sk}, append(append([]store.Store{}, others...), upOpts.Others...)
	e.up, err = upload.Open(context.Background(), dir, upOpts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.up.Close() })
	stores := append(append([]store.Store{}, others...), e.up)
	if uploadFirst {
		stores = append([]store.Store{e.up}, others...)
	}
	opts := server.Options{
		Stores: stores,
		Upload: &server.Uploads{Store: e.up, Tokens: toks},
		Keys:   []narinfo.SecretKey{sk},
	}
	if private {
		opts.Authorize = func(r *http.Request) error { _, err := toks.Authorize(r, auth.Read); return err }
	}
	if mutate != nil {
		mutate(&opts)
	}
	srv, err := server.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut {
			e.puts.Add(1)
		}
		if r.Method == http.MethodGet && len(r.URL.Path) > 5+52 && r.URL.Path[5+52] == '.' && strings.HasPrefix(r.URL.Path, "/nar/") {
			e.blobGets.Add(1)
		}
		srv.ServeHTTP(w, r)
	}))
	t.Cleanup(hs.Close)
	e.url = hs.URL
	return e
}

func (e *upEnv) do(t testing.TB, method, path, token string, body []byte) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, e.url+path, bytes.NewReader(body))
	if token != "" {
		req.SetBasicAuth("ci", token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == 401 && resp.Header.Get("WWW-Authenticate") == "" {
		t.Errorf("%s %s: 401 without WWW-Authenticate", method, path)
	}
	return resp.StatusCode, string(b)
}

func (e *upEnv) upload(t testing.TB, p *upPath) {
	t.Helper()
	if code, msg := e.do(t, "PUT", "/nar/"+p.fileName, e.writeTok, p.file); code != 200 {
		t.Fatalf("PUT NAR %s: %d %s", p.base, code, msg)
	}
	if code, msg := e.do(t, "PUT", "/"+p.hash+".narinfo", e.writeTok, []byte(p.info.String())); code != 200 {
		t.Fatalf("PUT narinfo %s: %d %s", p.base, code, msg)
	}
}

func TestPutAuth(t *testing.T) {
	e := newUpEnv(t, t.TempDir(), false)
	p := newUpPath(t, "auth-x", []byte("x"))
	tests := []struct {
		name, token string
		want        int
	}{
		{"no credentials", "", 401},
		{"read-only token", e.readTok, 403},
		{"unknown token", "bogus", 401},
		{"write token", e.writeTok, 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, msg := e.do(t, "PUT", "/nar/"+p.fileName, tc.token, p.file)
			if code != tc.want {
				t.Fatalf("status %d (%s), want %d", code, msg, tc.want)
			}
		})
	}
	// Revoke the write token: 401 after the reload, no restart.
	os.WriteFile(e.tokens, []byte("# nobody\n"), 0o600)
	os.Chtimes(e.tokens, timeFuture(), timeFuture())
	if code, _ := e.do(t, "PUT", "/"+p.hash+".narinfo", e.writeTok, []byte(p.info.String())); code != 401 {
		t.Fatalf("revoked token: %d", code)
	}
	// Reads stay public.
	if code, _ := e.do(t, "GET", "/nix-cache-info", "", nil); code != 200 {
		t.Fatalf("public read: %d", code)
	}
}

func TestPrivateReads(t *testing.T) {
	e := newUpEnv(t, t.TempDir(), true)
	p := newUpPath(t, "private-x", []byte("x"))
	e.upload(t, p)
	for _, path := range []string{"/" + p.hash + ".narinfo", "/nar/" + p.fileName} {
		if code, _ := e.do(t, "GET", path, "", nil); code != 401 {
			t.Errorf("%s without credentials: %d", path, code)
		}
		if code, _ := e.do(t, "GET", path, e.readTok, nil); code != 200 {
			t.Errorf("%s with read token (Basic): %d", path, code)
		}
	}
}

// TestPutBadInputHTTP: refusals are 4xx with a message saying why.
func TestPutBadInputHTTP(t *testing.T) {
	e := newUpEnv(t, t.TempDir(), false)
	dep := newUpPath(t, "http-dep", []byte("dep"))
	p := newUpPath(t, "http-top", []byte("top"), dep.base)
	other := newUpPath(t, "http-other", []byte("other"))
	tests := []struct {
		name, method, path string
		body               []byte
		want               int
		say                string
	}{
		{"NAR hash mismatch", "PUT", "/nar/" + p.fileName, other.file, 400, "file hash mismatch"},
		{"truncated NAR", "PUT", "/nar/" + p.fileName, p.file[:len(p.file)-3], 400, "NAR"},
		{"not a NAR", "PUT", "/nar/" + nameOf([]byte("hello")), []byte("hello"), 400, "NAR"},
		{"narinfo naming a missing NAR", "PUT", "/" + p.hash + ".narinfo", []byte(p.info.String()), 400, "not uploaded"},
		{"bad hash in URL", "PUT", "/" + p.hash[:31] + ".narinfo", []byte(p.info.String()), 400, "32-character"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, msg := e.do(t, tc.method, tc.path, e.writeTok, tc.body)
			if code != tc.want || !strings.Contains(msg, tc.say) {
				t.Fatalf("%d %q, want %d saying %q", code, msg, tc.want, tc.say)
			}
		})
	}
	// Missing reference: the NAR arrives, the narinfo is refused naming it.
	if code, msg := e.do(t, "PUT", "/nar/"+p.fileName, e.writeTok, p.file); code != 200 {
		t.Fatal(code, msg)
	}
	code, msg := e.do(t, "PUT", "/"+p.hash+".narinfo", e.writeTok, []byte(p.info.String()))
	if code != 400 || !strings.Contains(msg, dep.base) {
		t.Fatalf("missing ref: %d %q", code, msg)
	}
	if code, _ := e.do(t, "GET", "/"+p.hash+".narinfo", "", nil); code != 404 {
		t.Fatalf("refused path served: %d", code)
	}
	if code, _ := e.do(t, "GET", "/nar/"+p.fileName, "", nil); code != 404 {
		t.Fatalf("pending NAR served: %d", code)
	}
	if code, _ := e.do(t, "HEAD", "/nar/"+p.fileName, "", nil); code != 200 {
		t.Fatalf("HEAD pending NAR: %d", code)
	}
	e.upload(t, dep)
	if code, msg := e.do(t, "PUT", "/"+p.hash+".narinfo", e.writeTok, []byte(p.info.String())); code != 200 {
		t.Fatal(code, msg)
	}
	if code, body := e.do(t, "GET", "/"+p.hash+".narinfo", "", nil); code != 200 || !strings.Contains(body, "concordia-test-1:") {
		t.Fatalf("narinfo after upload: %d %s", code, body)
	}
	if code, _ := e.do(t, "PUT", "/nix-cache-info", e.writeTok, []byte("StoreDir: /nix/store\n")); code/100 != 2 {
		t.Fatalf("PUT nix-cache-info: %d", code)
	}
	if code, body := e.do(t, "GET", "/metrics", "", nil); code != 200 ||
		!strings.Contains(body, `concordia_upload_requests_total{kind="narinfo",result="invalid"}`) ||
		!strings.Contains(body, "concordia_upload_store_paths 2") {
		t.Fatalf("metrics: %d\n%s", code, body)
	}
	// Compressed request body (Nix 2.32+) and pins.
	enc, _ := zstd.NewWriter(nil)
	req, _ := http.NewRequest("PUT", e.url+"/"+other.hash+".ls", bytes.NewReader(enc.EncodeAll([]byte(`{"version":1,"root":{"type":"regular","size":5}}`), nil)))
	req.Header.Set("Content-Encoding", "zstd")
	req.SetBasicAuth("x", e.writeTok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("zstd-encoded .ls: %v %v", err, resp.Status)
	}
	if code, msg := e.do(t, "POST", "/api/pins/"+p.hash, e.adminTok, nil); code != 200 || !strings.Contains(msg, p.info.StorePath) {
		t.Fatalf("pin: %d %s", code, msg)
	}
	if code, _ := e.do(t, "POST", "/api/pins/"+p.hash, e.readTok, nil); code != 403 {
		t.Fatalf("pin with read token: %d", code)
	}
	code, body := e.do(t, "POST", "/api/gc?dry-run=true&max-size=1", e.adminTok, nil)
	if code != 200 || strings.Contains(body, dep.base) || strings.Contains(body, p.base) || !strings.Contains(body, `"DryRun":true`) {
		t.Fatalf("GC dry run with the closure pinned: %d %s", code, body)
	}
	if code, _ := e.do(t, "POST", "/api/gc", e.readTok, nil); code != 403 {
		t.Fatalf("GC with a read token: %d", code)
	}
	if code, _ := e.do(t, "DELETE", "/api/pins/"+p.hash, e.adminTok, nil); code != 204 {
		t.Fatalf("unpin: %d", code)
	}
	if code, _ := e.do(t, "DELETE", "/api/pins/"+p.hash, e.adminTok, nil); code != 404 {
		t.Fatalf("second unpin: %d", code)
	}
	code, body = e.do(t, "POST", "/api/gc?max-size=1", e.adminTok, nil)
	if code != 200 || !strings.Contains(body, dep.info.StorePath) || !strings.Contains(body, p.info.StorePath) {
		t.Fatalf("GC after unpin: %d %s", code, body)
	}
	if code, _ := e.do(t, "GET", "/"+p.hash+".narinfo", "", nil); code != 404 {
		t.Fatalf("collected path still served: %d", code)
	}
}

func nameOf(file []byte) string {
	h := sha256.Sum256(file)
	return nixbase32.EncodeToString(h[:]) + ".nar"
}

// TestPutNoSpace: a full disk answers 507, leaves nothing partial and the
// server keeps serving what it has.
func TestPutNoSpace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs")
	}
	mnt := filepath.Join(t.TempDir(), "mnt")
	os.Mkdir(mnt, 0o755)
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(mnt, syscall.MNT_DETACH) })
	e := newFileUpEnv(t, filepath.Join(mnt, "up"))
	small := newUpPath(t, "nospace-small", []byte("small"))
	e.upload(t, small)

	random := make([]byte, 2<<20) // incompressible, larger than the disk
	rand.Read(random)
	big := newUpPath(t, "nospace-big", random)
	code, msg := e.do(t, "PUT", "/nar/"+big.fileName, e.writeTok, big.file)
	if code != 507 {
		t.Fatalf("PUT on a full disk: %d %s", code, msg)
	}
	ents, _ := os.ReadDir(filepath.Join(mnt, "up", "blobs"))
	if len(ents) != 1 {
		t.Fatalf("files left after ENOSPC: %v", ents)
	}
	if code, _ := e.do(t, "GET", "/"+small.hash+".narinfo", "", nil); code != 200 {
		t.Fatalf("read after ENOSPC: %d", code)
	}
	if code, body := e.do(t, "GET", "/nar/"+small.fileName, "", nil); code != 200 || body != string(small.file) {
		t.Fatalf("NAR read after ENOSPC: %d", code)
	}
	// Space freed, the same upload works.
	if code, _ := e.do(t, "HEAD", "/nar/"+big.fileName, "", nil); code != 404 {
		t.Fatalf("HEAD of the refused NAR: %d", code)
	}
}

var _ = net.Listen
var _ = fmt.Sprint

func timeFuture() time.Time { return time.Now().Add(5 * time.Second) }

// TestPutTooLarge: a NAR body over the limit is 413, nothing kept.
func TestPutTooLarge(t *testing.T) {
	dir := t.TempDir()
	up, err := upload.Open(context.Background(), dir, upload.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	tokPath := filepath.Join(t.TempDir(), "tokens")
	tok, line, _ := auth.Generate("ci", auth.Write)
	os.WriteFile(tokPath, []byte(line+"\n"), 0o600)
	toks, _ := auth.Load(tokPath, nil)
	srv, err := server.New(server.Options{Stores: []store.Store{up}, Upload: &server.Uploads{Store: up, Tokens: toks, MaxNARSize: 1000}})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	random := make([]byte, 64<<10)
	rand.Read(random)
	p := newUpPath(t, "too-large", random)
	e := &upEnv{url: hs.URL}
	if code, msg := e.do(t, "PUT", "/nar/"+p.fileName, tok, p.file); code != 413 {
		t.Fatalf("oversized NAR: %d %s", code, msg)
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "blobs")); len(ents) != 0 {
		t.Fatalf("left: %v", ents)
	}
}

// TestVerifyAPI: a running server verifies its own store on request,
// and repair stops serving the damaged path at once.
func TestVerifyAPI(t *testing.T) {
	dir := t.TempDir()
	e := newFileUpEnv(t, dir)
	good := newUpPath(t, "verify-api-good", []byte("good"))
	bad := newUpPath(t, "verify-api-bad", bytes.Repeat([]byte("bad"), 1000))
	e.upload(t, good)
	e.upload(t, bad)
	if code, _ := e.do(t, "GET", "/"+bad.hash+".narinfo", "", nil); code != 200 {
		t.Fatal(code)
	}
	f := filepath.Join(dir, "blobs", bad.fileName)
	data, _ := os.ReadFile(f)
	data[len(data)/2] ^= 1
	os.WriteFile(f, data, 0o644)
	code, body := e.do(t, "POST", "/api/verify", e.adminTok, nil)
	if code != 200 || !strings.Contains(body, "DAMAGED "+bad.fileName) || !strings.Contains(body, "progress ") {
		t.Fatalf("verify: %d %s", code, body)
	}
	if code, _ := e.do(t, "POST", "/api/verify", e.readTok, nil); code != 403 {
		t.Fatalf("verify with a read token: %d", code)
	}
	code, body = e.do(t, "POST", "/api/verify?repair=true", e.adminTok, nil)
	if code != 200 || !strings.Contains(body, "dropped "+bad.info.StorePath) {
		t.Fatalf("repair: %d %s", code, body)
	}
	if code, _ := e.do(t, "GET", "/"+bad.hash+".narinfo", "", nil); code != 404 {
		t.Fatalf("damaged path still served after repair: %d", code)
	}
	if code, _ := e.do(t, "GET", "/"+good.hash+".narinfo", "", nil); code != 200 {
		t.Fatalf("intact path: %d", code)
	}
}

// TestWriterSeesUploadsOnly: an uploader is told only what the upload
// store has, so `nix copy --to` uploads whole closures even when the cache
// host's own store holds some of the paths (which its Nix may collect);
// everybody else still gets the local store's answer.
func TestWriterSeesUploadsOnly(t *testing.T) {
	local := newFakeStore()
	lp := local.addTree(t, "0c5i0q2xsq3l3x1kh8m1j6dqq6yqcc59", "on-the-cache-host", map[string]string{"f": "x"})
	e := newUpEnvStores(t, t.TempDir(), false, []store.Store{local})
	hash := filepath.Base(lp.info.StorePath)[:32]
	if code, _ := e.do(t, "GET", "/"+hash+".narinfo", "", nil); code != 200 {
		t.Fatalf("anonymous GET of a local path: %d", code)
	}
	if code, _ := e.do(t, "GET", "/"+hash+".narinfo", e.readTok, nil); code != 200 {
		t.Fatalf("reader GET of a local path: %d", code)
	}
	for _, m := range []string{"GET", "HEAD"} {
		if code, _ := e.do(t, m, "/"+hash+".narinfo", e.writeTok, nil); code != 404 {
			t.Fatalf("writer %s of a local-only path: %d, want 404 so the client uploads it", m, code)
		}
	}
	p := newUpPath(t, "uploaded", []byte("hello"))
	e.upload(t, p)
	code, body := e.do(t, "GET", "/"+p.hash+".narinfo", e.writeTok, nil)
	if code != 200 || !strings.Contains(body, "StorePath: "+p.info.StorePath+"\n") {
		t.Fatalf("writer GET of an uploaded path: %d %q", code, body)
	}
}
