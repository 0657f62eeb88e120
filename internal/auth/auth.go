// Package auth decides who may read from, write to, pin in and administer
// the cache. Tokens live in a plain file, one per line, as
// "name:permissions:sha256hex"; only the SHA-256 of each token is stored, so
// the file leaks nothing usable.
//
// Revocation must hold, so the file is reread by content: on use (at most
// once a second), periodically (Watch) and on demand (Reload, SIGHUP in
// `cache serve`) the file is read again, through any symlink, and a change
// of its bytes replaces every token. Its size and mtime mean nothing here: a
// rotated file of the same size and mtime (cp -p, rsync -a, a symlink into
// the Nix store) is seen like any other.
//
// Reloads fail closed. A file that cannot be read (deleted, no permission)
// leaves no token working. A line that does not parse, or whose name or
// token is also on another line, is refused (every line involved) and
// reported with its line number in the log and in FileStatus; the other lines
// are used, and the previous version of the file is never kept, so an edit
// that revokes a token can only ever take tokens away. Load, at start, is
// strict instead: a malformed file is an error naming the line.
//
// An unmodified `nix copy` can only send HTTP Basic credentials from its
// netrc file, so Basic is accepted (any user name, the token as password)
// beside `Authorization: Bearer <token>`.
package auth

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Perm is a set of permissions.
type Perm uint8

const (
	// Read allows fetching from a private cache.
	Read Perm = 1 << iota
	// Write allows uploads (nix copy --to): new, verified paths only. It
	// does not imply Read (a CI upload token for a private cache says
	// "read,write"), and it does not allow pinning or administration.
	Write
	// Pin allows pinning paths, and unpinning the pins made under the
	// same token name, never anyone else's: the deployer's permission.
	Pin
	// Admin allows garbage collection, verify and repair, the pin list,
	// and unpinning any pin; it includes Pin. It grants neither Read nor
	// Write.
	Admin
)

var permNames = []struct {
	p    Perm
	name string
}{{Read, "read"}, {Write, "write"}, {Pin, "pin"}, {Admin, "admin"}}

func (p Perm) String() string {
	var parts []string
	for _, n := range permNames {
		if p&n.p != 0 {
			parts = append(parts, n.name)
		}
	}
	return strings.Join(parts, ",")
}

// Has reports whether p grants every permission in need (Admin grants Pin).
func (p Perm) Has(need Perm) bool {
	if p&Admin != 0 {
		p |= Pin
	}
	return p&need == need
}

// ParsePerm parses a comma-separated list of read, write, pin and admin
// (any order), e.g. "read,write" or "pin".
func ParsePerm(s string) (Perm, error) {
	var p Perm
	for _, w := range strings.Split(s, ",") {
		w = strings.TrimSpace(w)
		found := false
		for _, n := range permNames {
			if w == n.name {
				p |= n.p
				found = true
			}
		}
		if !found {
			return 0, fmt.Errorf("unknown permission %q (want a comma-separated list of read, write, pin, admin)", w)
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

// DefaultRecheck is how long a read of the tokens file is trusted before a
// use reads it again.
const DefaultRecheck = time.Second

type entry struct {
	name string
	perm Perm
	hash [sha256.Size]byte
}

// Problem is a line of the tokens file that was refused. Reason never
// contains a hash.
type Problem struct {
	Line   int
	Reason string
}

func (p Problem) String() string { return fmt.Sprintf("line %d: %s", p.Line, p.Reason) }

// FileStatus is what the last read of the tokens file found.
type FileStatus struct {
	// Tokens is the number of usable tokens.
	Tokens int
	// Refused are the lines that were not used.
	Refused []Problem
	// Err is set when the file could not be read: no token works.
	Err error
	// Read is when the file was last read and found changed (or first read).
	Read time.Time
}

// snapshot is one version of the file, swapped whole.
type snapshot struct {
	entries  []entry
	sum      [sha256.Size]byte // of the bytes read; meaningful when err == nil
	err      error
	problems []Problem
	read     time.Time
}

// Tokens is the tokens file, reread as described in the package comment.
// The zero value is not usable; use Load.
type Tokens struct {
	path    string
	log     *slog.Logger
	recheck atomic.Int64 // nanoseconds a read is trusted; tests set 0

	mu        sync.Mutex // serializes rereads
	lastCheck atomic.Int64
	snap      atomic.Pointer[snapshot]
}

// Load reads the tokens file at path. A missing file means no tokens (every
// authenticated request is refused) rather than an error, so a server can
// start before CI's token is provisioned. A file that is present but
// unreadable, or has a refused line, is an error naming it: at start an
// operator is there to fix it.
func Load(path string, log *slog.Logger) (*Tokens, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t := &Tokens{path: path, log: log}
	t.recheck.Store(int64(DefaultRecheck))
	s := t.read()
	switch {
	case errors.Is(s.err, fs.ErrNotExist):
		log.Warn("tokens file does not exist: every token is refused until it does", "path", path)
	case s.err != nil:
		return nil, s.err
	case len(s.problems) > 0:
		msgs := make([]string, len(s.problems))
		for i, p := range s.problems {
			msgs[i] = p.String()
		}
		return nil, fmt.Errorf("tokens file %s: %s", path, strings.Join(msgs, "; "))
	}
	t.snap.Store(s)
	t.lastCheck.Store(time.Now().UnixNano())
	return t, nil
}

// SetRecheck changes how long a read of the file is trusted before a use
// reads it again (default DefaultRecheck).
func (t *Tokens) SetRecheck(d time.Duration) { t.recheck.Store(int64(d)) }

// Path is the tokens file's path.
func (t *Tokens) Path() string { return t.path }

// read reads and parses the file into a new snapshot.
func (t *Tokens) read() *snapshot {
	s := &snapshot{read: time.Now()}
	data, err := os.ReadFile(t.path)
	if err != nil {
		s.err = fmt.Errorf("tokens file: %w", err)
		return s
	}
	s.sum = sha256.Sum256(data)
	s.entries, s.problems = parse(data)
	return s
}

// refresh rereads the file and swaps the snapshot when its content (or
// readability) changed, logging what changed. Callers hold t.mu.
func (t *Tokens) refresh() *snapshot {
	old := t.snap.Load()
	s := t.read()
	if old != nil && s.err == nil && old.err == nil && s.sum == old.sum {
		return old
	}
	if old != nil && s.err != nil && old.err != nil && s.err.Error() == old.err.Error() {
		return old
	}
	t.snap.Store(s)
	if s.err != nil {
		t.log.Error("tokens file cannot be read: every token is refused", "path", t.path, "err", s.err)
		return s
	}
	for _, p := range s.problems {
		t.log.Error("tokens file line refused: its token does not work", "path", t.path, "line", p.Line, "reason", p.Reason)
	}
	t.log.Info("tokens file reloaded", "path", t.path, "tokens", len(s.entries), "refused_lines", len(s.problems))
	return s
}

// current returns the snapshot, rereading the file first when the last
// read is older than the recheck interval.
func (t *Tokens) current() *snapshot {
	recheck := t.recheck.Load()
	if time.Now().UnixNano()-t.lastCheck.Load() >= recheck {
		t.mu.Lock()
		// Another caller may have reread while this one waited.
		if now := time.Now().UnixNano(); now-t.lastCheck.Load() >= recheck {
			t.refresh()
			t.lastCheck.Store(time.Now().UnixNano())
		}
		t.mu.Unlock()
	}
	return t.snap.Load()
}

// Reload rereads the file now (SIGHUP) and returns what it found.
func (t *Tokens) Reload() FileStatus {
	t.mu.Lock()
	s := t.refresh()
	t.lastCheck.Store(time.Now().UnixNano())
	t.mu.Unlock()
	return s.status()
}

// Watch rereads the file every interval until ctx ends, so a revocation
// and a broken file show in the log and in FileStatus even while no request
// comes.
func (t *Tokens) Watch(ctx context.Context, every time.Duration) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			t.Reload()
		}
	}
}

// FileStatus reports the current version of the file (rereading it if
// the last read is older than the recheck interval).
func (t *Tokens) FileStatus() FileStatus { return t.current().status() }

func (s *snapshot) status() FileStatus {
	return FileStatus{Tokens: len(s.entries), Refused: append([]Problem(nil), s.problems...), Err: s.err, Read: s.read}
}

// parse reads the tokens file format. Lines that do not parse are
// refused; so are all the lines sharing a name or a token hash, since
// either could be the one meant to be revoked.
func parse(data []byte) ([]entry, []Problem) {
	type parsed struct {
		entry
		line int
	}
	var lines []parsed
	var problems []Problem
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Split(line, ":")
		if len(f) != 3 || f[0] == "" {
			problems = append(problems, Problem{n, "want name:permissions:sha256hex"})
			continue
		}
		perm, err := ParsePerm(f[1])
		if err != nil {
			problems = append(problems, Problem{n, err.Error()})
			continue
		}
		h, err := hex.DecodeString(f[2])
		if err != nil || len(h) != sha256.Size {
			problems = append(problems, Problem{n, "the hash must be 64 hex digits (sha256 of the token)"})
			continue
		}
		p := parsed{entry{name: f[0], perm: perm}, n}
		copy(p.hash[:], h)
		lines = append(lines, p)
	}
	if err := sc.Err(); err != nil {
		// A line too long to read: nothing after it is trusted either.
		problems = append(problems, Problem{n + 1, "unreadable from here on: " + err.Error()})
	}
	firstName, firstHash := map[string]int{}, map[[sha256.Size]byte]int{}
	for _, p := range lines {
		if _, ok := firstName[p.name]; !ok {
			firstName[p.name] = p.line
		}
		if _, ok := firstHash[p.hash]; !ok {
			firstHash[p.hash] = p.line
		}
	}
	dupName, dupHash := map[string]bool{}, map[[sha256.Size]byte]bool{}
	for _, p := range lines {
		if firstName[p.name] != p.line {
			dupName[p.name] = true
		}
		if firstHash[p.hash] != p.line {
			dupHash[p.hash] = true
		}
	}
	var out []entry
	for _, p := range lines {
		switch {
		case dupName[p.name]:
			problems = append(problems, Problem{p.line, "a token name must be on one line only; every line with this name is refused"})
		case dupHash[p.hash]:
			problems = append(problems, Problem{p.line, "the same token is on another line; every line with it is refused"})
		default:
			out = append(out, p.entry)
		}
	}
	slices.SortStableFunc(problems, func(a, b Problem) int { return a.Line - b.Line })
	return out, problems
}

// Check looks a presented token up. Every stored hash is compared, in
// constant time, so timing tells nothing about which or how many matched.
func (t *Tokens) Check(token string) (name string, perm Perm, ok bool) {
	if token == "" {
		return "", 0, false
	}
	sum := sha256.Sum256([]byte(token))
	for _, e := range t.current().entries {
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

// Authenticate returns the name and permissions of the token r carries.
func (t *Tokens) Authenticate(r *http.Request) (name string, perm Perm, err error) {
	token, present := Credentials(r)
	if !present {
		return "", 0, ErrNoCredentials
	}
	name, perm, ok := t.Check(token)
	if !ok {
		return "", 0, ErrUnknownToken
	}
	return name, perm, nil
}

// Authorize checks that r carries a token with all of need. It returns the
// token's name for logging.
func (t *Tokens) Authorize(r *http.Request, need Perm) (string, error) {
	name, perm, err := t.Authenticate(r)
	if err != nil {
		return "", err
	}
	if !perm.Has(need) {
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
	if name == "" || strings.ContainsAny(name, ":\n\r") || strings.TrimSpace(name) != name || strings.HasPrefix(name, "#") {
		return "", "", fmt.Errorf("token name %q must be non-empty, without ':', newlines, surrounding spaces or a leading '#'", name)
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
