package fleettest

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// ConcordiaCache is Concordia's own cache server (`cache serve`) with only
// its upload store: paths reach it the way CI pushes them, `nix copy --to
// http://…` with the upload token from a netrc file, and the hosts fetch
// them from it with its signatures. Nothing of the machine's store is served
// unless published, so "missing from the cache" can still be tested.
type ConcordiaCache struct {
	url, public, netrc string
	// deployNetrc holds the deploy job's token (read,pin), adminToken an
	// operator's (admin): the upload token can do neither's work.
	deployNetrc, adminToken string
	env                     []string
}

// NewConcordiaCache builds ./cmd/cache and starts it on 127.0.0.1:0 for the
// test; it is stopped at cleanup. It returns an error (the caller may fall
// back to NewFileCache) when the cache does not build or start.
func NewConcordiaCache(t testing.TB) (*ConcordiaCache, error) {
	t.Helper()
	return newConcordiaCache(t, "")
}

// newConcordiaCache is NewConcordiaCache with extra appended to its
// config file (more tables, e.g. [[upstream]]).
func newConcordiaCache(t testing.TB, extra string) (*ConcordiaCache, error) {
	t.Helper()
	dir := t.TempDir()
	c := &ConcordiaCache{env: nixEnv(t)}
	bin, err := processBinary("./cmd/cache")
	if err != nil {
		return nil, err
	}
	sec, pub := filepath.Join(dir, "key.sec"), filepath.Join(dir, "key.pub")
	if out, err := command(c.env, "nix-store", "--generate-binary-cache-key", "fleettest-concordia-1", sec, pub).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("generate key: %v %s", err, out)
	}
	b, err := os.ReadFile(pub)
	if err != nil {
		return nil, err
	}
	c.public = strings.TrimSpace(string(b))
	token, deployToken := randHex(16), randHex(16)
	c.adminToken = randHex(16)
	line := func(name, perm, tok string) string {
		sum := sha256.Sum256([]byte(tok))
		return name + ":" + perm + ":" + hex.EncodeToString(sum[:]) + "\n"
	}
	tokens := filepath.Join(dir, "tokens")
	if err := os.WriteFile(tokens, []byte(line("fleettest-ci", "read,write", token)+line("fleettest-deploy", "read,pin", deployToken)+
		line("fleettest-admin", "admin", c.adminToken)), 0o600); err != nil {
		return nil, err
	}
	cfg := fmt.Sprintf("bind = \"127.0.0.1:0\"\nnix_db_path = \"\"\nsign_key_paths = [%q]\ncompression = \"none\"\nstate_dir = %q\n\n[upload]\ndir = %q\ntokens_file = %q\n",
		sec, filepath.Join(dir, "state"), filepath.Join(dir, "uploads"), tokens) + extra
	cfgPath := filepath.Join(dir, "cache.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "serve", "--config", cfgPath)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(dir, "cache.log"))
	if err != nil {
		return nil, err
	}
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		logf.Close()
	})
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if _, addr, ok := strings.Cut(sc.Text(), " on http://"); ok {
				lines <- "http://" + strings.TrimSpace(addr)
			}
		}
	}()
	select {
	case c.url = <-lines:
	case <-time.After(30 * time.Second):
		b, _ := os.ReadFile(filepath.Join(dir, "cache.log"))
		return nil, fmt.Errorf("cache serve did not start: %s", b)
	}
	host := strings.TrimPrefix(c.url, "http://")
	host, _, _ = strings.Cut(host, ":")
	c.netrc = filepath.Join(dir, "netrc")
	if err := os.WriteFile(c.netrc, []byte(fmt.Sprintf("machine %s login ci password %s\n", host, token)), 0o600); err != nil {
		return nil, err
	}
	c.deployNetrc = filepath.Join(dir, "deploy-netrc")
	if err := os.WriteFile(c.deployNetrc, []byte(fmt.Sprintf("machine %s login deploy password %s\n", host, deployToken)), 0o600); err != nil {
		return nil, err
	}
	return c, nil
}

// URL implements Cache.
func (c *ConcordiaCache) URL() string { return c.url }

// PublicKey implements Cache.
func (c *ConcordiaCache) PublicKey() string { return c.public }

// Netrc is the netrc file holding the cache's upload token (read,write),
// as the CI build job hands it to `nix copy --to`.
func (c *ConcordiaCache) Netrc() string { return c.netrc }

// DeployNetrc is the netrc file holding the deploy job's token (read,pin),
// as it hands it to `deployer push --netrc-file` (closure checks, pins).
func (c *ConcordiaCache) DeployNetrc() string { return c.deployNetrc }

// AdminToken is an operator's token (admin): GC, verify, the pin list.
func (c *ConcordiaCache) AdminToken() string { return c.adminToken }

// Publish uploads paths with `nix copy --to`, as CI does.
func (c *ConcordiaCache) Publish(ctx context.Context, paths ...string) error {
	args := append([]string{"--extra-experimental-features", "nix-command", "copy", "--option", "netrc-file", c.netrc,
		"--to", c.url + "?compression=none"}, paths...)
	cmd := command(c.env, "nix", args...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nix copy to the Concordia cache: %v: %s", err, out)
	}
	return nil
}

// DefaultCache is the cache a fleet gets without Options.Cache: Concordia's
// own cache server, or, when it does not build or start, the file cache
// stand-in (logged).
func DefaultCache(t testing.TB) Cache {
	t.Helper()
	if os.Getenv("FLEETTEST_CACHE") != "file" {
		c, err := NewConcordiaCache(t)
		if err == nil {
			return c
		}
		t.Logf("fleettest: Concordia cache unavailable (%v); using the file cache", err)
	}
	return NewFileCache(t)
}
