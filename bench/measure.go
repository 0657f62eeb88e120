package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"
)

// wrkResult is what one wrk run reports.
type wrkResult struct {
	rps      float64
	p50, p99 time.Duration
	errors   int // non-2xx answers and socket errors

	requests, non2xx, sockErrors int
}

var (
	reRPS    = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	reLat    = regexp.MustCompile(`(?m)^\s+(50|99)(?:\.000)?%\s+([0-9.]+)(us|ms|s)\s*$`)
	reErrs   = regexp.MustCompile(`Non-2xx or 3xx responses:\s+(\d+)`)
	reSockEr = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	reReqs   = regexp.MustCompile(`(\d+) requests in `)
)

// runWrk drives url with wrk; wrk is C and costs the client side little,
// so the server is what gets measured (on the same two cores, for all).
func (b *bench) runWrk(ctx context.Context, url string, threads, conns int) (wrkResult, error) {
	return b.runWrkScript(ctx, url, threads, conns, "")
}

// runWrkScript is runWrk with a wrk Lua script (none when "").
func (b *bench) runWrkScript(ctx context.Context, url string, threads, conns int, script string) (wrkResult, error) {
	var r wrkResult
	args := []string{"-t", strconv.Itoa(threads), "-c", strconv.Itoa(conns),
		"-d", fmt.Sprintf("%.0fs", b.o.dur.Seconds()), "--latency"}
	if script != "" {
		args = append(args, "-s", script)
	}
	out, err := exec.CommandContext(ctx, "wrk", append(args, url)...).CombinedOutput()
	if err != nil {
		return r, fmt.Errorf("wrk: %w: %s", err, out)
	}
	m := reRPS.FindSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("wrk: no Requests/sec in %q", out)
	}
	r.rps, _ = strconv.ParseFloat(string(m[1]), 64)
	for _, lm := range reLat.FindAllSubmatch(out, -1) {
		v, _ := strconv.ParseFloat(string(lm[2]), 64)
		unit := map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second}[string(lm[3])]
		d := time.Duration(v * float64(unit))
		if string(lm[1]) == "50" {
			r.p50 = d
		} else {
			r.p99 = d
		}
	}
	if m := reReqs.FindSubmatch(out); m != nil {
		r.requests, _ = strconv.Atoi(string(m[1]))
	}
	if m := reErrs.FindSubmatch(out); m != nil {
		r.non2xx, _ = strconv.Atoi(string(m[1]))
	}
	if m := reSockEr.FindSubmatch(out); m != nil {
		for _, x := range m[1:] {
			n, _ := strconv.Atoi(string(x))
			r.sockErrors += n
		}
	}
	r.errors = r.non2xx + r.sockErrors
	return r, nil
}

var client = &http.Client{Transport: &http.Transport{
	MaxIdleConnsPerHost: 64,
	DisableCompression:  true, // measure the bytes as served
}}

// fetchNarinfo returns the URL and Compression a server's narinfo names.
func fetchNarinfo(ctx context.Context, base, hashPart string) (url, compression string, err error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/"+hashPart+".narinfo", nil)
	resp, err := client.Do(req)
	if err != nil {
		return "", "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return "", "", fmt.Errorf("GET %s.narinfo: %s", hashPart, resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	compression = "bzip2"
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), ": ")
		switch k {
		case "URL":
			url = v
		case "Compression":
			compression = v
		}
	}
	if url == "" {
		return "", "", fmt.Errorf("narinfo of %s has no URL", hashPart)
	}
	return base + "/" + url, compression, nil
}

// download GETs url n times concurrently, counting bytes; it returns the
// wall time for all of them.
func download(ctx context.Context, url string, n int) (time.Duration, int64, error) {
	var wg sync.WaitGroup
	errs := make(chan error, n)
	var total int64
	var mu sync.Mutex
	start := time.Now()
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
			resp, err := client.Do(req)
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			if resp.StatusCode != 200 {
				errs <- fmt.Errorf("GET %s: %s", url, resp.Status)
				return
			}
			c, err := io.Copy(io.Discard, resp.Body)
			if err != nil {
				errs <- err
				return
			}
			mu.Lock()
			total += c
			mu.Unlock()
		}()
	}
	wg.Wait()
	el := time.Since(start)
	close(errs)
	for err := range errs {
		return el, total, err
	}
	return el, total, nil
}

// checkNAR downloads the NAR a server announces for p and compares its hash
// with the NarHash Nix recorded. This is the correctness gate of the run.
func checkNAR(ctx context.Context, base string, p pathInfo) error {
	url, comp, err := fetchNarinfo(ctx, base, p.hashPart())
	if err != nil {
		return err
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	var body io.Reader = resp.Body
	switch comp {
	case "none":
	case "zstd":
		d, err := zstd.NewReader(resp.Body)
		if err != nil {
			return err
		}
		defer d.Close()
		body = d
	default:
		return fmt.Errorf("cannot check compression %q", comp)
	}
	h := sha256.New()
	n, err := io.Copy(h, body)
	if err != nil {
		return fmt.Errorf("reading %s: %w", url, err)
	}
	want, err := p.digest()
	if err != nil {
		return err
	}
	if n != p.NarSize || !bytes.Equal(h.Sum(nil), want) {
		return fmt.Errorf("%s: NAR of %s differs from nix-store --dump (%d bytes, want %d)", url, p.Path, n, p.NarSize)
	}
	return nil
}

// timeCmd runs a shell pipeline and returns its wall time.
func (b *bench) timeCmd(ctx context.Context, env []string, name string, args ...string) (time.Duration, error) {
	start := time.Now()
	_, err := b.runCmd(ctx, env, name, args...)
	return time.Since(start), err
}

// dumpToPipe times `nix-store --dump p` with its stdout read by this
// process and thrown away: "into a pipe", like a server would read it.
func dumpToPipe(ctx context.Context, p string) (time.Duration, int64, error) {
	cmd := exec.CommandContext(ctx, "nix-store", "--dump", p)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return 0, 0, err
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, 0, err
	}
	buf := make([]byte, 1<<20)
	n, err := io.CopyBuffer(io.Discard, out, buf)
	if werr := cmd.Wait(); err == nil {
		err = werr
	}
	return time.Since(start), n, err
}

func fileSize(p string) int64 {
	fi, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// minSteady and maxSteady bound steady's repetitions.
const (
	minSteady = time.Second
	maxSteady = 12
)

// steady times run, a measurement of a system that keeps no state from
// one run to the next (a warm cache, nginx, a tool reading a file in the
// page cache), again and again until the runs have taken minSteady in
// all, and returns the mean time of one. A single short run is mostly the
// noise of the moment it ran in: nginx sends the big NAR in a tenth of a
// second, and two full runs of the bench disagreed most on such figures.
// A cold measurement cannot be repeated and must not use it. With
// --quick it runs once.
func (b *bench) steady(run func() (time.Duration, error)) (time.Duration, error) {
	var total time.Duration
	n := 0
	for n < maxSteady && (n == 0 || (!b.o.quick && total < minSteady)) {
		d, err := run()
		if err != nil {
			return 0, err
		}
		total += d
		n++
	}
	return total / time.Duration(n), nil
}
