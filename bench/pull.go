package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// Pull-through: Concordia in front of an upstream cache (nginx serving a
// file:// cache that nix copy wrote, zstd, signed), measured against that
// upstream itself. Cold: a fresh Concordia state per run, so the NAR is
// downloaded, verified and kept while the client reads it; warm: the kept
// copy; narinfo: a miss that asks the upstream (which answers 404) against
// a local hit and against the upstream's own 404.

// pullNARSize is the pull workload's file: incompressible, so the zstd
// file is as large as the NAR and the bytes moved are what is measured.
func (b *bench) pullNARSize() int64 {
	if b.o.quick {
		return 8 << 20
	}
	return 128 << 20
}

// pullWorkload adds a directory with one file of seeded random bytes to
// the store (the same path on every run with the same size) and writes
// the file:// cache the upstream nginx serves.
func (b *bench) pullWorkload(ctx context.Context) (pathInfo, string, error) {
	p, err := b.randomPath(ctx, "pull-src", [32]byte{'p', 'u', 'l', 'l'}, b.pullNARSize())
	if err != nil {
		return pathInfo{}, "", err
	}
	infos := []pathInfo{p}
	dir := filepath.Join(b.work, "filecache-pull")
	url := fmt.Sprintf("file://%s?compression=zstd&secret-key=%s", dir, b.keySec)
	if _, err := b.runCmd(ctx, nil, "nix", "--extra-experimental-features", "nix-command", "copy", "--to", url, infos[0].Path); err != nil {
		return pathInfo{}, "", err
	}
	return infos[0], dir, nil
}

// startPullCache runs Concordia with the upstream as its only store
// (no local store: the machine's has the path) in a fresh state dir.
func (b *bench) startPullCache(ctx context.Context, name, upstream, state string) (*server, error) {
	_ = os.RemoveAll(state)
	if err := os.MkdirAll(state, 0o700); err != nil {
		return nil, err
	}
	cfg := filepath.Join(state, "cache.toml")
	conf := fmt.Sprintf("nix_db_path = %q\n[[upstream]]\nurl = %q\npublic_keys = [%q]\n",
		filepath.Join(state, "no-local-store.sqlite"), upstream, b.pubKey)
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	return b.startConcordia(ctx, name, "zstd", state, "--config", cfg)
}

// benchPull: cold and warm NAR fetches through Concordia against the
// upstream nginx directly (runs interleaved A B A B), then narinfo
// latencies.
func (b *bench) benchPull(ctx context.Context) error {
	p, dir, err := b.pullWorkload(ctx)
	if err != nil {
		return fmt.Errorf("pull workload: %w", err)
	}
	b.rep.loads = append(b.rep.loads, fmt.Sprintf("pull-through: `%s`, NAR %.1f MB of random bytes, upstream file zstd", p.Path, float64(p.NarSize)/1e6))
	ngx, err := b.startNginx(ctx, "nginx upstream", dir)
	if err != nil {
		return err
	}
	defer b.procs.stop(ngx.cmd)
	direct, _, err := fetchNarinfo(ctx, ngx.base, p.hashPart())
	if err != nil {
		return err
	}
	if err := checkNAR(ctx, ngx.base, p); err != nil {
		b.fail("nginx upstream", err)
	}
	// The file's size is what both send: MB/s are of the file.
	fsize := fileSize(filepath.Join(dir, strings.TrimPrefix(direct, ngx.base+"/")))
	state := filepath.Join(b.work, "state-pull")
	defer os.RemoveAll(state)
	fetch := func(name, url string, streams int) (time.Duration, error) {
		d, n, err := download(ctx, url, streams)
		if err == nil && n != fsize*int64(streams) {
			err = fmt.Errorf("%d bytes, want %d", n, fsize*int64(streams))
		}
		if err != nil {
			b.fail(name, err)
		}
		return d, err
	}
	// The direct and warm fetches are repeated (steady): the direct one
	// is a tenth of a second, and the cold ratio's denominator.
	steadyFetch := func(name, url string, streams int) (time.Duration, error) {
		return b.steady(func() (time.Duration, error) { return fetch(name, url, streams) })
	}
	// Each round measures the upstream and a fresh Concordia one after
	// the other, and so do the link runs and the narinfo latency
	// (pullNarinfoLatency, request by request): paired ratios.
	b.rep.pair("pull")
	// More rounds: a cold fetch writes the whole NAR to disk, whose
	// speed here varies from one to the next more than a CPU's, and each
	// round is short.
	for i := 0; i < b.noisyRounds(); i++ {
		// A: the upstream itself, its page cache warm like the cold
		// runs' upstream.
		if d, err := steadyFetch("nginx upstream", direct, 1); err == nil {
			b.rep.add("pull", "nginx upstream (direct)", "seconds, NAR fetch, 1 stream", d.Seconds())
			b.rep.add("pull", "nginx upstream (direct)", "MB/s, NAR fetch, 1 stream", mbps(fsize, d))
		}
		if d, err := steadyFetch("nginx upstream", direct, 8); err == nil {
			b.rep.add("pull", "nginx upstream (direct)", "MB/s, NAR fetch, 8 streams", mbps(8*fsize, d))
		}
		// B: a fresh Concordia; the narinfo first (it asks the
		// upstream, no download), then the timed NAR: downloaded,
		// verified and kept while it is read.
		conc, err := b.startPullCache(ctx, "concordia pull", ngx.base, state)
		if err != nil {
			return err
		}
		url, _, err := fetchNarinfo(ctx, conc.base, p.hashPart())
		if err != nil {
			b.procs.stop(conc.cmd)
			return fmt.Errorf("concordia pull narinfo: %w", err)
		}
		if d, err := fetch("concordia pull cold", url, 1); err == nil {
			b.rep.add("pull", "concordia cold (pulled through)", "seconds, NAR fetch, 1 stream", d.Seconds())
			b.rep.add("pull", "concordia cold (pulled through)", "MB/s, NAR fetch, 1 stream", mbps(fsize, d))
		}
		// Cold means the upstream was asked for the NAR by this run:
		// exactly one verified and kept download.
		if n, err := pulledOK(ctx, conc.base); err != nil || n != 1 {
			b.fail("concordia pull cold", fmt.Errorf("%v downloads verified and kept after the cold fetch, want 1 (%v)", n, err))
		}
		if err := checkNAR(ctx, conc.base, p); err != nil {
			b.fail("concordia pull warm", err)
		}
		if d, err := steadyFetch("concordia pull warm", url, 1); err == nil {
			b.rep.add("pull", "concordia warm (kept copy)", "seconds, NAR fetch, 1 stream", d.Seconds())
			b.rep.add("pull", "concordia warm (kept copy)", "MB/s, NAR fetch, 1 stream", mbps(fsize, d))
		}
		if d, err := steadyFetch("concordia pull warm", url, 8); err == nil {
			b.rep.add("pull", "concordia warm (kept copy)", "MB/s, NAR fetch, 8 streams", mbps(8*fsize, d))
		}
		// Every round: a tail latency from one window is mostly that
		// window's noise; the ratio is the median of the rounds'.
		err = b.pullNarinfoLatency(ctx, conc, ngx, p)
		b.procs.stop(conc.cmd)
		if err != nil {
			return err
		}
	}
	return b.pullOverLink(ctx, ngx, p, direct, fsize, state)
}

// pullLinkRate is the upstream's bandwidth in the link runs: a fast
// WAN (800 Mbit/s), well below loopback, where the verification that
// runs alongside the download has time to keep up.
const pullLinkRate = 100e6

// pullOverLink: the cold fetch again with the upstream behind a link of
// pullLinkRate bytes/s, for the direct fetch and Concordia's download
// alike (runs interleaved A B A B). On loopback the comparison is of CPU
// work (Concordia hashes, decodes, validates and writes what nginx
// sendfiles); over a link, of what a reader waits for.
func (b *bench) pullOverLink(ctx context.Context, ngx *server, p pathInfo, direct string, fsize int64, state string) error {
	link, err := startRateProxy(ctx, strings.TrimPrefix(ngx.base, "http://"), pullLinkRate)
	if err != nil {
		return err
	}
	defer link.Close()
	linkBase := "http://" + link.Addr()
	directLink := linkBase + strings.TrimPrefix(direct, ngx.base)
	runs := b.o.runs
	if runs > 3 {
		runs = 3 // each fetch takes fsize/pullLinkRate
	}
	metric := fmt.Sprintf("seconds, NAR fetch over a %.0f MB/s link", pullLinkRate/1e6)
	for i := 0; i < runs; i++ {
		d, n, err := download(ctx, directLink, 1)
		if err == nil && n != fsize {
			err = fmt.Errorf("%d bytes, want %d", n, fsize)
		}
		if err != nil {
			b.fail("nginx upstream over the link", err)
		} else {
			b.rep.add("pull", "nginx upstream (direct)", metric, d.Seconds())
		}
		conc, err := b.startPullCache(ctx, "concordia pull link", linkBase, state)
		if err != nil {
			return err
		}
		url, _, err := fetchNarinfo(ctx, conc.base, p.hashPart())
		if err == nil {
			d, n, err = download(ctx, url, 1)
			if err == nil && n != fsize {
				err = fmt.Errorf("%d bytes, want %d", n, fsize)
			}
		}
		if err == nil {
			if pulled, perr := pulledOK(ctx, conc.base); perr != nil || pulled != 1 {
				err = fmt.Errorf("%v downloads verified and kept, want 1 (%v)", pulled, perr)
			}
		}
		if err == nil {
			err = checkNAR(ctx, conc.base, p)
		}
		b.procs.stop(conc.cmd)
		if err != nil {
			b.fail("concordia cold over the link", err)
			continue
		}
		b.rep.add("pull", "concordia cold (pulled through)", metric, d.Seconds())
	}
	return nil
}

// rateProxy forwards TCP connections to a target, pacing what the
// target sends back to a rate (a token bucket per connection); requests
// go through unpaced.
type rateProxy struct {
	ln   net.Listener
	rate float64
	wg   sync.WaitGroup
}

func startRateProxy(ctx context.Context, target string, rate float64) (*rateProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &rateProxy{ln: ln, rate: rate}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t, err := (&net.Dialer{}).DialContext(ctx, "tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			go func() {
				_, _ = io.Copy(t, c)
				if tc, ok := t.(*net.TCPConn); ok {
					_ = tc.CloseWrite()
				}
			}()
			go func() {
				p.paced(c, t)
				c.Close()
				t.Close()
			}()
		}
	}()
	return p, nil
}

func (p *rateProxy) Addr() string { return p.ln.Addr().String() }

func (p *rateProxy) Close() error {
	err := p.ln.Close()
	p.wg.Wait()
	return err
}

// linkIdle is how far behind the link's schedule a chunk must come to
// count as the link having been idle: a sleep that overshot (this
// process shares the CPU with the systems measured) is caught up, or the
// link would be slower for whichever system loads the CPU more.
const linkIdle = 20 * time.Millisecond

// paced copies src to dst at p.rate, as a link would: each chunk takes
// len/rate of the link, starting when the link is free (an idle link
// gives no credit, so a kept-alive connection gets no burst).
func (p *rateProxy) paced(dst io.Writer, src io.Reader) {
	buf := make([]byte, 64<<10)
	var free time.Time
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if now := time.Now(); free.Before(now.Add(-linkIdle)) {
				free = now
			}
			free = free.Add(time.Duration(float64(n) / p.rate * float64(time.Second)))
			time.Sleep(time.Until(free))
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// pullNarinfoLatency: sequential narinfo GETs on one keep-alive
// connection each: a hit (the kept path), a miss Concordia asks the
// upstream about (a fresh random hash part each time, so no remembered
// miss answers it), and the upstream's own 404 for such hashes.
func (b *bench) pullNarinfoLatency(ctx context.Context, conc, ngx *server, p pathInfo) error {
	// 5000 each: a p99 of 2000 is the 20th-slowest request, and moved by
	// a quarter between two full runs of one commit.
	n := 5000
	if b.o.quick {
		n = 200
	}
	type sys struct {
		name   string
		url    func() string
		status int
	}
	systems := []sys{
		{"concordia hit (kept path)", func() string { return conc.base + "/" + p.hashPart() + ".narinfo" }, 200},
		{"concordia miss (asks the upstream)", func() string { return conc.base + "/" + randomHashPart() + ".narinfo" }, 404},
		{"nginx upstream 404 (direct)", func() string { return ngx.base + "/" + randomHashPart() + ".narinfo" }, 404},
	}
	cl := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1, DisableCompression: true}}
	defer cl.CloseIdleConnections()
	lat := map[string][]time.Duration{}
	// Interleaved request by request (hit, miss, 404, hit, ...), so a
	// noisy moment of the machine falls on all three alike; in blocks of
	// 100 per system the tails of two full runs still disagreed by a
	// quarter. This process's own collector is off meanwhile (a few MB of
	// garbage): its pauses would be the client's, not the servers', tail.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	for j := 0; j < n; j++ {
		for _, s := range systems {
			url := s.url()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
			t0 := time.Now()
			resp, err := cl.Do(req)
			if err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
			_, _ = drain(resp)
			d := time.Since(t0)
			if resp.StatusCode != s.status {
				b.fail(s.name, fmt.Errorf("GET %s: %d, want %d", url, resp.StatusCode, s.status))
				continue
			}
			lat[s.name] = append(lat[s.name], d)
		}
	}
	for _, s := range systems {
		l := lat[s.name]
		if len(l) == 0 {
			continue
		}
		sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
		b.rep.add("pull", s.name, "narinfo p50 us", float64(l[len(l)/2].Microseconds()))
		b.rep.add("pull", s.name, "narinfo p99 us", float64(l[len(l)*99/100].Microseconds()))
	}
	return nil
}

func drain(resp *http.Response) (int64, error) {
	defer resp.Body.Close()
	buf := make([]byte, 4096)
	var n int64
	for {
		m, err := resp.Body.Read(buf)
		n += int64(m)
		if err != nil {
			return n, nil
		}
	}
}

func randomHashPart() string {
	b := make([]byte, 20)
	_, _ = rand.Read(b)
	return nixbase32.EncodeToString(b)
}

// pulledOK reads concordia_pull_through_total{result="ok"} from a
// server's /metrics.
func pulledOK(ctx context.Context, base string) (float64, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "concordia_pull_through_total{") && strings.Contains(line, `result="ok"`) {
			f := strings.Fields(line)
			v, err := strconv.ParseFloat(f[len(f)-1], 64)
			if err != nil {
				return 0, fmt.Errorf("metrics line %q: %w", line, err)
			}
			sum += v
		}
	}
	return sum, sc.Err()
}
