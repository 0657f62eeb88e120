package migrate_test

import (
	"context"
	"testing"

	"github.com/bos55/concordia/internal/migrate"
	"github.com/bos55/concordia/internal/sharedtest"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/upload"
)

func TestMain(m *testing.M) { sharedtest.Main(m) }

// TestMigrateToSharedAndBack: a disk store copied into S3 and PostgreSQL
// (real MinIO and PostgreSQL) keeps everything, byte for byte, and copied
// back into an empty disk store too.
func TestMigrateToSharedAndBack(t *testing.T) {
	ctx := context.Background()
	f := newFull(t)
	env := sharedtest.New(t)
	shared, err := upload.OpenBackend(ctx, env.Backend(t), upload.Options{Others: []store.Store{outside}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { shared.Close() })
	if rep, err := migrate.Run(ctx, f.src, shared, migrate.Options{}); err != nil {
		t.Fatalf("into S3 and PostgreSQL: %v (%+v)", err, rep)
	}
	checkSame(t, f, shared)
	back := open(t, t.TempDir())
	if rep, err := migrate.Run(ctx, shared, back, migrate.Options{}); err != nil {
		t.Fatalf("back to a disk store: %v (%+v)", err, rep)
	}
	checkSame(t, f, back)
}
