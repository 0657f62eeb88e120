package pgkv_test

import (
	"fmt"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/kv"
	"github.com/bos55/concordia/internal/kv/boltkv"
	"github.com/bos55/concordia/internal/testpg"
)

// BenchmarkViewGet is the store's commonest transaction, a View doing
// one Get, on bbolt and on PostgreSQL over a unix socket, from 1 and 64
// goroutines.
func BenchmarkViewGet(b *testing.B) {
	dbs := map[string]func(b *testing.B) kv.DB{
		"bolt": func(b *testing.B) kv.DB {
			db, err := boltkv.Open(filepath.Join(b.TempDir(), "index.db"), time.Second)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { db.Close() })
			return db
		},
		"pg": func(b *testing.B) kv.DB { return openURL(b, testpg.Shared(b).CreateDB(b)) },
	}
	for _, name := range []string{"bolt", "pg"} {
		db := dbs[name](b)
		if err := put(db, "k", "value"); err != nil {
			b.Fatal(err)
		}
		view := func() error {
			return db.View(func(tx kv.Tx) error {
				if v := tx.Bucket([]byte("b")).Get([]byte("k")); string(v) != "value" {
					return fmt.Errorf("read %q", v)
				}
				return nil
			})
		}
		for _, g := range []int{1, 64} {
			b.Run(fmt.Sprintf("%s/goroutines=%d", name, g), func(b *testing.B) {
				if g == 1 {
					for i := 0; i < b.N; i++ {
						if err := view(); err != nil {
							b.Fatal(err)
						}
					}
					return
				}
				b.SetParallelism((g + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if err := view(); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
		}
	}
}
