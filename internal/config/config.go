// Package config is the cache server's configuration: plain structs, the
// built-in defaults, TOML decoding and validation. A Harmonia settings.toml
// is accepted unchanged (its keys keep Harmonia's meaning), Concordia's own
// keys sit beside them, and any other key is an error that names it, so a
// typo never silently falls back to a default.
package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/bos55/concordia/internal/limits"
	"github.com/bos55/concordia/pkg/narinfo"
)

// ErrInvalid is wrapped by every error about a bad configuration.
var ErrInvalid = errors.New("invalid config")

// Defaults that are not derived from the environment.
const (
	DefaultBind          = "127.0.0.1:5000"
	DefaultPriority      = 30
	DefaultWorkers       = 4
	DefaultConnRate      = 256
	DefaultStoreDir      = "/nix/store"
	DefaultNixDBPath     = "/nix/var/nix/db/db.sqlite"
	DefaultDaemonSocket  = "/nix/var/nix/daemon-socket/socket"
	DefaultCompression   = "zstd"
	DefaultZstdLevel     = 1
	DefaultCacheMaxSize  = 10 << 30
	DefaultSocketMode    = 0o666
	DefaultPrefer        = "upload"
	DefaultMemoryLimit   = 48 << 20
	rootStateDir         = "/var/lib/concordia"
	compressionCacheName = "zstd"
)

// Defaults of the [timeouts] table.
const (
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultIdleTimeout       = 2 * time.Minute
	DefaultProgressTimeout   = 30 * time.Second
)

// Config is the whole file. Field comments give the TOML key; keys marked
// Harmonia have Harmonia's meaning.
type Config struct {
	// Bind is "host:port" or "unix:/path" (Harmonia: bind).
	Bind string `toml:"bind"`
	// Workers is accepted for Harmonia compatibility; Go schedules
	// requests itself, so it only has to be positive (Harmonia: workers).
	Workers int `toml:"workers"`
	// MaxConnectionRate is accepted and ignored (Harmonia:
	// max_connection_rate).
	MaxConnectionRate int `toml:"max_connection_rate"`
	// Priority is announced in nix-cache-info; lower wins (Harmonia).
	Priority int `toml:"priority"`
	// SignKeyPaths are secret key files; every narinfo is signed with all
	// of them (Harmonia: sign_key_paths).
	SignKeyPaths []string `toml:"sign_key_paths"`
	// SignKeyPath is Harmonia's older single-key form, appended to
	// SignKeyPaths (Harmonia: sign_key_path).
	SignKeyPath string `toml:"sign_key_path"`
	// TLSCertPath and TLSKeyPath turn on TLS (and with it HTTP/2).
	TLSCertPath string `toml:"tls_cert_path"`
	TLSKeyPath  string `toml:"tls_key_path"`
	// EnableCompression lets identity NAR responses be sent with
	// Content-Encoding: zstd when the request's Accept-Encoding asks for
	// it (Harmonia: enable_compression). Off by default: Nix 2.14 and
	// later ask for zstd on every request, and no Nix resumes a cut
	// download whose body was Content-Encoded (filetransfer.cc: a resume
	// needs Accept-Ranges and no encoding), so with it on every cut
	// transfer of an uncompressed NAR URL fails the substitution. The
	// bandwidth is saved anyway where it matters: narinfos announce
	// compression = "zstd" (.nar.zst files, which take ranges once
	// compressed) unless the operator chose "none".
	EnableCompression bool `toml:"enable_compression"`
	// Zstd is Harmonia's [zstd] table.
	Zstd Zstd `toml:"zstd"`
	// VirtualNixStore is the store directory paths are named under
	// (Harmonia: virtual_nix_store).
	VirtualNixStore string `toml:"virtual_nix_store"`
	// RealNixStore is where the bytes live if not there, e.g. a chroot
	// store (Harmonia: real_nix_store; default VirtualNixStore).
	RealNixStore string `toml:"real_nix_store"`
	// NixDBPath is the Nix database read for path info; "" disables the
	// local store (Harmonia: nix_db_path).
	NixDBPath string `toml:"nix_db_path"`
	// DaemonStore / DaemonSocket name Harmonia's daemon connection.
	// Concordia reads the database directly, so they are accepted and
	// ignored (Harmonia: daemon_store, daemon_socket).
	DaemonStore  string `toml:"daemon_store"`
	DaemonSocket string `toml:"daemon_socket"`

	// Compression is what narinfos announce: "zstd" (URL nar/...nar.zst,
	// Compression: zstd) or "none".
	Compression string `toml:"compression"`
	// StateDir holds the generated signing key, the compression cache and
	// (by default) uploads.
	StateDir string `toml:"state_dir"`
	// SocketMode is the permission of a unix socket listener, octal
	// string like "0666".
	SocketMode string `toml:"socket_mode"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `toml:"log_level"`
	// MemoryLimit is the Go runtime's soft memory limit (GOMEMLIMIT, which
	// wins when set in the environment); 0 leaves the runtime default.
	// The default keeps a small server's RSS near its live data: without
	// it the heap may grow to twice the live bytes before a collection.
	MemoryLimit Size `toml:"memory_limit"`

	CompressionCache CompressionCache `toml:"compression_cache"`
	Upload           Upload           `toml:"upload"`
	GC               GC               `toml:"gc"`
	Timeouts         Timeouts         `toml:"timeouts"`
	Limits           Limits           `toml:"limits"`
	// Upstreams are the [[upstream]] tables, in priority order.
	Upstreams []Upstream `toml:"upstream"`
}

// Zstd is the [zstd] table.
type Zstd struct {
	// Level is the zstd level for NARs compressed by the server (1-22).
	Level int `toml:"level"`
}

// CompressionCache is the [compression_cache] table: compressed NARs
// kept on disk so a NAR is compressed once for many clients.
type CompressionCache struct {
	// Dir defaults to <state_dir>/zstd; "" after defaults means off.
	Dir string `toml:"dir"`
	// MaxSize bounds the directory (LRU eviction); 0 disables the cache.
	MaxSize Size `toml:"max_size"`
}

// Upload is the [upload] table: the store of paths pushed with
// `nix copy --to`.
type Upload struct {
	// Dir enables uploads when set.
	Dir string `toml:"dir"`
	// TokensFile lists the credentials (read, write, pin, admin). It is
	// used without Dir too: a private cache of the local store only.
	TokensFile string `toml:"tokens_file"`
	// Private makes every read (all but /, /health and /version) need a
	// token with read, whatever else is set; it needs TokensFile.
	Private bool `toml:"private"`
	// Prefer decides which store answers when both have a path:
	// "upload" (default) or "local". Both have the same NAR then:
	// uploads that differ from a local path are refused, and an older
	// upload record that differs is never served over the local path.
	Prefer string `toml:"prefer"`
	// PendingMaxAge is how long an uploaded NAR waits for its narinfo,
	// across restarts: Nix 2.35 sends every NAR of a closure before the
	// first narinfo. PendingMaxSize bounds those NARs' bytes; past it the
	// oldest are dropped first.
	PendingMaxAge  Duration `toml:"pending_max_age"`
	PendingMaxSize Size     `toml:"pending_max_size"`
	// InlineMaxSize is the size up to which an uploaded NAR file is kept
	// in the index, written by its narinfo's commit, instead of as a file
	// of its own: one durable write per small path. "0" keeps every NAR
	// as a file. A shared index ([upload.database]) never keeps them.
	InlineMaxSize Size `toml:"inline_max_size"`
	// Index is the engine of the index of a store made from now on:
	// "pebble" (the default: one fsync'd log write per commit) or
	// "bbolt". A store keeps the engine it was made with (one made before
	// pebble has index.db, bbolt); `cache migrate` moves it to another.
	Index string `toml:"index"`
	// DeployReportsMax is how many deploy reports the history keeps
	// (the oldest go first), each at most limits.max_deploy_report_size.
	DeployReportsMax int `toml:"deploy_reports_max"`
	// S3 and Database put the store's files in a bucket and its index
	// in PostgreSQL, shared by several replicas (shared.go); Dir then
	// keeps only local temp files.
	S3       *S3       `toml:"s3"`
	Database *Database `toml:"database"`
}

// Defaults of the pending NARs' bounds.
const (
	DefaultPendingMaxAge  = 24 * time.Hour
	DefaultPendingMaxSize = 20 << 30
	// DefaultInlineMaxSize is most paths of a system closure.
	DefaultInlineMaxSize = 64 << 10
	// DefaultDeployReportsMax is a year of a few pushes a day.
	DefaultDeployReportsMax = 1000
)

// GC is the [gc] table for the upload store.
type GC struct {
	MaxSize  Size     `toml:"max_size"`
	MaxAge   Duration `toml:"max_age"`
	Interval Duration `toml:"interval"`
	// Remember is how long the NAR hash of a collected path is kept, so
	// an upload cannot give that store path another NAR; 0 is forever.
	Remember Duration `toml:"remember"`
	// WriterTTL keeps a path a writer was told exists (its upload, or a
	// narinfo lookup with a write token) for that long, past max_size and
	// max_age: Nix caches narinfos for narinfo-cache-positive-ttl (30
	// days) and never re-uploads a path it believes present. 0 turns it
	// off. HardMaxSize is the size past which those paths go too (0: one
	// and a half times max_size).
	WriterTTL   Duration `toml:"writer_ttl"`
	HardMaxSize Size     `toml:"hard_max_size"`
}

// DefaultWriterTTL is Nix's narinfo-cache-positive-ttl.
const DefaultWriterTTL = 30 * 24 * time.Hour

// DefaultRemember is how long a collected path's NAR hash is kept.
const DefaultRemember = 90 * 24 * time.Hour

// Timeouts is the [timeouts] table: how long the server waits for a
// client. The progress timeouts are renewed as bytes flow, so a large
// download or upload on a slow link is never cut while it moves.
type Timeouts struct {
	// ReadHeader bounds reading a request's headers.
	ReadHeader Duration `toml:"read_header"`
	// Idle is how long a keep-alive connection may wait for its next
	// request.
	Idle Duration `toml:"idle"`
	// ReadProgress aborts a request whose body sends nothing for this long.
	ReadProgress Duration `toml:"read_progress"`
	// WriteProgress drops a response that cannot send 128 KiB for this
	// long (a client that stopped reading).
	WriteProgress Duration `toml:"write_progress"`
}

// Limits is the [limits] table: what one NAR from an untrusted source (an
// upload, or a stored one read back for a client) may cost. Uploads over a
// bound are refused, naming the key; stored NARs over one are not decoded.
type Limits struct {
	MaxNARSize      Size  `toml:"max_nar_size"`
	MaxDepth        int   `toml:"max_depth"`
	MaxEntries      int64 `toml:"max_entries"`
	MaxNameLength   int   `toml:"max_name_length"`
	MaxTargetLength int   `toml:"max_target_length"`
	XZDictMax       Size  `toml:"xz_dict_max"`
	ZstdWindowMax   Size  `toml:"zstd_window_max"`
	MaxRatio        int64 `toml:"max_ratio"`
	MaxListingSize  Size  `toml:"max_listing_size"`
	MaxNarinfoSize  Size  `toml:"max_narinfo_size"`
	MaxSignatures   int   `toml:"max_signatures"`
	MaxLogSize      Size  `toml:"max_log_size"`
	MaxPinsPerToken int   `toml:"max_pins_per_token"`
	// MaxDeployReportSize bounds one deploy report in the history.
	MaxDeployReportSize Size `toml:"max_deploy_report_size"`
}

func defaultLimits() Limits {
	d := limits.Default()
	return Limits{
		MaxNARSize: Size(d.MaxNARSize), MaxDepth: d.MaxDepth, MaxEntries: d.MaxEntries,
		MaxNameLength: d.MaxNameLen, MaxTargetLength: d.MaxTargetLen,
		XZDictMax: Size(d.XZDictMax), ZstdWindowMax: Size(d.ZstdWindowMax),
		MaxRatio: d.MaxRatio, MaxListingSize: Size(d.MaxListingSize),
		MaxNarinfoSize: Size(d.MaxNarinfoSize), MaxSignatures: d.MaxSignatures,
		MaxLogSize: Size(d.MaxLogSize), MaxPinsPerToken: d.MaxPinsPerToken,
		MaxDeployReportSize: Size(d.MaxDeployReportSize),
	}
}

// Values are the bounds as the server enforces them (max_ratio = 0, off,
// is a negative MaxRatio there).
func (l Limits) Values() limits.Limits {
	ratio := l.MaxRatio
	if ratio == 0 {
		ratio = -1
	}
	return limits.Limits{
		MaxNARSize: int64(l.MaxNARSize), MaxDepth: l.MaxDepth, MaxEntries: l.MaxEntries,
		MaxNameLen: l.MaxNameLength, MaxTargetLen: l.MaxTargetLength,
		XZDictMax: int64(l.XZDictMax), ZstdWindowMax: int64(l.ZstdWindowMax),
		MaxRatio: ratio, MaxListingSize: int64(l.MaxListingSize),
		MaxNarinfoSize: int64(l.MaxNarinfoSize), MaxSignatures: l.MaxSignatures,
		MaxLogSize: int64(l.MaxLogSize), MaxPinsPerToken: l.MaxPinsPerToken,
		MaxDeployReportSize: int64(l.MaxDeployReportSize),
	}
}

func (l Limits) validate(bad func(key, format string, a ...any) error) error {
	switch {
	case l.MaxNARSize < 1<<20:
		return bad(limits.KeyNARSize, "must be at least 1M, got %d", l.MaxNARSize)
	case l.MaxDepth < 1 || l.MaxDepth > 1<<16:
		return bad(limits.KeyDepth, "must be 1..65536, got %d", l.MaxDepth)
	case l.MaxEntries < 1:
		return bad(limits.KeyEntries, "must be at least 1, got %d", l.MaxEntries)
	case l.MaxNameLength < 1 || l.MaxNameLength > limits.DefaultMaxNameLen:
		return bad(limits.KeyNameLen, "must be 1..%d (a NAR name cannot be longer), got %d", limits.DefaultMaxNameLen, l.MaxNameLength)
	case l.MaxTargetLength < 1 || l.MaxTargetLength > limits.DefaultMaxTargetLen:
		return bad(limits.KeyTargetLen, "must be 1..%d (a NAR symlink target cannot be longer), got %d", limits.DefaultMaxTargetLen, l.MaxTargetLength)
	case l.XZDictMax < 4<<10 || l.XZDictMax > 4<<30:
		return bad(limits.KeyXZDict, "must be 4K..4G (what an xz header can ask for), got %d", l.XZDictMax)
	case l.ZstdWindowMax < 1<<10 || l.ZstdWindowMax > 2<<30:
		return bad(limits.KeyZstdWindow, "must be 1K..2G (zstd's largest window), got %d", l.ZstdWindowMax)
	case l.MaxRatio < 0:
		return bad(limits.KeyRatio, "must not be negative (0 turns the bound off), got %d", l.MaxRatio)
	case l.MaxListingSize < 1<<10:
		return bad(limits.KeyListingSize, "must be at least 1K, got %d", l.MaxListingSize)
	case l.MaxNarinfoSize < 4<<10 || l.MaxNarinfoSize > narinfo.MaxSize:
		return bad(limits.KeyNarinfoSize, "must be 4K..1M (the deployer's closure check reads at most 1M of a narinfo), got %d", l.MaxNarinfoSize)
	case l.MaxSignatures < 1 || l.MaxSignatures > 1024:
		return bad(limits.KeySignatures, "must be 1..1024, got %d", l.MaxSignatures)
	case l.MaxLogSize < 1<<10:
		return bad(limits.KeyLogSize, "must be at least 1K, got %d", l.MaxLogSize)
	case l.MaxPinsPerToken < 1:
		return bad(limits.KeyPinsPerToken, "must be at least 1, got %d", l.MaxPinsPerToken)
	case l.MaxDeployReportSize < 4<<10 || l.MaxDeployReportSize > 64<<20:
		return bad(limits.KeyDeployReportSize, "must be 4K..64M (the history keeps upload.deploy_reports_max of them in the index), got %d", l.MaxDeployReportSize)
	}
	return nil
}

// Default returns the configuration used when no file is given: listen on
// 127.0.0.1:5000, serve the local store if its database exists, keep
// state in the per-user (or system) state directory.
func Default() *Config {
	c := &Config{
		Bind:              DefaultBind,
		Workers:           DefaultWorkers,
		MaxConnectionRate: DefaultConnRate,
		Priority:          DefaultPriority,
		EnableCompression: false,
		Zstd:              Zstd{Level: DefaultZstdLevel},
		VirtualNixStore:   DefaultStoreDir,
		NixDBPath:         DefaultNixDBPath,
		DaemonSocket:      DefaultDaemonSocket,
		Compression:       DefaultCompression,
		StateDir:          DefaultStateDir(),
		SocketMode:        "0666",
		LogLevel:          "info",
		MemoryLimit:       DefaultMemoryLimit,
		CompressionCache:  CompressionCache{MaxSize: DefaultCacheMaxSize},
		Upload: Upload{Prefer: DefaultPrefer,
			PendingMaxAge: Duration(DefaultPendingMaxAge), PendingMaxSize: DefaultPendingMaxSize,
			InlineMaxSize:    DefaultInlineMaxSize,
			Index:            "pebble",
			DeployReportsMax: DefaultDeployReportsMax},
		GC: GC{Remember: Duration(DefaultRemember), WriterTTL: Duration(DefaultWriterTTL)},
		Timeouts: Timeouts{
			ReadHeader:    Duration(DefaultReadHeaderTimeout),
			Idle:          Duration(DefaultIdleTimeout),
			ReadProgress:  Duration(DefaultProgressTimeout),
			WriteProgress: Duration(DefaultProgressTimeout),
		},
		Limits: defaultLimits(),
	}
	return c
}

// DefaultStateDir is /var/lib/concordia for root, else
// $XDG_STATE_HOME/concordia or ~/.local/state/concordia.
func DefaultStateDir() string {
	if os.Geteuid() == 0 {
		return rootStateDir
	}
	if d := os.Getenv("XDG_STATE_HOME"); filepath.IsAbs(d) {
		return filepath.Join(d, "concordia")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "state", "concordia")
	}
	return rootStateDir
}

// Load reads and validates the file at path; "" means the defaults.
func Load(path string) (*Config, error) {
	if path == "" {
		c := Default()
		c.finish(nil)
		return c, c.Validate()
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	c, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Parse decodes TOML over the defaults, fills the derived defaults and
// validates.
func Parse(data []byte) (*Config, error) {
	c := Default()
	md, err := toml.Decode(string(data), c)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		return nil, fmt.Errorf("%w: unknown key %s", ErrInvalid, strings.Join(keys, ", "))
	}
	c.finish(&md)
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// finish fills the defaults that depend on other keys.
func (c *Config) finish(md *toml.MetaData) {
	if c.SignKeyPath != "" {
		c.SignKeyPaths = append(c.SignKeyPaths, c.SignKeyPath)
		c.SignKeyPath = ""
	}
	if c.RealNixStore == "" {
		c.RealNixStore = c.VirtualNixStore
	}
	if c.CompressionCache.Dir == "" && (md == nil || !md.IsDefined("compression_cache", "dir")) {
		c.CompressionCache.Dir = filepath.Join(c.StateDir, compressionCacheName)
	}
	if c.Upload.Prefer == "" {
		c.Upload.Prefer = DefaultPrefer
	}
	c.finishUpstreams()
	c.finishShared()
}

// Validate checks every key and says which one is wrong.
func (c *Config) Validate() error {
	bad := func(key, format string, a ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrInvalid, key, fmt.Sprintf(format, a...))
	}
	if _, _, err := SplitBind(c.Bind); err != nil {
		return bad("bind", "%v", err)
	}
	if c.Workers <= 0 {
		return bad("workers", "must be greater than 0, got %d", c.Workers)
	}
	if c.MaxConnectionRate < 0 {
		return bad("max_connection_rate", "must not be negative")
	}
	if c.Priority < 0 {
		return bad("priority", "must not be negative, got %d", c.Priority)
	}
	if (c.TLSCertPath == "") != (c.TLSKeyPath == "") {
		return bad("tls_cert_path", "tls_cert_path and tls_key_path must be set together")
	}
	if network, _, _ := SplitBind(c.Bind); network == "unix" && c.TLSCertPath != "" {
		return bad("tls_cert_path", "TLS is not supported on a unix socket (bind = %q)", c.Bind)
	}
	if c.Zstd.Level < 1 || c.Zstd.Level > 22 {
		return bad("zstd.level", "must be 1..22, got %d", c.Zstd.Level)
	}
	for key, dir := range map[string]string{"virtual_nix_store": c.VirtualNixStore, "real_nix_store": c.RealNixStore} {
		if !filepath.IsAbs(dir) || filepath.Clean(dir) != dir || dir == "/" {
			return bad(key, "must be a clean absolute directory other than /, got %q", dir)
		}
	}
	if c.NixDBPath != "" && !filepath.IsAbs(c.NixDBPath) {
		return bad("nix_db_path", "must be absolute, got %q", c.NixDBPath)
	}
	switch c.Compression {
	case "zstd", "none":
	default:
		return bad("compression", `must be "zstd" or "none", got %q`, c.Compression)
	}
	if c.StateDir == "" || !filepath.IsAbs(c.StateDir) {
		return bad("state_dir", "must be an absolute path, got %q", c.StateDir)
	}
	if _, err := c.SocketFileMode(); err != nil {
		return bad("socket_mode", "%v", err)
	}
	switch strings.ToLower(c.LogLevel) {
	case "debug", "info", "warn", "error":
	default:
		return bad("log_level", "must be debug, info, warn or error, got %q", c.LogLevel)
	}
	if c.MemoryLimit < 0 {
		return bad("memory_limit", "must not be negative")
	}
	if c.CompressionCache.MaxSize < 0 {
		return bad("compression_cache.max_size", "must not be negative")
	}
	if c.CompressionCache.Dir != "" && !filepath.IsAbs(c.CompressionCache.Dir) {
		return bad("compression_cache.dir", "must be absolute, got %q", c.CompressionCache.Dir)
	}
	switch c.Upload.Prefer {
	case "upload", "local":
	default:
		return bad("upload.prefer", `must be "upload" or "local", got %q`, c.Upload.Prefer)
	}
	if c.Upload.Dir != "" && !filepath.IsAbs(c.Upload.Dir) {
		return bad("upload.dir", "must be absolute, got %q", c.Upload.Dir)
	}
	if c.Upload.Private && c.Upload.TokensFile == "" {
		return bad("upload.private", "needs upload.tokens_file: without it nobody can authenticate, and a private cache is never served to everybody")
	}
	for key, d := range map[string]Duration{"timeouts.read_header": c.Timeouts.ReadHeader, "timeouts.idle": c.Timeouts.Idle,
		"timeouts.read_progress": c.Timeouts.ReadProgress, "timeouts.write_progress": c.Timeouts.WriteProgress} {
		if d <= 0 {
			return bad(key, "must be a positive duration, got %v", time.Duration(d))
		}
	}
	if c.GC.MaxSize < 0 || c.GC.MaxAge < 0 || c.GC.Interval < 0 || c.GC.Remember < 0 || c.GC.WriterTTL < 0 || c.GC.HardMaxSize < 0 {
		return bad("gc", "sizes and durations must not be negative")
	}
	if c.GC.HardMaxSize > 0 && c.GC.HardMaxSize < c.GC.MaxSize {
		return bad("gc.hard_max_size", "must be at least gc.max_size (%d), got %d", c.GC.MaxSize, c.GC.HardMaxSize)
	}
	if c.Upload.PendingMaxAge <= 0 {
		return bad("upload.pending_max_age", "must be a positive duration, got %v", time.Duration(c.Upload.PendingMaxAge))
	}
	if c.Upload.PendingMaxSize < 1<<20 {
		return bad("upload.pending_max_size", "must be at least 1M, got %d", c.Upload.PendingMaxSize)
	}
	if c.Upload.InlineMaxSize < 0 || c.Upload.InlineMaxSize > limits.MaxInlineNAR {
		return bad("upload.inline_max_size", "must be 0 (off) to 1M, got %d", c.Upload.InlineMaxSize)
	}
	if c.Upload.Index != "pebble" && c.Upload.Index != "bbolt" {
		return bad("upload.index", "must be \"pebble\" or \"bbolt\", got %q", c.Upload.Index)
	}
	if c.Upload.DeployReportsMax < 1 || c.Upload.DeployReportsMax > 1_000_000 {
		return bad("upload.deploy_reports_max", "must be 1..1000000, got %d", c.Upload.DeployReportsMax)
	}
	if err := c.validateUpstreams(bad); err != nil {
		return err
	}
	if err := c.validateShared(bad); err != nil {
		return err
	}
	return c.Limits.validate(bad)
}

// SplitBind parses bind into a network ("tcp" or "unix") and address.
func SplitBind(bind string) (network, addr string, err error) {
	if rest, ok := strings.CutPrefix(bind, "unix:"); ok {
		// Harmonia writes unix:/path; accept unix:///path too.
		rest = strings.TrimPrefix(rest, "//")
		if !filepath.IsAbs(rest) {
			return "", "", fmt.Errorf("unix socket path must be absolute, got %q", bind)
		}
		return "unix", rest, nil
	}
	host, port, err := net.SplitHostPort(bind)
	if err != nil {
		return "", "", fmt.Errorf("want host:port or unix:/path, got %q", bind)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return "", "", fmt.Errorf("bad port %q", port)
	}
	_ = host
	return "tcp", bind, nil
}

// SocketFileMode is SocketMode parsed as octal permission bits.
func (c *Config) SocketFileMode() (fs.FileMode, error) {
	if c.SocketMode == "" {
		return DefaultSocketMode, nil
	}
	n, err := strconv.ParseUint(c.SocketMode, 8, 32)
	if err != nil || n > 0o777 {
		return 0, fmt.Errorf("want octal permissions like \"0660\", got %q", c.SocketMode)
	}
	return fs.FileMode(n), nil
}

// LocalStoreEnabled reports whether the machine's store should be served:
// the database path is set and the file exists.
func (c *Config) LocalStoreEnabled() bool {
	if c.NixDBPath == "" {
		return false
	}
	_, err := os.Stat(c.NixDBPath)
	return err == nil
}

// Size is a byte count written as "10G", "512M", "1T", "64KiB" or plain
// bytes. Units are powers of 1024, as disk quotas usually are.
type Size int64

// UnmarshalText implements encoding.TextUnmarshaler (TOML strings).
func (s *Size) UnmarshalText(b []byte) error {
	n, err := ParseSize(string(b))
	if err != nil {
		return err
	}
	*s = Size(n)
	return nil
}

// UnmarshalTOML accepts an integer as well as a string.
func (s *Size) UnmarshalTOML(v any) error {
	switch v := v.(type) {
	case int64:
		if v < 0 {
			return fmt.Errorf("size must not be negative, got %d", v)
		}
		*s = Size(v)
		return nil
	case string:
		return s.UnmarshalText([]byte(v))
	}
	return fmt.Errorf("size must be a string like \"10G\" or an integer, got %T", v)
}

// ParseSize parses "10G"-style sizes.
func ParseSize(str string) (int64, error) {
	t := strings.TrimSpace(str)
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '.') {
		i++
	}
	num, unit := t[:i], strings.ToUpper(strings.TrimSpace(t[i:]))
	if num == "" {
		return 0, fmt.Errorf("bad size %q: want a number with an optional K, M, G or T suffix", str)
	}
	unit = strings.TrimSuffix(strings.TrimSuffix(unit, "B"), "I")
	mult := map[string]float64{"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}[unit]
	if mult == 0 {
		return 0, fmt.Errorf("bad size %q: unknown unit", str)
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return 0, fmt.Errorf("bad size %q: %v", str, err)
	}
	v := f * mult
	if v >= 1<<63 {
		return 0, fmt.Errorf("bad size %q: too large", str)
	}
	return int64(v), nil
}

// Duration is a Go duration that also accepts days ("30d", "1d12h").
type Duration time.Duration

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// ParseDuration is time.ParseDuration plus a "d" (24h) unit; "" is zero.
func ParseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, nil
	}
	var days time.Duration
	if i := strings.IndexByte(s, 'd'); i >= 0 {
		n, err := strconv.ParseUint(s[:i], 10, 32)
		if err != nil {
			return 0, fmt.Errorf("bad duration %q: want e.g. 30d, 6h, 1d12h", s)
		}
		days = time.Duration(n) * 24 * time.Hour
		s = s[i+1:]
		if s == "" {
			return days, nil
		}
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("bad duration %q: want e.g. 30d, 6h, 1d12h", s)
	}
	return days + v, nil
}
