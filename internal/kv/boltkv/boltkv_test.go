package boltkv_test

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/kv"
	"github.com/bos55/concordia/internal/kv/boltkv"
	"github.com/bos55/concordia/internal/kv/kvtest"
)

func open(t *testing.T) kv.DB {
	db, err := boltkv.Open(filepath.Join(t.TempDir(), "index.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func TestCompliance(t *testing.T) { kvtest.Run(t, open) }
