package closure_test

import (
	"context"
	"testing"

	"github.com/bos55/concordia/internal/closure"
	"github.com/bos55/concordia/pkg/narinfo"
)

// TestWalkInfos: Walk keeps the narinfo of every path the cache has, and
// nothing for a path it lacks, with Check's result alongside.
func TestWalkInfos(t *testing.T) {
	sk, pk, err := narinfo.GenerateKey("cache-1")
	if err != nil {
		t.Fatal(err)
	}
	top, g := graph(3)
	c := storePath("c")
	_, srv := newFakeCache(t, g, sk, nil, map[string]bool{c: true})
	ck := &closure.Checker{Cache: srv.URL, Trusted: []narinfo.PublicKey{pk}}
	cl, err := ck.Walk(context.Background(), top)
	if err != nil {
		t.Fatal(err)
	}
	if len(cl.Infos) != cl.Paths || cl.Paths != len(g)-1 {
		t.Fatalf("%d infos, %d paths, want %d", len(cl.Infos), cl.Paths, len(g)-1)
	}
	for p := range g {
		info, ok := cl.Infos[p]
		if p == c {
			if ok {
				t.Errorf("an info for the missing %s", p)
			}
			continue
		}
		if !ok || info.StorePath != p {
			t.Errorf("no info for %s", p)
		}
	}
	if len(cl.Missing) != 1 || cl.Missing[0] != c {
		t.Errorf("missing %v", cl.Missing)
	}
}
