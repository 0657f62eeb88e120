// Package auth decides who may read from and write to the cache. Tokens live
// in a plain file, one per line, as "name:permissions:sha256hex"; only the
// SHA-256 of each token is stored, so the file leaks nothing usable. The file
// is re-read when it changes (checked on use, at most once a second), so a
// token is revoked by deleting its line, without a restart.
//
// An unmodified `nix copy` can only send HTTP Basic credentials from its
// netrc file, so Basic is accepted (any user name, the token as password)
// beside `Authorization: Bearer <token>`.
package auth

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"
)

// Perm is a set of permissions.
type Perm uint8

const (
	// Read allows fetching from a private cache.
	Read Perm = 1 << iota
	// Write allows uploads, pins and other changes. It does not imply Read:
	// a CI upload token for a private cache must say "read,write".
	Write
)

func (p Perm) String() string {
	var parts []string
	if p&Read != 0 {
		parts = append(parts, "read")
	}
	if p&Write != 0 {
		parts = append(parts, "write")
	}
	return strings.Join(parts, ",")
}

// ParsePerm parses "read", "write" or "read,write" (any order).
func ParsePerm(s string) (Perm, error) {
	var p Perm
	for _, w := range strings.Split(s, ",") {
		switch strings.TrimSpace(w) {
		case "read":
			p |= Read
		case "write":
			p |= Write
		default:
			return 0, fmt.Errorf("unknown permission %q (want read, write or read,write)", w)
		}
	}
	return p, nil
}

// Errors of Authorize. ErrNoCredentials and ErrUnknownToken are answered
// 401, ErrForbidden 403.
var (
	ErrNoCredentials = errors.New("credentials required")
	ErrUnknownToken  = errors.New("unknown or revoked token")
	ErrForbidden     = errors.New("token lacks the permission")
)

// Realm is sent in WWW-Authenticate so clients (and humans with curl) know
// Basic is accepted.
const Realm = "concordia"

type entry struct {
	name string
	perm Perm
	hash [sha256.Size]byte
}

// Tokens is the parsed tokens file, reloaded when it changes. The zero
// value is not usable; use Load.
type Tokens struct {
	path string
	log  *slog.Logger
	// recheck is how long a stat result is trusted; tests set it to 0.
	recheck time.Duration

	mu        sync.Mutex
	entries   []entry
	stamp     fileStamp
	lastCheck time.Time
}

type fileStamp struct {
	mod  time.Time
	size int64
	ok   bool
}

// Load reads the tokens file at path. A missing file means no tokens (every
// write is refused) rather than an error, so a server can start before CI's
// token is provisioned; a malformed line is an error naming it.
func Load(path string, log *slog.Logger) (*Tokens, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t := &Tokens{path: path, log: log, recheck: time.Second}
	if err := t.reload(); err != nil {
		return nil, err
	}
	return t, nil
}

// SetRecheck changes how long a stat of the file is trusted before it is
// checked again for changes (default one second).
func (t *Tokens) SetRecheck(d time.Duration) {
	t.mu.Lock()
	t.recheck = d
	t.mu.Unlock()
}

func (t *Tokens) reload() error {
	st, err := os.Stat(t.path)
	if errors.Is(err, os.ErrNotExist) {
		t.entries, t.stamp = nil, fileStamp{}
		return nil
	}
	if err != nil {
		return fmt.Errorf("tokens file: %w", err)
	}
	data, err := os.ReadFile(t.path)
	if err != nil {
		return fmt.Errorf("tokens file: %w", err)
	}
	entries, err := parse(data)
	if err != nil {
		return fmt.Errorf("tokens file %s: %w", t.path, err)
	}
	t.entries = entries
	t.stamp = fileStamp{mod: st.ModTime(), size: st.Size(), ok: true}
	return nil
}

// current returns the entries, re-reading the file first when its mtime or
// size changed. A file that became malformed keeps the old tokens working
// and is logged, so a typo does not lock CI out; a deleted file revokes all.
func (t *Tokens) current() []entry {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := time.Now()
	if now.Sub(t.lastCheck) < t.recheck {
		return t.entries
	}
	t.lastCheck = now
	st, err := os.Stat(t.path)
	var stamp fileStamp
	if err == nil {
		stamp = fileStamp{mod: st.ModTime(), size: st.Size(), ok: true}
	}
	if stamp == t.stamp {
		return t.entries
	}
	if err := t.reload(); err != nil {
		t.log.Error("tokens file not reloaded, keeping the previous tokens", "err", err)
		return t.entries
	}
	t.log.Info("tokens file reloaded", "path", t.path, "tokens", len(t.entries))
	return t.entries
}

// parse reads the tokens file format.
func parse(data []byte) ([]entry, error) {
	var out []entry
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Split(line, ":")
		if len(f) != 3 || f[0] == "" {
			return nil, fmt.Errorf("line %d: want name:permissions:sha256hex", n)
		}
		perm, err := ParsePerm(f[1])
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		h, err := hex.DecodeString(f[2])
		if err != nil || len(h) != sha256.Size {
			return nil, fmt.Errorf("line %d: the hash must be 64 hex digits (sha256 of the token)", n)
		}
		e := entry{name: f[0], perm: perm}
		copy(e.hash[:], h)
		out = append(out, e)
	}
	return out, sc.Err()
}

// Check looks a presented token up. Every stored hash is compared, in
// constant time, so timing tells nothing about which or how many matched.
func (t *Tokens) Check(token string) (name string, perm Perm, ok bool) {
	if token == "" {
		return "", 0, false
	}
	sum := sha256.Sum256([]byte(token))
	for _, e := range t.current() {
		if subtle.ConstantTimeCompare(sum[:], e.hash[:]) == 1 {
			name, perm, ok = e.name, e.perm, true
		}
	}
	return name, perm, ok
}

// Credentials extracts the presented token from a request: the Bearer
// token, or the Basic password (any user name; nix's netrc sends
// "login x password TOKEN"). A Basic request with the token as user name
// and an empty password is accepted too, as curl -u TOKEN: sends.
func Credentials(r *http.Request) (token string, ok bool) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return "", false
	}
	if scheme, rest, found := strings.Cut(h, " "); found && strings.EqualFold(scheme, "Bearer") {
		return strings.TrimSpace(rest), true
	}
	if user, pass, found := r.BasicAuth(); found {
		if pass == "" {
			return user, true
		}
		return pass, true
	}
	return "", true // some Authorization we do not understand: treat as wrong credentials
}

// Authorize checks that r carries a token with all of need. It returns the
// token's name for logging.
func (t *Tokens) Authorize(r *http.Request, need Perm) (string, error) {
	token, present := Credentials(r)
	if !present {
		return "", ErrNoCredentials
	}
	name, perm, ok := t.Check(token)
	if !ok {
		return "", ErrUnknownToken
	}
	if perm&need != need {
		return name, fmt.Errorf("%w: %q has %s, needs %s", ErrForbidden, name, perm, need)
	}
	return name, nil
}

// Status maps an Authorize error to its HTTP status: 401 (and the caller
// must send WWW-Authenticate, see Deny) or 403.
func Status(err error) int {
	if errors.Is(err, ErrForbidden) {
		return http.StatusForbidden
	}
	return http.StatusUnauthorized
}

// Deny writes the answer for an Authorize error.
func Deny(w http.ResponseWriter, err error) {
	code := Status(err)
	if code == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Basic realm="`+Realm+`", charset="UTF-8"`)
	}
	http.Error(w, err.Error(), code)
}

// Require wraps next so it runs only for requests holding need.
func (t *Tokens) Require(need Perm, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := t.Authorize(r, need); err != nil {
			Deny(w, err)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// Generate makes a new random token (32 bytes, URL-safe base64) and the
// line that grants it perm under name in the tokens file.
func Generate(name string, perm Perm) (token, line string, err error) {
	if name == "" || strings.ContainsAny(name, ":\n") {
		return "", "", fmt.Errorf("token name %q must be non-empty without ':'", name)
	}
	if perm == 0 {
		return "", "", errors.New("token needs at least one permission")
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", "", err
	}
	token = base64.RawURLEncoding.EncodeToString(b)
	return token, Line(name, perm, token), nil
}

// Line renders the tokens-file line for token.
func Line(name string, perm Perm, token string) string {
	sum := sha256.Sum256([]byte(token))
	return name + ":" + perm.String() + ":" + hex.EncodeToString(sum[:])
}
