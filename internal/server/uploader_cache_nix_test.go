package server_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestUploaderNarinfoCache: Nix keeps the narinfo it uploaded in its own
// disk cache (binary-cache-v6.sqlite under XDG_CACHE_HOME, positive TTL 30
// days) as it sent it, without the signature the cache adds. So a CI
// runner that uploads and later substitutes the same paths, trusting only
// the cache's key, fails "lacks a valid signature": the first half shows
// it with one shared client cache, on purpose. The remedy the example
// workflow and the README give: the upload step runs with a throwaway
// XDG_CACHE_HOME, and the runner's later substitution asks the cache; or
// the later command passes narinfo-cache-positive-ttl 0.
func TestUploaderNarinfoCache(t *testing.T) {
	if testing.Short() {
		t.Skip("runs nix")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	e := newUpEnv(t, t.TempDir(), false)
	netrc := writeNetrc(t, "ci", e.writeTok)
	to := e.url + "?compression=zstd"
	substitute := func(n *nixClient, top string, opts ...string) error {
		dst := filepath.Join(t.TempDir(), "dst")
		args := append([]string{"copy", "--option", "trusted-public-keys", e.key.Public().String(),
			"--option", "require-sigs", "true"}, opts...)
		_, err := n.run(ctx, "nix", append(args, "--from", e.url, "--to", dst, top)...)
		return err
	}

	t.Run("shared", func(t *testing.T) {
		runner := newNixClient(t)
		top, _ := buildUpClosure(t, runner)
		if _, err := runner.run(ctx, "nix", "copy", "--option", "netrc-file", netrc, "--to", to, top); err != nil {
			t.Fatal(err)
		}
		err := substitute(runner, top)
		if err == nil || !strings.Contains(err.Error(), "lacks a valid signature") {
			t.Fatalf("substituting through the uploader's own narinfo cache: %v; want the client's 'lacks a valid signature' (if this passes, the client no longer caches what it uploaded: drop the remedy)", err)
		}
		// The reader-side way out: do not believe the disk cache.
		if err := substitute(runner, top, "--option", "narinfo-cache-positive-ttl", "0"); err != nil {
			t.Fatalf("with narinfo-cache-positive-ttl 0: %v", err)
		}
	})

	t.Run("throwaway", func(t *testing.T) {
		runner := newNixClient(t)
		top, _ := buildUpClosure(t, runner)
		upload := *runner
		upload.cacheHome = t.TempDir()
		if _, err := upload.run(ctx, "nix", "copy", "--option", "netrc-file", netrc, "--to", to, top); err != nil {
			t.Fatal(err)
		}
		if err := substitute(runner, top); err != nil {
			t.Fatalf("after an upload with its own narinfo cache: %v", err)
		}
	})
}
