package upload_test

import (
	"context"
	"errors"
	"testing"

	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/bos55/concordia/internal/store/upload"
)

// TestOpenLocked: a store held open (as by a running `cache serve`) is
// ErrLocked to a second Open, which `cache gc` and friends match to point
// at --cache URL; it still says it is bbolt's lock timeout.
func TestOpenLocked(t *testing.T) {
	diskOnly(t) // the bbolt file\'s lock
	dir := t.TempDir()
	openStore(t, dir, upload.Options{})
	_, err := upload.Open(context.Background(), dir, upload.Options{})
	if !errors.Is(err, upload.ErrLocked) || !errors.Is(err, bolterrors.ErrTimeout) {
		t.Fatalf("second Open of a held store: %v; want ErrLocked", err)
	}
}
