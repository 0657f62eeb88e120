package local_test

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/bos55/concordia/internal/store/local"
)

// benchDB is a chroot store whose database was grown to the size of a busy
// NixOS machine's (benchPaths paths, each with a few references), so that
// lookups walk a realistically deep B-tree.
type benchDB struct {
	n      *nixStore
	hashes []string
}

const benchPaths = 100_000

func newBenchDB(b *testing.B) *benchDB {
	n := newChrootStore(b)
	n.build(b, "a")
	db, err := sql.Open("sqlite3", n.dbPath())
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	tx, err := db.Begin()
	if err != nil {
		b.Fatal(err)
	}
	insPath, _ := tx.Prepare(`INSERT INTO ValidPaths (path, hash, registrationTime, deriver, narSize, sigs) VALUES (?, ?, 1700000000, ?, 4242, ?)`)
	insRef, _ := tx.Prepare(`INSERT INTO Refs (referrer, reference) VALUES (?, ?)`)
	bd := &benchDB{n: n}
	for i := range benchPaths {
		h := rand32(b)
		res, err := insPath.Exec("/nix/store/"+h+"-bench-"+fmt.Sprint(i),
			"sha256:"+fmt.Sprintf("%064x", i), "/nix/store/"+rand32(b)+"-bench.drv", "cache.example.org-1:c2lnbmF0dXJl")
		if err != nil {
			b.Fatal(err)
		}
		id, _ := res.LastInsertId()
		for j := int64(1); j <= 5 && id-7*j > 0; j++ {
			if _, err := insRef.Exec(id, id-7*j); err != nil {
				b.Fatal(err)
			}
		}
		bd.hashes = append(bd.hashes, h)
	}
	if err := tx.Commit(); err != nil {
		b.Fatal(err)
	}
	return bd
}

// BenchmarkPathInfo is one narinfo's worth of database work: the lookup by
// hash part, references included, and the conversion to a PathInfo.
func BenchmarkPathInfo(b *testing.B) {
	bd := newBenchDB(b)
	s, err := local.Open(context.Background(), local.Options{DBPath: bd.n.dbPath(), RealStoreDir: bd.n.realDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	b.Run("hit", func(b *testing.B) {
		defer cpuPerOp(b)()
		i := 0
		for b.Loop() {
			if _, err := s.PathInfo(ctx, bd.hashes[i%len(bd.hashes)]); err != nil {
				b.Fatal(err)
			}
			i += 7919
		}
	})
	b.Run("hit-request-ctx", func(b *testing.B) {
		// A request's context can be canceled, unlike Background.
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		defer cpuPerOp(b)()
		i := 0
		for b.Loop() {
			if _, err := s.PathInfo(ctx, bd.hashes[i%len(bd.hashes)]); err != nil {
				b.Fatal(err)
			}
			i += 7919
		}
	})
	b.Run("miss", func(b *testing.B) {
		h := rand32(b)
		defer cpuPerOp(b)()
		for b.Loop() {
			if _, err := s.PathInfo(ctx, h); err == nil {
				b.Fatal("found a random path")
			}
		}
	})
	b.Run("ref-raw-query", func(b *testing.B) { rawQuery(b, bd) })
	b.Run("hit-parallel", func(b *testing.B) {
		var next atomic.Int64
		defer cpuPerOp(b)()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				i := next.Add(7919)
				if _, err := s.PathInfo(ctx, bd.hashes[i%int64(len(bd.hashes))]); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// rawQuery is the reference for BenchmarkPathInfo: the cheapest
// lookup database/sql and SQLite allow, Nix's own QueryPathFromHashPart
// statement returning the path alone, through a prepared statement on a
// read-only connection.
func rawQuery(b *testing.B, bd *benchDB) {
	u := url.URL{Scheme: "file", Path: bd.n.dbPath(), RawQuery: "mode=ro"}
	db, err := sql.Open("sqlite3", u.String())
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	stmt, err := db.Prepare(`SELECT path FROM ValidPaths WHERE path >= ? LIMIT 1`)
	if err != nil {
		b.Fatal(err)
	}
	defer stmt.Close()
	defer cpuPerOp(b)()
	i := 0
	for b.Loop() {
		var p string
		if err := stmt.QueryRow("/nix/store/" + bd.hashes[i%len(bd.hashes)]).Scan(&p); err != nil {
			b.Fatal(err)
		}
		i += 7919
	}
}

// cpuPerOp reports the process's CPU time (user+system) per operation:
// on a shared 2-core CI machine wall time per op mostly measures the
// neighbours, CPU time what a lookup costs.
func cpuPerOp(b *testing.B) func() {
	start := cpuTime(b)
	return func() {
		b.ReportMetric(float64(cpuTime(b)-start)/float64(b.N), "cpu-ns/op")
	}
}

func cpuTime(b *testing.B) int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
