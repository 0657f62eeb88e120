package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/bos55/concordia/internal/testminio"
	"github.com/bos55/concordia/internal/testpg"
)

// The shared backend: the upload store's files in an S3 bucket (a MinIO
// on loopback) and its index in PostgreSQL (on a unix socket), against
// the disk backend (files in upload.dir, index in pebble), both measured
// in the same run, interleaved A B A B. Every NAR downloaded is hashed
// and compared with the NarHash Nix recorded.

const (
	sysDisk   = "disk backend (upload.dir, pebble)"
	sysShared = "S3+PostgreSQL backend"
	sysOne    = "1 replica (S3+PostgreSQL)"
	sysTwo    = "2 replicas (S3+PostgreSQL)"
	sysRep1   = "replica 1 of 2"
	sysRep2   = "replica 2 of 2"

	distinctMetric = "every closure path in turn"
)

// sharedEnv is the group's PostgreSQL and MinIO servers.
type sharedEnv struct {
	pg     *testpg.Server
	mi     *testminio.Server
	secret string // file holding MinIO's secret key
}

func (b *bench) startSharedEnv(ctx context.Context) (*sharedEnv, error) {
	dir := filepath.Join(b.work, "shared")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	// PostgreSQL runs as postgres, which must reach its directory: under
	// the system temp dir, not the (private) work dir.
	pg, err := testpg.StartIn("", testpg.Options{})
	if err != nil {
		return nil, fmt.Errorf("PostgreSQL: %w", err)
	}
	mi, err := testminio.StartIn("", filepath.Join(dir, "minio"))
	if err != nil {
		pg.Stop()
		return nil, fmt.Errorf("MinIO: %w", err)
	}
	e := &sharedEnv{pg: pg, mi: mi, secret: filepath.Join(dir, "s3-secret")}
	if err := os.WriteFile(e.secret, []byte(mi.SecretKey+"\n"), 0o600); err != nil {
		e.stop()
		return nil, err
	}
	return e, ctx.Err()
}

func (e *sharedEnv) stop() {
	e.mi.Stop()
	e.pg.Stop()
}

// backend makes a fresh database and bucket and returns the
// [upload.s3] and [upload.database] tables of a cache on them (the
// default part size, as deployed).
func (e *sharedEnv) backend(ctx context.Context) (string, error) {
	db, err := e.pg.NewDB()
	if err != nil {
		return "", err
	}
	bucket, err := e.mi.NewBucket(ctx)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("\n[upload.s3]\nendpoint = %q\nbucket = %q\naccess_key_id = %q\nsecret_access_key_file = %q\n\n[upload.database]\nurl = %q\n",
		e.mi.Endpoint(), bucket, e.mi.AccessKey, e.secret, db), nil
}

// sharedNARSize is the download workload's NAR: random bytes, so what is
// moved is the file's size whatever the compression.
func (b *bench) sharedNARSize() int64 {
	if b.o.quick {
		return 8 << 20
	}
	return 128 << 20
}

// randomPath adds a directory holding one file of size seeded random
// bytes to the store (the same path on every run with the same name and
// size) and describes it.
func (b *bench) randomPath(ctx context.Context, name string, seed [32]byte, size int64) (pathInfo, error) {
	src := filepath.Join(b.work, fmt.Sprintf("%s-%d", name, size))
	if err := os.MkdirAll(src, 0o755); err != nil {
		return pathInfo{}, err
	}
	f, err := os.Create(filepath.Join(src, "random"))
	if err != nil {
		return pathInfo{}, err
	}
	rng := mrand.NewChaCha8(seed)
	buf := make([]byte, 1<<20)
	for n := int64(0); n < size; n += int64(len(buf)) {
		_, _ = rng.Read(buf)
		if _, err := f.Write(buf); err != nil {
			f.Close()
			return pathInfo{}, err
		}
	}
	if err := f.Close(); err != nil {
		return pathInfo{}, err
	}
	out, err := b.runCmd(ctx, nil, "nix-store", "--add", src)
	if err != nil {
		return pathInfo{}, err
	}
	infos, err := b.pathInfos(ctx, []string{strings.TrimSpace(out)})
	if err != nil {
		return pathInfo{}, err
	}
	return infos[0], nil
}

// copyTo runs nix copy --to a Concordia upload store.
func (b *bench) copyTo(ctx context.Context, up *uploadCache, compression string, paths ...string) (time.Duration, error) {
	args := []string{"--extra-experimental-features", "nix-command", "copy", "--to",
		up.srv.base + "?compression=" + compression, "--option", "netrc-file", up.netrc}
	return b.timeCmd(ctx, nil, "nix", append(args, paths...)...)
}

// downloadHashed GETs every url at once, hashing each body as it
// arrives; each must be size bytes with SHA-256 want (the NarHash of an
// uncompressed NAR). It returns the wall time for all of them.
func downloadHashed(ctx context.Context, urls []string, size int64, want []byte) (time.Duration, error) {
	var wg sync.WaitGroup
	errs := make(chan error, len(urls))
	start := time.Now()
	for _, u := range urls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
			resp, err := client.Do(req)
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				errs <- fmt.Errorf("GET %s: %s", u, resp.Status)
				return
			}
			h := sha256.New()
			n, err := io.CopyBuffer(h, resp.Body, make([]byte, 256<<10))
			if err != nil {
				errs <- fmt.Errorf("reading %s: %w", u, err)
				return
			}
			if n != size || !bytes.Equal(h.Sum(nil), want) {
				errs <- fmt.Errorf("%s: %d bytes with another hash than the NAR's (%d bytes)", u, n, size)
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	close(errs)
	for err := range errs {
		return el, err
	}
	return el, nil
}

// asStored is the URL of p's NAR file on a server, as the narinfo names
// it: the workload is uploaded uncompressed and the servers announce
// none, so the file is sent as it is kept.
func asStored(ctx context.Context, base string, p pathInfo) (string, error) {
	url, comp, err := fetchNarinfo(ctx, base, p.hashPart())
	if err != nil {
		return "", err
	}
	if comp != "none" || !strings.HasSuffix(url, ".nar") {
		return "", fmt.Errorf("%s announces %s (compression %s), want the uncompressed file as uploaded", base, url, comp)
	}
	return url, nil
}

func repeat(s string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = s
	}
	return out
}

// wrkPaths writes a wrk script that requests paths in turn (each wrk
// thread from its own place in the list).
func (b *bench) wrkPaths(name string, paths []string) (string, error) {
	var sb strings.Builder
	sb.WriteString("local paths = {\n")
	for _, p := range paths {
		fmt.Fprintf(&sb, "  %q,\n", p)
	}
	sb.WriteString("}\nlocal i = math.random(#paths)\nrequest = function()\n  i = i % #paths + 1\n  return wrk.format(\"GET\", paths[i])\nend\n")
	f := filepath.Join(b.work, name+".lua")
	return f, os.WriteFile(f, []byte(sb.String()), 0o644)
}

// benchShared measures the S3+PostgreSQL backend against the disk one:
// closure upload time, NAR download, narinfo req/s, then two replicas
// against one for 16 concurrent downloads and each replica's peak RSS.
func (b *bench) benchShared(ctx context.Context) error {
	env, err := b.startSharedEnv(ctx)
	if err != nil {
		return err
	}
	defer env.stop()
	nar, err := b.randomPath(ctx, "shared-src", [32]byte{'s', 'h', 'a', 'r', 'e', 'd'}, b.sharedNARSize())
	if err != nil {
		return fmt.Errorf("shared workload: %w", err)
	}
	want, err := nar.digest()
	if err != nil {
		return err
	}
	b.rep.loads = append(b.rep.loads, fmt.Sprintf("shared backend: the closure (%d paths) uploaded with nix copy --to ?compression=zstd; downloads of `%s`, NAR %.1f MB of random bytes uploaded uncompressed; MinIO and PostgreSQL 15 on loopback/unix socket",
		len(b.w.closure), nar.Path, float64(nar.NarSize)/1e6))

	// Uploads: each run into empty stores, the disk one then the shared
	// one on a fresh database and bucket. The last run's stores stay for
	// the download and narinfo measurements.
	top := b.w.closure[len(b.w.closure)-1].Path
	stateDisk := filepath.Join(b.work, "state-shared-disk")
	stateS3 := filepath.Join(b.work, "state-shared-s3")
	var disk, shared *uploadCache
	var tables string
	defer func() {
		for _, u := range []*uploadCache{disk, shared} {
			if u != nil {
				b.procs.stop(u.srv.cmd)
			}
		}
	}()
	narMetric := fmt.Sprintf("seconds, upload one %.0f MB NAR", float64(nar.NarSize)/1e6)
	// Every measurement below runs the backends one after another in
	// each round (uploads, downloads, narinfo load, replicas): paired
	// ratios.
	b.rep.pair("shared")
	for i := 0; i < b.o.runs; i++ {
		for _, s3 := range []bool{false, true} {
			name, state, cur := sysDisk, stateDisk, &disk
			if s3 {
				name, state, cur = sysShared, stateS3, &shared
			}
			if *cur != nil {
				b.procs.stop((*cur).srv.cmd)
				*cur = nil
			}
			_ = os.RemoveAll(state)
			be := ""
			if s3 {
				if tables, err = env.backend(ctx); err != nil {
					return err
				}
				be = tables
			}
			up, err := b.startUploadServer(ctx, b.cacheBin, name, "none", state, "", be)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			*cur = up
			d, err := b.copyTo(ctx, up, "zstd", top)
			if err != nil {
				return fmt.Errorf("%s: upload: %w", name, err)
			}
			b.rep.add("shared", name, "seconds, upload closure", d.Seconds())
			if d, err = b.copyTo(ctx, up, "none", nar.Path); err != nil {
				return fmt.Errorf("%s: upload: %w", name, err)
			}
			b.rep.add("shared", name, narMetric, d.Seconds())
		}
	}
	servers := []*server{disk.srv, shared.srv}
	urls := map[*server]string{}
	for _, s := range servers {
		for _, p := range []pathInfo{nar, b.w.closure[0], b.w.closure[len(b.w.closure)/2], b.w.closure[len(b.w.closure)-1]} {
			if err := checkNAR(ctx, s.base, p); err != nil {
				b.fail(s.name, err)
			}
		}
		u, err := asStored(ctx, s.base, nar)
		if err != nil {
			return err
		}
		urls[s] = u
	}

	// NAR downloads, the file as stored.
	for i := 0; i < b.o.runs; i++ {
		for _, s := range servers {
			for _, n := range []int{1, 8} {
				d, err := downloadHashed(ctx, repeat(urls[s], n), nar.NarSize, want)
				if err != nil {
					b.fail(s.name, err)
					continue
				}
				b.rep.add("shared", s.name, fmt.Sprintf("MB/s, %d stream%s", n, plural(n)), mbps(nar.NarSize*int64(n), d))
			}
		}
	}

	if err := b.sharedNarinfo(ctx, servers); err != nil {
		return err
	}

	// Replicas: fresh processes per run, so each peak RSS is of the 16
	// downloads alone. The long-lived servers go first (the disk store's
	// index allows one process).
	b.procs.stop(disk.srv.cmd)
	b.procs.stop(shared.srv.cmd)
	disk, shared = nil, nil
	return b.sharedReplicas(ctx, env, tables, stateDisk, nar, want)
}

// sharedNarinfo: wrk against each backend, interleaved: one path (the
// narinfo cache's hit path), every closure path in turn (the cache, each
// entry re-checked against the index once its second is up), and absent
// paths (every request a lookup in the index, answered 404).
func (b *bench) sharedNarinfo(ctx context.Context, servers []*server) error {
	p := b.w.closure[len(b.w.closure)/2]
	var distinct []string
	for _, c := range b.w.closure {
		distinct = append(distinct, "/"+c.hashPart()+".narinfo")
	}
	var absent []string
	for i := 0; i < 1000; i++ {
		absent = append(absent, "/"+randomHashPart()+".narinfo")
	}
	distinctLua, err := b.wrkPaths("shared-distinct", distinct)
	if err != nil {
		return err
	}
	absentLua, err := b.wrkPaths("shared-absent", absent)
	if err != nil {
		return err
	}
	for _, s := range servers {
		for _, q := range distinct[:3] {
			if err := expectStatus(ctx, s.base+q, http.StatusOK); err != nil {
				b.fail(s.name, err)
			}
		}
		if err := expectStatus(ctx, s.base+absent[0], http.StatusNotFound); err != nil {
			b.fail(s.name, err)
		}
	}
	type load struct {
		metric, script string
		conns          int
		absent         bool
	}
	loads := []load{
		{"req/s, 1 connection, one path", "", 1, false},
		{"req/s, 64 connections, one path", "", 64, false},
		{"req/s, 1 connection, " + distinctMetric, distinctLua, 1, false},
		{"req/s, 64 connections, " + distinctMetric, distinctLua, 64, false},
		{"req/s, 64 connections, absent paths (404)", absentLua, 64, true},
	}
	for i := 0; i < b.o.runs; i++ {
		for _, s := range servers {
			for _, l := range loads {
				threads := 1
				if l.conns > 1 {
					threads = 2
				}
				r, err := b.runWrkScript(ctx, s.base+"/"+p.hashPart()+".narinfo", threads, l.conns, l.script)
				if err != nil {
					return err
				}
				bad := r.errors
				if l.absent {
					// every answer must be a 404: only socket errors and
					// answers other than non-2xx count against it
					bad = r.sockErrors + (r.requests - r.non2xx)
				}
				if bad > 0 {
					b.fail(s.name, fmt.Errorf("%d failed narinfo requests under load (%s)", bad, l.metric))
				}
				b.rep.add("shared", s.name, l.metric, r.rps)
				if l.conns == 1 && l.script == "" {
					b.rep.add("shared", s.name, sharedP99, float64(r.p99.Microseconds()))
				}
			}
		}
	}
	// More rounds of the tail alone: one round's p99 ratio ranged
	// 0.66-1.48 within a run (MinIO and PostgreSQL share the cores), and
	// the median of five moved by 1.43 between two full runs.
	for i := 0; i < 2*b.o.runs && !b.o.quick; i++ {
		for _, s := range inRound(servers, i) {
			r, err := b.runWrk(ctx, s.base+"/"+p.hashPart()+".narinfo", 1, 1)
			if err != nil {
				return err
			}
			if r.errors > 0 {
				b.fail(s.name, fmt.Errorf("%d failed narinfo requests (%s)", r.errors, sharedP99))
			}
			b.rep.add("shared", s.name, sharedP99, float64(r.p99.Microseconds()))
		}
	}
	return nil
}

// sharedP99 is the tail figure of the shared group.
const sharedP99 = "p99 us, 1 connection, one path"

// expectStatus GETs url and wants status.
func expectStatus(ctx context.Context, url string, status int) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	_, _ = drain(resp)
	if resp.StatusCode != status {
		return fmt.Errorf("GET %s: %d, want %d", url, resp.StatusCode, status)
	}
	return nil
}

// sharedReplicas: 16 concurrent downloads of the NAR from the disk
// backend, from one replica, and split 8 and 8 over two replicas on one
// bucket and database (A B C A B C), with each process's peak RSS.
func (b *bench) sharedReplicas(ctx context.Context, env *sharedEnv, tables, stateDisk string, nar pathInfo, want []byte) error {
	const clients = 16
	metric := fmt.Sprintf("MB/s, %d downloads", clients)
	rssMetric := fmt.Sprintf("peak RSS MiB, %d downloads", clients)
	replica := func(name string, k int) (*uploadCache, error) {
		state := filepath.Join(b.work, fmt.Sprintf("state-shared-replica-%d", k))
		_ = os.RemoveAll(state)
		return b.startUploadServer(ctx, b.cacheBin, name, "none", state, "", tables)
	}
	// run downloads from the servers, clients split evenly, and records
	// throughput under name and each server's peak RSS under its own.
	run := func(name string, ups []*uploadCache, rssNames []string) error {
		defer func() {
			for _, u := range ups {
				b.procs.stop(u.srv.cmd)
			}
		}()
		var urls []string
		for _, u := range ups {
			url, err := asStored(ctx, u.srv.base, nar)
			if err != nil {
				return err
			}
			urls = append(urls, repeat(url, clients/len(ups))...)
		}
		d, err := downloadHashed(ctx, urls, nar.NarSize, want)
		if err != nil {
			b.fail(name, err)
			return nil
		}
		b.rep.add("shared", name, metric, mbps(nar.NarSize*clients, d))
		for k, u := range ups {
			b.rep.add("shared", rssNames[k], rssMetric, float64(peakRSS(u.srv.cmd.Process.Pid))/(1<<20))
		}
		return nil
	}
	for i := 0; i < b.o.runs; i++ {
		d, err := b.startUploadServer(ctx, b.cacheBin, sysDisk, "none", stateDisk, "", "")
		if err != nil {
			return err
		}
		if err := run(sysDisk, []*uploadCache{d}, []string{sysDisk}); err != nil {
			return err
		}
		one, err := replica(sysOne, 0)
		if err != nil {
			return err
		}
		if err := run(sysOne, []*uploadCache{one}, []string{sysOne}); err != nil {
			return err
		}
		r1, err := replica(sysRep1, 1)
		if err != nil {
			return err
		}
		r2, err := replica(sysRep2, 2)
		if err != nil {
			b.procs.stop(r1.srv.cmd)
			return err
		}
		if err := run(sysTwo, []*uploadCache{r1, r2}, []string{sysRep1, sysRep2}); err != nil {
			return err
		}
	}
	b.rep.add("shared", "MinIO (the whole group)", "peak RSS MiB, whole group", float64(peakRSS(env.mi.Pid()))/(1<<20))
	return nil
}
