package config_test

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bos55/concordia/internal/config"
)

// TestLoadEnv: Harmonia's CONFIG_FILE names the file when no path is
// given (and loses to one), and SIGN_KEY_PATH then SIGN_KEY_PATHS add
// keys after the file's.
func TestLoadEnv(t *testing.T) {
	dir := t.TempDir()
	envFile, flagFile := filepath.Join(dir, "env.toml"), filepath.Join(dir, "flag.toml")
	os.WriteFile(envFile, []byte("priority = 41\nsign_key_paths = [\"/a\"]\n"), 0o644)
	os.WriteFile(flagFile, []byte("priority = 42\n"), 0o644)
	env := map[string]string{
		config.EnvConfigFile:   envFile,
		config.EnvSignKeyPath:  "/b",
		config.EnvSignKeyPaths: " /c\n\t/d ",
	}
	getenv := func(k string) string { return env[k] }
	c, err := config.LoadEnv("", getenv)
	if err != nil {
		t.Fatal(err)
	}
	if c.Priority != 41 || strings.Join(c.SignKeyPaths, " ") != "/a /b /c /d" {
		t.Errorf("from CONFIG_FILE: priority %d, keys %q", c.Priority, c.SignKeyPaths)
	}
	if c, err := config.LoadEnv(flagFile, getenv); err != nil || c.Priority != 42 {
		t.Errorf("a path given wins over CONFIG_FILE: %+v %v", c, err)
	}
	if c, err := config.LoadEnv("", func(string) string { return "" }); err != nil || len(c.SignKeyPaths) != 0 {
		t.Errorf("no environment: %+v %v", c, err)
	}
	env[config.EnvConfigFile] = filepath.Join(dir, "missing.toml")
	if _, err := config.LoadEnv("", getenv); err == nil || !strings.Contains(err.Error(), "missing.toml") {
		t.Errorf("a missing CONFIG_FILE: %v", err)
	}
}

// TestSetStateDir: the compression cache follows the state directory
// unless the file put it elsewhere.
func TestSetStateDir(t *testing.T) {
	c, err := config.Parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SetStateDir("/srv/cache"); err != nil {
		t.Fatal(err)
	}
	if c.StateDir != "/srv/cache" || c.CompressionCache.Dir != "/srv/cache/zstd" {
		t.Errorf("state %q, compression cache %q", c.StateDir, c.CompressionCache.Dir)
	}
	c, err = config.Parse([]byte("[compression_cache]\ndir = \"/fast/zstd\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	c.SetStateDir("relative")
	if !filepath.IsAbs(c.StateDir) || c.CompressionCache.Dir != "/fast/zstd" {
		t.Errorf("state %q, compression cache %q", c.StateDir, c.CompressionCache.Dir)
	}
}

// TestSetStateDirMovesPulledPaths: the upload directory a pull-through
// upstream turns on follows the state directory (seen: `cache serve
// --state-dir X` kept pulled paths in the default state directory, shared
// by every instance); one the file names stays.
func TestSetStateDirMovesPulledPaths(t *testing.T) {
	const up = "[[upstream]]\nurl = \"https://cache.nixos.org\"\npublic_keys = [\"cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=\"]\n"
	c, err := config.Parse([]byte(up))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SetStateDir("/srv/cache"); err != nil {
		t.Fatal(err)
	}
	if c.Upload.Dir != "/srv/cache/upload" {
		t.Errorf("upload dir %q, want /srv/cache/upload", c.Upload.Dir)
	}
	c, err = config.Parse([]byte(up + "[upload]\ndir = \"/data/up\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SetStateDir("/srv/cache"); err != nil {
		t.Fatal(err)
	}
	if c.Upload.Dir != "/data/up" {
		t.Errorf("upload dir %q, want the file's /data/up", c.Upload.Dir)
	}
}

func TestNixLogDir(t *testing.T) {
	for db, want := range map[string]string{
		"/nix/var/nix/db/db.sqlite":      "/nix/var/log/nix/drvs",
		"/data/nix/var/nix/db/db.sqlite": "/data/nix/var/log/nix/drvs",
		"/elsewhere/db.sqlite":           config.DefaultNixLogDir,
		"":                               config.DefaultNixLogDir,
	} {
		c := config.Default()
		c.NixDBPath = db
		if got := c.NixLogDir(); got != want {
			t.Errorf("NixLogDir of %q = %q, want %q", db, got, want)
		}
	}
}

func TestLevel(t *testing.T) {
	for name, want := range map[string]slog.Level{"debug": slog.LevelDebug, "info": slog.LevelInfo, "WARN": slog.LevelWarn, "error": slog.LevelError} {
		c := config.Default()
		c.LogLevel = name
		if got := c.Level(); got != want {
			t.Errorf("Level of %q = %v", name, got)
		}
	}
}
