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
