package storetest_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/storetest"
	"github.com/bos55/concordia/pkg/narinfo"
)

// memStore is a minimal correct backend; its bugs are switched on by name
// to show that the suite catches them.
type memStore struct {
	paths map[string]*store.PathInfo // by hash part
	nars  map[string][]byte          // by store path
	bug   string
}

func newMemStore(t testing.TB, bug string) (*memStore, storetest.Fixture) {
	s := &memStore{paths: map[string]*store.PathInfo{}, nars: map[string][]byte{}, bug: bug}
	var fx storetest.Fixture
	var prev []string
	for i := range 3 {
		h := make([]byte, 20)
		rand.Read(h)
		p := "/nix/store/" + nixbase32.EncodeToString(h) + "-p" + string(rune('a'+i))
		nar := make([]byte, 100+i)
		rand.Read(nar)
		sum := sha256.Sum256(nar)
		refs := append(slices.Clone(prev), p)
		slices.Sort(refs)
		info := &store.PathInfo{StorePath: p, NarHash: sum[:], NarSize: uint64(len(nar)), References: refs, Registered: time.Unix(1, 0)}
		_, hp, _, _ := narinfo.ParseStorePath(p)
		s.paths[hp] = info
		s.nars[p] = nar
		fx.Paths = append(fx.Paths, storetest.Path{StorePath: p, NAR: nar, References: refs})
		prev = append(prev, p)
	}
	return s, fx
}

func (s *memStore) StoreDir() string { return "/nix/store" }

func (s *memStore) PathInfo(ctx context.Context, hashPart string) (*store.PathInfo, error) {
	if s.bug == "prefix-match" && len(hashPart) >= 31 {
		for h, info := range s.paths {
			if h[:31] == hashPart[:31] {
				return info, nil
			}
		}
	}
	info, ok := s.paths[hashPart]
	if !ok {
		if s.bug == "missing-is-500" {
			return nil, errors.New("boom")
		}
		return nil, store.ErrNotFound
	}
	c := *info
	switch s.bug {
	case "unsorted-refs":
		c.References = slices.Clone(c.References)
		slices.Reverse(c.References)
		if len(c.References) < 2 {
			c.References = append(c.References, c.References[0])
		}
	case "base-name-refs":
		c.References = []string{c.StorePath[len("/nix/store/"):]}
	case "wrong-hash":
		c.NarHash = make([]byte, 32)
	}
	return &c, nil
}

func (s *memStore) NAR(ctx context.Context, info *store.PathInfo, w io.Writer) error {
	nar, ok := s.nars[info.StorePath]
	if !ok {
		return store.ErrNotFound
	}
	if s.bug == "short-nar" {
		nar = nar[:len(nar)-1]
	}
	_, err := w.Write(nar)
	return err
}

// BuildLog makes memStore a Logger with no logs.
func (s *memStore) BuildLog(ctx context.Context, drv string) (io.ReadCloser, string, error) {
	if s.bug == "log-traversal" && strings.Contains(drv, "..") {
		return io.NopCloser(strings.NewReader("root:x:0:0")), "", nil
	}
	return nil, "", store.ErrNotFound
}

func TestMemStore(t *testing.T) {
	storetest.Run(t, func(t *testing.T) (store.Store, storetest.Fixture) {
		return newMemStore(t, "")
	})
}

// TestSuiteCatchesBugs runs the suite on broken stores, each in a child
// process because a failing subtest cannot be contained in this one.
func TestSuiteCatchesBugs(t *testing.T) {
	if os.Getenv("STORETEST_BUG") != "" {
		t.Skip("child")
	}
	for _, bug := range []string{"prefix-match", "missing-is-500", "unsorted-refs", "base-name-refs", "wrong-hash", "short-nar", "log-traversal"} {
		t.Run(bug, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestBrokenChild$", "-test.count=1")
			cmd.Env = append(os.Environ(), "STORETEST_BUG="+bug)
			out, err := cmd.CombinedOutput()
			if err == nil || !bytes.Contains(out, []byte("--- FAIL")) {
				t.Errorf("suite passed a store with bug %s:\n%s", bug, out)
			}
		})
	}
}

func TestBrokenChild(t *testing.T) {
	bug := os.Getenv("STORETEST_BUG")
	if bug == "" {
		t.Skip("only run by TestSuiteCatchesBugs")
	}
	storetest.Run(t, func(t *testing.T) (store.Store, storetest.Fixture) {
		return newMemStore(t, bug)
	})
}
