package compress_test

import (
	"testing"

	"github.com/bos55/concordia/internal/nartest"

	"github.com/klauspost/compress/zstd"
)

func testData(n int, seed int64) []byte { return nartest.Mixed(n, seed) }

func unzstd(t testing.TB, b []byte) []byte {
	t.Helper()
	d, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	out, err := d.DecodeAll(b, nil)
	if err != nil {
		t.Fatalf("decode zstd: %v", err)
	}
	return out
}
