package config

import (
	"log/slog"
	"path/filepath"
	"strings"
)

// Harmonia's environment variables. Its NixOS module passes the config
// file and the signing keys this way (keys as systemd credentials), so a
// unit written for Harmonia starts Concordia unchanged.
const (
	// EnvConfigFile names the config file when no --config is given.
	EnvConfigFile = "CONFIG_FILE"
	// EnvSignKeyPath adds one secret key file.
	EnvSignKeyPath = "SIGN_KEY_PATH"
	// EnvSignKeyPaths adds secret key files, whitespace-separated.
	EnvSignKeyPaths = "SIGN_KEY_PATHS"
)

// LoadEnv is Load as the server reads its configuration: path, or the
// file $CONFIG_FILE names when path is "", with the keys of
// $SIGN_KEY_PATH and $SIGN_KEY_PATHS appended after the file's, in that
// order. getenv is os.Getenv outside tests.
func LoadEnv(path string, getenv func(string) string) (*Config, error) {
	if path == "" {
		path = getenv(EnvConfigFile)
	}
	c, err := Load(path)
	if err != nil {
		return nil, err
	}
	if p := getenv(EnvSignKeyPath); p != "" {
		c.SignKeyPaths = append(c.SignKeyPaths, p)
	}
	c.SignKeyPaths = append(c.SignKeyPaths, strings.Fields(getenv(EnvSignKeyPaths))...)
	return c, nil
}

// SetStateDir moves the state directory to dir (made absolute), and the
// compression cache with it unless the file placed that elsewhere: a
// --state-dir flag must not leave the cache in the old default place.
func (c *Config) SetStateDir(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if c.CompressionCache.Dir == filepath.Join(c.StateDir, compressionCacheName) {
		c.CompressionCache.Dir = filepath.Join(abs, compressionCacheName)
	}
	// The upload store a pull-through upstream turned on (finishUpstreams)
	// keeps the pulled paths in the state directory too: left behind,
	// every `cache serve --state-dir` would share the default one.
	if len(c.Upstreams) > 0 && c.Upload.Dir == filepath.Join(c.StateDir, uploadDirName) {
		c.Upload.Dir = filepath.Join(abs, uploadDirName)
	}
	c.StateDir = abs
	return nil
}

// Level is LogLevel as a slog level (Validate accepts only names slog
// knows; anything else is info).
func (c *Config) Level() slog.Level {
	var l slog.Level
	_ = l.UnmarshalText([]byte(c.LogLevel))
	return l
}

// DefaultNixLogDir is where Nix keeps build logs in the default store.
const DefaultNixLogDir = "/nix/var/log/nix/drvs"

// NixLogDir is where the build logs of the Nix database at NixDBPath
// are: beside a database at <root>/nix/var/nix/db/db.sqlite (a chroot
// store, Harmonia's real_nix_store setups) they are in
// <root>/nix/var/log/nix/drvs; otherwise in the default place.
func (c *Config) NixLogDir() string {
	const suffix = "/var/nix/db/db.sqlite"
	if prefix, ok := strings.CutSuffix(c.NixDBPath, suffix); ok {
		return prefix + "/var/log/nix/drvs"
	}
	return DefaultNixLogDir
}
