package fleettest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Cache is the binary cache the simulated hosts substitute from. Swapping
// in Concordia's own cache server means one more implementation of this.
type Cache interface {
	URL() string       // what the hosts' nix.conf lists as substituter
	PublicKey() string // "name:base64", trusted by the hosts
	// Publish makes paths (with their closures) available, signed.
	Publish(ctx context.Context, paths ...string) error
}

// UnsignedPublisher is a cache that can also serve paths without signatures
// (to prove hosts refuse them).
type UnsignedPublisher interface {
	PublishUnsigned(ctx context.Context, paths ...string) error
}

// WithFileCache is an Options.Cache for tests that need unsigned paths in
// the cache (PublishUnsigned), which Concordia's cache never serves.
func WithFileCache(t testing.TB) Cache { return NewFileCache(t) }

// FileCache is a stand-in for the Concordia cache: `nix copy --to
// file://dir` (what CI does towards a cache) plus an http.FileServer on
// 127.0.0.1:0. Signed with a key made by nix-store --generate-binary-cache-key.
type FileCache struct {
	Dir    string
	secret string
	public string
	url    string
	env    []string
}

// NewFileCache starts a file-backed cache for the test; it stops at cleanup.
func NewFileCache(t testing.TB) *FileCache {
	t.Helper()
	tmp := t.TempDir()
	c := &FileCache{Dir: filepath.Join(tmp, "cache"), env: nixEnv(t)}
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	c.secret, c.public = filepath.Join(tmp, "key.sec"), filepath.Join(tmp, "key.pub")
	out, err := command(c.env, "nix-store", "--generate-binary-cache-key", "fleettest-cache-1", c.secret, c.public).CombinedOutput()
	if err != nil {
		t.Fatalf("generate cache key: %v: %s", err, out)
	}
	pub, err := os.ReadFile(c.public)
	if err != nil {
		t.Fatal(err)
	}
	c.public = strings.TrimSpace(string(pub))
	// nix copy writes nix-cache-info on first use; write it now so the hosts
	// see a cache even before anything is published.
	os.WriteFile(filepath.Join(c.Dir, "nix-cache-info"), []byte("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n"), 0o644)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.FileServer(http.Dir(c.Dir))}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	c.url = "http://" + ln.Addr().String()
	return c
}

// URL implements Cache.
func (c *FileCache) URL() string { return c.url }

// PublicKey implements Cache.
func (c *FileCache) PublicKey() string { return c.public }

// Publish implements Cache.
func (c *FileCache) Publish(ctx context.Context, paths ...string) error {
	return c.copy(ctx, "file://"+c.Dir+"?compression=none&secret-key="+c.secret, paths)
}

// PublishUnsigned copies paths into the cache without a signature, their
// dependencies signed: a CI that forgot to sign its own build, the rest
// of the closure (the kernel a signed system of the fleet shares, say)
// from a cache that signs. Otherwise a later Publish of a system sharing
// a dependency would leave it unsigned (nix copy skips what the cache has).
func (c *FileCache) PublishUnsigned(ctx context.Context, paths ...string) error {
	deps, err := dependencies(c.env, paths)
	if err != nil {
		return err
	}
	if len(deps) > 0 {
		if err := c.Publish(ctx, deps...); err != nil {
			return err
		}
	}
	return c.copy(ctx, "file://"+c.Dir+"?compression=none", paths)
}

func (c *FileCache) copy(ctx context.Context, to string, paths []string) error {
	if len(paths) == 0 {
		return errors.New("nothing to publish")
	}
	args := append([]string{"--extra-experimental-features", "nix-command", "copy", "--to", to}, paths...)
	cmd := command(c.env, "nix", args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("nix copy to the cache: %v: %s", err, out)
	}
	return nil
}

// nixEnv gives a test's nix commands their own HOME and cache dir.
func nixEnv(t testing.TB) []string {
	home := t.TempDir()
	return []string{"HOME=" + home, "XDG_CACHE_HOME=" + filepath.Join(home, ".cache"), "NIX_PATH="}
}

func command(env []string, name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	return cmd
}

// dependencies lists the closure of paths (in the machine's store) without
// paths themselves.
func dependencies(env []string, paths []string) ([]string, error) {
	args := append([]string{"--query", "--requisites"}, paths...)
	out, err := command(env, "nix-store", args...).Output()
	if err != nil {
		return nil, fmt.Errorf("closure of %v: %v", paths, err)
	}
	top := map[string]bool{}
	for _, p := range paths {
		top[p] = true
	}
	var deps []string
	for _, p := range strings.Fields(string(out)) {
		if !top[p] {
			deps = append(deps, p)
		}
	}
	return deps, nil
}
