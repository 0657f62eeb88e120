package upload

import (
	"encoding/json"
	"path/filepath"
	"testing"

	"github.com/bos55/concordia/internal/kv"
	"github.com/bos55/concordia/internal/kv/boltkv"
)

// TestHasBase checks the fast path of hasBase against a full decode, for
// records as json.Marshal writes them and for odd ones it does not.
func TestHasBase(t *testing.T) {
	db, err := boltkv.Open(filepath.Join(t.TempDir(), "db"), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	const hp = "0123456789abcdfghijklmnpqrsvwxyz"
	marshal := func(sp string) []byte {
		b, err := json.Marshal(pathRec{StorePath: sp, Blob: "x.nar"})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, tc := range []struct {
		name   string
		record []byte
		base   string
		want   bool
	}{
		{"exact", marshal("/nix/store/" + hp + "-hello"), hp + "-hello", true},
		{"other name", marshal("/nix/store/" + hp + "-hello"), hp + "-hell", false},
		{"longer name", marshal("/nix/store/" + hp + "-hell"), hp + "-hello", false},
		{"other store", marshal("/gnu/store/" + hp + "-hello"), hp + "-hello", false},
		{"escaped", []byte(`{"storePath":"\/nix\/store\/` + hp + `-hello","blob":"x"}`), hp + "-hello", true},
		{"field order", []byte(`{"blob":"x","storePath":"/nix/store/` + hp + `-hello"}`), hp + "-hello", true},
		{"garbage", []byte(`{"storePath":`), hp + "-hello", false},
		{"absent", nil, hp + "-hello", false},
	} {
		err := db.Update(func(tx kv.Tx) error {
			b, err := tx.CreateBucketIfNotExists(bPaths)
			if err != nil {
				return err
			}
			b.Delete([]byte(hp))
			if tc.record != nil {
				if err := b.Put([]byte(hp), tc.record); err != nil {
					return err
				}
			}
			if got := hasBase(b, "/nix/store", tc.base); got != tc.want {
				t.Errorf("%s: hasBase = %v, want %v", tc.name, got, tc.want)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}
