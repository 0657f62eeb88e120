package main

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/nixbase32"
	"golang.org/x/sys/unix"

	"github.com/bos55/concordia/internal/auth"
	"github.com/bos55/concordia/internal/nartest"
	"github.com/bos55/concordia/pkg/narinfo"
)

// The address space the server gets in these tests, as in the report
// where one GET of a 136-byte .nar.xz killed a server under this limit.
const attackAS = 3 << 30

// hostile is one upload: a NAR file (compressed) and its narinfo.
type hostile struct {
	name     string // store path name
	file     []byte
	fileName string // <filehash>.nar.<ext>
	info     *narinfo.NarInfo
}

// newHostile builds the upload of a NAR read from narR, compressed as
// file by compress (ext and comp naming the codec).
func newHostile(t *testing.T, name string, narR io.Reader, file []byte, comp, ext string) *hostile {
	t.Helper()
	h := sha256.New()
	size, err := io.Copy(h, narR)
	if err != nil {
		t.Fatal(err)
	}
	fh := sha256.Sum256(file)
	hs := sha256.Sum256([]byte(name))
	base := nixbase32.EncodeToString(hs[:20]) + "-" + name
	fileName := nixbase32.EncodeToString(fh[:]) + ext
	fhash := narinfo.SHA256(fh[:])
	return &hostile{name: name, file: file, fileName: fileName, info: &narinfo.NarInfo{
		StorePath: "/nix/store/" + base, URL: "nar/" + fileName, Compression: comp,
		FileHash: &fhash, FileSize: uint64(len(file)), NarHash: narinfo.SHA256(h.Sum(nil)), NarSize: uint64(size)}}
}

func (h *hostile) hash() string { return filepath.Base(h.info.StorePath)[:32] }

func zstdOf(t *testing.T, r io.Reader) []byte {
	t.Helper()
	var b bytes.Buffer
	enc, _ := zstd.NewWriter(&b, zstd.WithEncoderLevel(zstd.SpeedBestCompression))
	if _, err := io.Copy(enc, r); err != nil {
		t.Fatal(err)
	}
	enc.Close()
	return b.Bytes()
}

// procStatus reads fields of /proc/<pid>/status, in bytes.
func procStatus(t *testing.T, pid int) map[string]int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("the server is gone: %v", err)
	}
	out := map[string]int64{}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if f := strings.Fields(v); ok && len(f) == 2 && f[1] == "kB" {
			n, _ := strconv.ParseInt(f[0], 10, 64)
			out[k] = n << 10
		}
	}
	return out
}

// resetPeak makes VmHWM start again from the current RSS.
func resetPeak(pid int) { os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0) }

type cacheClient struct {
	t    *testing.T
	url  string
	user string
	tok  string
}

func (c *cacheClient) do(method, path string, body []byte, hdr ...string) (int, []byte) {
	c.t.Helper()
	req, _ := http.NewRequest(method, c.url+path, bytes.NewReader(body))
	if c.tok != "" {
		req.SetBasicAuth(c.user, c.tok)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := (&http.Transport{DisableCompression: true}).RoundTrip(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func (c *cacheClient) upload(h *hostile) (int, string) {
	c.t.Helper()
	code, msg := c.do("PUT", "/nar/"+h.fileName, h.file)
	if code != 200 {
		return code, string(msg)
	}
	code, msg = c.do("PUT", "/"+h.hash()+".narinfo", []byte(h.info.String()))
	return code, string(msg)
}

// bystander is another client fetching while the attack runs: every one
// of its requests must succeed.
type bystander struct {
	stop     chan struct{}
	done     chan struct{}
	ok, fail atomic.Int64
	slowest  atomic.Int64 // ns
	lastErr  atomic.Value
}

func startBystander(url string, paths ...string) *bystander {
	b := &bystander{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(b.done)
		cl := &http.Client{Timeout: 10 * time.Second}
		for i := 0; ; i++ {
			select {
			case <-b.stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			p := paths[i%len(paths)]
			start := time.Now()
			resp, err := cl.Get(url + p)
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					err = fmt.Errorf("GET %s: %s", p, resp.Status)
				}
			}
			if d := int64(time.Since(start)); d > b.slowest.Load() {
				b.slowest.Store(d)
			}
			if err != nil {
				b.fail.Add(1)
				b.lastErr.Store(err.Error())
				continue
			}
			b.ok.Add(1)
		}
	}()
	return b
}

func (b *bystander) finish(t *testing.T) {
	t.Helper()
	close(b.stop)
	<-b.done
	t.Logf("bystander: %d requests ok, %d failed, slowest %v", b.ok.Load(), b.fail.Load(), time.Duration(b.slowest.Load()))
	if b.fail.Load() > 0 || b.ok.Load() == 0 {
		t.Errorf("the other client was not served during the attack: %d failed (%v), %d ok", b.fail.Load(), b.lastErr.Load(), b.ok.Load())
	}
}

func writeCacheConfig(t *testing.T, dir, extra string) (cfg, tok string) {
	t.Helper()
	tok, line, _ := auth.Generate("ci", auth.Write)
	tokens := filepath.Join(dir, "tokens")
	os.WriteFile(tokens, []byte(line+"\n"), 0o600)
	cfg = filepath.Join(dir, "cache.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`bind = "127.0.0.1:0"
state_dir = %q
nix_db_path = %q
[upload]
dir = %q
tokens_file = %q
%s`, filepath.Join(dir, "state"), filepath.Join(dir, "no-nix-db.sqlite"), filepath.Join(dir, "upload"), tokens, extra)), 0o644)
	return cfg, tok
}

func limitAS(t *testing.T, p *serveProc) {
	t.Helper()
	lim := unix.Rlimit{Cur: attackAS, Max: attackAS}
	if err := unix.Prlimit(p.cmd.Process.Pid, unix.RLIMIT_AS, &lim, nil); err != nil {
		t.Skipf("cannot limit the server's address space: %v", err)
	}
}

func bzip2Of(t *testing.T, r io.Reader) []byte {
	t.Helper()
	if _, err := exec.LookPath("bzip2"); err != nil {
		return nil
	}
	cmd := exec.Command("bzip2", "-9", "-c")
	cmd.Stdin = r
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestServeSurvivesHostileUploads runs `cache serve` in 3 GiB of address
// space and throws at it, with a write token, every bomb of the report:
// each is refused (413 or 400, naming its limit) while another client
// keeps being served, nothing is stored from them, and what was stored
// before is intact. Then a 1,000,000-entry NAR, within the limits, is
// uploaded and its listing asked for by 16 anonymous clients at once: one
// build. RSS and times are logged.
func TestServeSurvivesHostileUploads(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	dir := t.TempDir()
	cfg, tok := writeCacheConfig(t, dir, "")
	p := startServe(t, "--config", cfg)
	pid := p.cmd.Process.Pid
	limitAS(t, p)
	c := &cacheClient{t: t, url: strings.TrimSuffix(p.url, "/"), user: "ci", tok: tok}
	anon := &cacheClient{t: t, url: c.url}

	legit := newHostile(t, "legit", bytes.NewReader(nartest.File([]byte("kept through it all\n"))), zstdOf(t, bytes.NewReader(nartest.File([]byte("kept through it all\n")))), "zstd", ".nar.zst")
	if code, msg := c.upload(legit); code != 200 {
		t.Fatalf("legit upload: %d %s", code, msg)
	}
	by := startBystander(c.url, "/nix-cache-info", "/"+legit.hash()+".narinfo", "/"+legit.info.URL)

	small := nartest.File([]byte("hello"))
	type attack struct {
		name   string
		h      *hostile
		status int
		key    string
	}
	attacks := []attack{
		{"xz dictionary bomb", newHostile(t, "xz-bomb", bytes.NewReader(small), nartest.XZDictBomb(small, 40), "xz", ".nar.xz"), 413, "limits.xz_dict_max"},
		{"zstd window bomb", newHostile(t, "zstd-bomb", bytes.NewReader(small), nartest.ZstdWindowBomb(31, small), "zstd", ".nar.zst"), 413, "limits.zstd_window_max"},
		{"deep NAR", newHostile(t, "deep", nartest.Deep(4000, 255), zstdOf(t, nartest.Deep(4000, 255)), "zstd", ".nar.zst"), 400, "limits.max_depth"},
	}
	if bz := bzip2Of(t, nartest.ZeroFile(1<<30)); bz != nil {
		attacks = append(attacks, attack{"bzip2 ratio bomb", newHostile(t, "bz-bomb", nartest.ZeroFile(1<<30), bz, "bzip2", ".nar.bz2"), 413, "limits.max_ratio"})
	}
	for _, a := range attacks {
		resetPeak(pid)
		start := time.Now()
		code, msg := c.upload(a.h)
		took := time.Since(start)
		st := procStatus(t, pid)
		t.Logf("%s (%d bytes): %d in %v; server RSS peak %d MiB, VmPeak %d MiB: %.300s", a.name, len(a.h.file), code, took, st["VmHWM"]>>20, st["VmPeak"]>>20, msg)
		if code != a.status || !strings.Contains(msg, a.key) {
			t.Errorf("%s: %d %q, want %d naming %s", a.name, code, msg, a.status, a.key)
		}
		if code, _ := anon.do("HEAD", "/nar/"+a.h.fileName, nil); code != 404 {
			t.Errorf("%s: HEAD of the refused NAR: %d", a.name, code)
		}
	}
	// The legit NAR is small, kept in the index (the bystander reads it
	// throughout); no attack left a file.
	blobs, _ := os.ReadDir(filepath.Join(dir, "upload", "blobs"))
	if len(blobs) != 0 {
		t.Errorf("blob files after the attacks: %v, want none", blobs)
	}

	// A million entries is within the limits: accepted, and listed once.
	wide := newHostile(t, "million", nartest.Wide(1_000_000), zstdOf(t, nartest.Wide(1_000_000)), "zstd", ".nar.zst")
	resetPeak(pid)
	start := time.Now()
	if code, msg := c.upload(wide); code != 200 {
		t.Fatalf("1,000,000-entry NAR: %d %s", code, msg)
	}
	st := procStatus(t, pid)
	t.Logf("upload of a %d-byte NAR of 1,000,000 files (%d bytes zstd): %v, RSS peak %d MiB", wide.info.NarSize, len(wide.file), time.Since(start), st["VmHWM"]>>20)
	resetPeak(pid)
	start = time.Now()
	var wg sync.WaitGroup
	sums := make([][32]byte, 16)
	for i := range sums {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, body := anon.do("GET", "/"+wide.hash()+".ls", nil, "Accept-Encoding", "zstd")
			if code != 200 {
				t.Errorf(".ls: %d %.200s", code, body)
			}
			sums[i] = sha256.Sum256(body)
		}()
	}
	wg.Wait()
	first := time.Since(start)
	st = procStatus(t, pid)
	start = time.Now()
	code, body := anon.do("GET", "/"+wide.hash()+".ls", nil)
	t.Logf("16 concurrent anonymous .ls of it: %v, RSS peak %d MiB; then one more: %d, %d bytes in %v", first, st["VmHWM"]>>20, code, len(body), time.Since(start))
	for i := range sums {
		if sums[i] != sums[0] {
			t.Fatalf("client %d got another listing", i)
		}
	}
	_, m := anon.do("GET", "/metrics", nil)
	if !strings.Contains(string(m), "concordia_listing_builds_total 1\n") {
		t.Errorf("listing builds:\n%s", grepLines(string(m), "listing_builds"))
	}
	by.finish(t)

	// Nothing stored was lost, across a restart too.
	for _, h := range []*hostile{legit, wide} {
		if code, got := anon.do("GET", "/"+h.info.URL, nil); code != 200 || !bytes.Equal(got, h.file) {
			t.Errorf("%s: %d after the attacks", h.name, code)
		}
	}
	p.cmd.Process.Kill()
	<-p.exited
	p = startServe(t, "--config", cfg)
	anon.url = strings.TrimSuffix(p.url, "/")
	if code, got := anon.do("GET", "/"+legit.info.URL, nil); code != 200 || !bytes.Equal(got, legit.file) {
		t.Errorf("legit NAR after a restart: %d", code)
	}
}

// TestServeRefusesToDecodeStoredBombs: blobs stored under looser limits
// (as by an older version, then recovered) are kept, but a server with
// the default limits in 3 GiB of address space never decodes them: the
// anonymous NAR, .ls and /serve requests get a 500 (not 404, not a
// crash), the refusal is logged with its key, and the other paths are
// served meanwhile.
func TestServeRefusesToDecodeStoredBombs(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	dir := t.TempDir()
	// Files, which the test counts: small NARs would be in the index.
	cfg, tok := writeCacheConfig(t, dir, "inline_max_size = \"0\"\n[limits]\nxz_dict_max = \"4G\"\nmax_depth = 5000\n")
	p := startServe(t, "--config", cfg)
	c := &cacheClient{t: t, url: strings.TrimSuffix(p.url, "/"), user: "ci", tok: tok}
	small := nartest.File([]byte("hello"))
	bombs := []struct {
		h   *hostile
		key string
	}{
		{newHostile(t, "stored-xz-bomb", bytes.NewReader(small), nartest.XZDictBomb(small, 40), "xz", ".nar.xz"), "limits.xz_dict_max"},
		{newHostile(t, "stored-deep", nartest.Deep(4000, 255), zstdOf(t, nartest.Deep(4000, 255)), "zstd", ".nar.zst"), "limits.max_depth"},
	}
	legit := newHostile(t, "legit", bytes.NewReader(nartest.File([]byte("fine\n"))), zstdOf(t, bytes.NewReader(nartest.File([]byte("fine\n")))), "zstd", ".nar.zst")
	for _, h := range append([]*hostile{legit}, bombs[0].h, bombs[1].h) {
		if code, msg := c.upload(h); code != 200 {
			t.Fatalf("%s under the loose limits: %d %s", h.name, code, msg)
		}
	}
	p.cmd.Process.Kill()
	<-p.exited

	cfg, _ = writeCacheConfig(t, dir, "")
	p = startServe(t, "--config", cfg)
	pid := p.cmd.Process.Pid
	limitAS(t, p)
	anon := &cacheClient{t: t, url: strings.TrimSuffix(p.url, "/")}
	by := startBystander(anon.url, "/nix-cache-info", "/"+legit.hash()+".narinfo", "/"+legit.info.URL)
	for _, b := range bombs {
		nh := nixbase32.EncodeToString(b.h.info.NarHash.Digest)
		// Every read path that decodes or parses the NAR refuses. The
		// deep NAR's bytes are harmless to stream (its bound is on its
		// shape, which only listing and /serve parse), and a stored
		// .nar.zst is sent as it is.
		paths := map[string]int{"/" + b.h.hash() + ".ls": 500, "/serve/" + b.h.hash() + "/": 500}
		if b.h.info.Compression == "xz" {
			paths["/nar/"+b.h.hash()+"-"+nh+".nar"] = 500
			paths["/nar/"+b.h.hash()+"-"+nh+".nar.zst"] = 500
		} else {
			paths["/nar/"+b.h.hash()+"-"+nh+".nar"] = 200
		}
		for path, want := range paths {
			resetPeak(pid)
			start := time.Now()
			code, msg := anon.do("GET", path, nil)
			st := procStatus(t, pid)
			t.Logf("%s %s: %d in %v, RSS peak %d MiB, VmPeak %d MiB", b.h.name, path, code, time.Since(start), st["VmHWM"]>>20, st["VmPeak"]>>20)
			if code != want {
				t.Errorf("%s %s: %d %.200s, want %d", b.h.name, path, code, msg, want)
			}
		}
		if code, _ := anon.do("GET", "/"+b.h.hash()+".narinfo", nil); code != 200 {
			t.Errorf("%s: narinfo %d", b.h.name, code)
		}
		if code, got := anon.do("GET", "/"+b.h.info.URL, nil); code != 200 || !bytes.Equal(got, b.h.file) {
			t.Errorf("%s: the stored file itself: %d", b.h.name, code)
		}
		if !strings.Contains(p.stderr.String(), b.key) {
			t.Errorf("no log line names %s:\n%s", b.key, p.stderr)
		}
	}
	for deadline := time.Now().Add(5 * time.Second); by.ok.Load() < 5 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	by.finish(t)
	blobs, _ := os.ReadDir(filepath.Join(dir, "upload", "blobs"))
	if len(blobs) != 3 {
		t.Errorf("blob files: %v, want all three kept", blobs)
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
