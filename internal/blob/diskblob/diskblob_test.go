package diskblob

import (
	"testing"

	"github.com/bos55/concordia/internal/blob"
	"github.com/bos55/concordia/internal/blob/blobtest"
)

func TestContract(t *testing.T) {
	blobtest.Run(t, func(t *testing.T) blob.Dir {
		d, err := Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return d
	})
}

// TestSyncCounts: Sync fsyncs the directory, and SyncStats counts the
// calls and the fsyncs (one each for calls one after another).
func TestSyncCounts(t *testing.T) {
	d, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := d.Sync(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	if calls, syncs := d.SyncStats(); calls != 3 || syncs != 3 {
		t.Errorf("SyncStats = %d, %d, want 3, 3", calls, syncs)
	}
}
