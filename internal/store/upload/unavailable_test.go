package upload_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/upload"
)

// downUpstream is the checking view of an upstream cache that does not
// answer.
func downUpstream() *servedStore {
	return &servedStore{err: fmt.Errorf("%w: GET https://cache.example/x.narinfo: connection refused", store.ErrUnavailable)}
}

// TestUnavailableUpstreamRefusesUpload: an upload that must be checked
// against an upstream that did not answer is refused with
// store.ErrUnavailable (503, the client retries), naming the path that
// could not be checked, and nothing is stored.
func TestUnavailableUpstreamRefusesUpload(t *testing.T) {
	ctx := context.Background()
	dep := newPath(t, "down-dep", []byte("only upstream has it"))
	top := newPath(t, "down-top", []byte("refers to dep"), dep.base)
	leaf := newPath(t, "down-leaf", []byte("refers to nothing"))
	for _, tc := range []struct {
		why  string
		p    *fakePath
		path string // named in the refusal
	}{
		{"a reference only an upstream could have", top, dep.info.StorePath},
		{"the path itself, which an upstream may serve otherwise", leaf, leaf.info.StorePath},
	} {
		local := &servedStore{}
		s := openStore(t, t.TempDir(), upload.Options{Others: []store.Store{local, downUpstream()}})
		err := tc.p.upload(ctx, s)
		if !errors.Is(err, store.ErrUnavailable) || !strings.Contains(err.Error(), "cannot check "+tc.path+" against an upstream cache") ||
			!strings.Contains(err.Error(), "connection refused") || !strings.HasSuffix(err.Error(), "retry") {
			t.Errorf("%s: upload = %v; want ErrUnavailable naming %s", tc.why, err, tc.path)
		}
		if _, err := s.PathInfo(ctx, tc.p.hash); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("%s: stored anyway: %v", tc.why, err)
		}
	}
}

// TestUnavailableUpstreamAfterAnotherStore: a reference another store has
// is present whatever an upstream answers; the upload is then refused
// only for the path itself, which the upstream may serve otherwise.
func TestUnavailableUpstreamAfterAnotherStore(t *testing.T) {
	ctx := context.Background()
	dep := newPath(t, "local-dep", []byte("the machine has it"))
	top := newPath(t, "local-top", []byte("refers to dep"), dep.base)
	local := &servedStore{infos: map[string]*store.PathInfo{dep.hash: localInfo(dep)}}
	s := openStore(t, t.TempDir(), upload.Options{Others: []store.Store{downUpstream(), local}})
	err := top.upload(ctx, s)
	if !errors.Is(err, store.ErrUnavailable) || !strings.Contains(err.Error(), "cannot check "+top.info.StorePath) {
		t.Fatalf("upload = %v; want ErrUnavailable for %s only", err, top.info.StorePath)
	}
}

// TestUpstreamWithoutThePath: an upstream that answers it lacks the path
// is a miss like any other store's.
func TestUpstreamWithoutThePath(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir(), upload.Options{Others: []store.Store{&servedStore{}}})
	dep := newPath(t, "miss-dep", []byte("nobody has it"))
	top := newPath(t, "miss-top", []byte("refers to dep"), dep.base)
	if err := top.upload(ctx, s); !errors.Is(err, store.ErrInvalid) || !strings.Contains(err.Error(), "references not in the cache") {
		t.Errorf("upload with a reference nobody has = %v; want ErrInvalid", err)
	}
	if err := dep.upload(ctx, s); err != nil {
		t.Errorf("upload of a path no upstream has: %v", err)
	}
}

// TestUploadOnUpstreamRefSurvivesReopen: an upload whose reference only
// an upstream has stays complete for the store's recovery at every Open,
// without asking the upstream: opened without the upstreams (`cache gc`),
// or with an upstream that is down, it is kept.
func TestUploadOnUpstreamRefSurvivesReopen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	dep := newPath(t, "upstream-dep", []byte("only upstream has it"))
	top := newPath(t, "upstream-top", []byte("refers to dep"), dep.base)
	info := localInfo(dep)
	info.Origin = "nixos"
	up := &servedStore{infos: map[string]*store.PathInfo{dep.hash: info}}
	s := openStore(t, dir, upload.Options{Others: []store.Store{up}})
	if err := top.upload(ctx, s); err != nil {
		t.Fatal(err)
	}
	s.Close()
	for _, others := range [][]store.Store{nil, {downUpstream()}, {&servedStore{}}} {
		s := openStore(t, dir, upload.Options{Others: others})
		if _, err := s.PathInfo(ctx, top.hash); err != nil {
			t.Errorf("others %v: the upload was dropped at open: %v", others, err)
		}
		s.Close()
	}
}
