package config_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/config"
)

func TestHarmoniaSettingsParseUnchanged(t *testing.T) {
	c, err := config.Load(filepath.Join("testdata", "harmonia-settings.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Bind != "[::]:5000" || c.Workers != 4 || c.Priority != 30 || !c.EnableCompression || c.Zstd.Level != 3 {
		t.Errorf("scalars: %+v", c)
	}
	want := []string{"/run/secrets/key1", "/run/secrets/key2", "/run/secrets/old-key"}
	if strings.Join(c.SignKeyPaths, ",") != strings.Join(want, ",") {
		t.Errorf("SignKeyPaths = %v, want %v", c.SignKeyPaths, want)
	}
	if c.VirtualNixStore != "/nix/store" || c.RealNixStore != "/data/nix/store" || c.NixDBPath != "/data/nix/var/nix/db/db.sqlite" {
		t.Errorf("store paths: %q %q %q", c.VirtualNixStore, c.RealNixStore, c.NixDBPath)
	}
	if c.TLSCertPath != "/etc/ssl/cert.pem" || c.TLSKeyPath != "/etc/ssl/key.pem" {
		t.Errorf("tls: %q %q", c.TLSCertPath, c.TLSKeyPath)
	}
	// Concordia's own keys keep their defaults.
	if c.Compression != "zstd" || c.Upload.Prefer != "upload" || c.CompressionCache.MaxSize != 10<<30 {
		t.Errorf("concordia defaults lost: %+v", c)
	}
}

func TestDefaults(t *testing.T) {
	c, err := config.Parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Bind != "127.0.0.1:5000" || c.Priority != 30 || c.RealNixStore != "/nix/store" || c.Compression != "zstd" {
		t.Errorf("defaults: %+v", c)
	}
	if c.CompressionCache.Dir != filepath.Join(c.StateDir, "zstd") {
		t.Errorf("compression cache dir %q not under state dir %q", c.CompressionCache.Dir, c.StateDir)
	}
	m, err := c.SocketFileMode()
	if err != nil || m != 0o666 {
		t.Errorf("socket mode %v %v", m, err)
	}
}

func TestUnknownKeyIsNamed(t *testing.T) {
	for _, tc := range []struct{ doc, key string }{
		{"bnid = \"x\"\n", "bnid"},
		{"[upload]\ndir = \"/x\"\ntokens_file = \"/t\"\nprefr = \"local\"\n", "upload.prefr"},
		{"[zstd]\nlvl = 3\n", "zstd.lvl"},
		{"[nope]\na = 1\n", "nope"},
	} {
		t.Run(tc.key, func(t *testing.T) {
			_, err := config.Parse([]byte(tc.doc))
			if err == nil || !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), tc.key) {
				t.Fatalf("err = %v, want one naming %q", err, tc.key)
			}
		})
	}
}

func TestValidation(t *testing.T) {
	for _, tc := range []struct{ doc, key string }{
		{`bind = "nonsense"`, "bind"},
		{`bind = "unix:relative"`, "bind"},
		{`workers = 0`, "workers"},
		{`priority = -1`, "priority"},
		{`compression = "xz"`, "compression"},
		{`tls_cert_path = "/c"`, "tls_cert_path"},
		{"bind = \"unix:/run/c.sock\"\ntls_cert_path = \"/c\"\ntls_key_path = \"/k\"", "tls_cert_path"},
		{"[zstd]\nlevel = 30", "zstd.level"},
		{`real_nix_store = "relative/store"`, "real_nix_store"},
		{`socket_mode = "999"`, "socket_mode"},
		{"[upload]\nprefer = \"nobody\"", "upload.prefer"},
		{"[upload]\nprivate = true", "upload.private"},
		{"[compression_cache]\nmax_size = \"ten gigs\"", "max_size"},
		{"[gc]\nmax_age = \"forever\"", "max_age"},
		{`state_dir = "rel"`, "state_dir"},
		{"[timeouts]\nread_progress = \"0s\"", "timeouts.read_progress"},
		{"[timeouts]\nwrite_progress = \"0\"", "timeouts.write_progress"},
		{"[timeouts]\nidle = \"soon\"", "idle"},
	} {
		t.Run(tc.key, func(t *testing.T) {
			_, err := config.Parse([]byte(tc.doc + "\n"))
			if err == nil || !strings.Contains(err.Error(), tc.key) {
				t.Fatalf("err = %v, want one naming %q", err, tc.key)
			}
		})
	}
}

func TestSizesAndDurations(t *testing.T) {
	doc := `
[compression_cache]
dir = "/var/cache/zst"
max_size = "512M"
[gc]
max_size = 1048576
max_age = "30d"
interval = "1d12h"
`
	c, err := config.Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if c.CompressionCache.MaxSize != 512<<20 || c.CompressionCache.Dir != "/var/cache/zst" {
		t.Errorf("compression_cache: %+v", c.CompressionCache)
	}
	if c.GC.MaxSize != 1<<20 || time.Duration(c.GC.MaxAge) != 30*24*time.Hour || time.Duration(c.GC.Interval) != 36*time.Hour {
		t.Errorf("gc: %+v", c.GC)
	}
	for in, want := range map[string]int64{"10G": 10 << 30, "1T": 1 << 40, "64KiB": 64 << 10, "123": 123, "1.5G": 3 << 29, "2 MB": 2 << 20} {
		got, err := config.ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "G", "10X", "-1G"} {
		if _, err := config.ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) accepted", in)
		}
	}
	for in, want := range map[string]time.Duration{"6h": 6 * time.Hour, "30d": 720 * time.Hour, "": 0, "90s": 90 * time.Second} {
		got, err := config.ParseDuration(in)
		if err != nil || got != want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
}

func TestUnixBind(t *testing.T) {
	for _, b := range []string{"unix:/run/concordia.sock", "unix:///run/concordia.sock"} {
		n, a, err := config.SplitBind(b)
		if err != nil || n != "unix" || a != "/run/concordia.sock" {
			t.Errorf("SplitBind(%q) = %q %q %v", b, n, a, err)
		}
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := config.Load(filepath.Join(t.TempDir(), "none.toml"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("err = %v", err)
	}
}

func TestEmptyDBPathDisablesLocal(t *testing.T) {
	c, err := config.Parse([]byte(`nix_db_path = ""`))
	if err != nil {
		t.Fatal(err)
	}
	if c.LocalStoreEnabled() {
		t.Error("local store enabled with nix_db_path = \"\"")
	}
}

// TestExampleIsTheDefault keeps example.toml honest: it parses and says
// exactly what Default() does.
func TestExampleIsTheDefault(t *testing.T) {
	data, err := os.ReadFile("example.toml")
	if err != nil {
		t.Fatal(err)
	}
	got, err := config.Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	want, err := config.Parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", want) {
		t.Errorf("example.toml differs from the defaults:\n%+v\n%+v", got, want)
	}
}

// TestTimeouts: the [timeouts] table, with defaults for what it leaves out.
func TestTimeouts(t *testing.T) {
	c, err := config.Parse([]byte("[timeouts]\nread_progress = \"5s\"\nidle = \"1m\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	got := c.Timeouts
	if time.Duration(got.ReadProgress) != 5*time.Second || time.Duration(got.Idle) != time.Minute ||
		time.Duration(got.WriteProgress) != config.DefaultProgressTimeout || time.Duration(got.ReadHeader) != config.DefaultReadHeaderTimeout {
		t.Fatalf("timeouts %+v", got)
	}
}

// TestPrivateWithTokensWithoutUploads: a private cache of the local store
// alone (tokens_file, no upload dir) is a valid configuration.
func TestPrivateWithTokensWithoutUploads(t *testing.T) {
	c, err := config.Parse([]byte("[upload]\nprivate = true\ntokens_file = \"/etc/concordia/tokens\"\n"))
	if err != nil || !c.Upload.Private || c.Upload.Dir != "" {
		t.Fatalf("%+v %v", c, err)
	}
}
