// Package cacheapi is the one client of a Concordia cache's HTTP interface:
// narinfos (read as any Nix client reads them) and the cache's own API
// (pins, GC, verify, tombstones). The deployer's closure check and pinner and the
// `cache` command's --cache mode all use it, and it is the one place that
// finds the token a caller sends: a token file, a netrc (as Nix reads it
// for `nix copy`) or $CONCORDIA_TOKEN.
package cacheapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/pkg/narinfo"
)

// Errors of the client, by what the cache answered.
var (
	// ErrUnavailable: the cache could not be asked (network, 5xx), as
	// opposed to answering "no".
	ErrUnavailable = errors.New("cache unavailable")
	// ErrAuth: 401, the token is missing, unknown or revoked.
	ErrAuth = errors.New("cache refused the credentials")
	// ErrForbidden: 403, the token lacks the permission.
	ErrForbidden = errors.New("cache token lacks the permission")
	// ErrNotFound: 404 (or 410).
	ErrNotFound = errors.New("not found in the cache")
	// ErrNoAPI: the server has no such API (404/405 on an API route: not a
	// Concordia cache, or an older one).
	ErrNoAPI = errors.New("cache has no such API")
	// ErrTooManyPins: 403 because the token holds as many pins as the
	// cache allows (limits.max_pins_per_token); it is an ErrForbidden too.
	ErrTooManyPins = fmt.Errorf("%w: the token's pin limit is reached", ErrForbidden)
)

// MaxNarInfo bounds the narinfo body read (what the cache's own
// max_narinfo_size allows is far below it).
const MaxNarInfo = 1 << 20

// Client talks to one cache.
type Client struct {
	// URL is the cache's base URL, e.g. https://cache.example.org.
	URL string
	// Token is sent as "Authorization: Bearer <token>" when set.
	Token string
	// HTTP is the client used; http.DefaultClient when nil.
	HTTP *http.Client
}

// Error is a refused API call: the status and what the cache said.
type Error struct {
	Method, Path string
	Status       string
	Body         string
	kind         error
}

func (e *Error) Error() string {
	s := fmt.Sprintf("%s %s: %s", e.Method, e.Path, e.Status)
	if e.Body != "" {
		s += ": " + e.Body
	}
	return s
}

func (e *Error) Unwrap() error { return e.kind }

func (c *Client) http() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return http.DefaultClient
}

// do sends one request and returns the response body (at most limit
// bytes) of a 2xx answer, or an *Error.
func (c *Client) do(ctx context.Context, method, path string, body []byte, limit int64) ([]byte, error) {
	resp, err := c.send(ctx, method, path, body)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%w: %s %s: %v", ErrUnavailable, method, resp.Request.URL, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%w: %s %s: answer larger than %d bytes", ErrUnavailable, method, resp.Request.URL, limit)
	}
	return data, nil
}

// send sends one request and returns the response of a 2xx answer, its
// body for the caller to read and close, or an *Error.
func (c *Client) send(ctx context.Context, method, path string, body []byte) (*http.Response, error) {
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	u := strings.TrimRight(c.URL, "/") + path
	req, err := http.NewRequestWithContext(ctx, method, u, r)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	resp, err := c.http().Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: %s %s: %v", ErrUnavailable, method, u, err)
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	e := &Error{Method: method, Path: path, Status: resp.Status, Body: strings.TrimSpace(string(data))}
	switch resp.StatusCode {
	case http.StatusUnauthorized:
		e.kind = ErrAuth
	case http.StatusForbidden:
		e.kind = ErrForbidden
		if resp.Header.Get(store.RefusalHeader) == store.RefusalTooManyPins {
			e.kind = ErrTooManyPins
		}
	case http.StatusNotFound, http.StatusGone:
		e.kind = ErrNotFound
	case http.StatusMethodNotAllowed, http.StatusNotImplemented:
		// 501: the cache has the route but not what serves it (a deploy
		// history without an upload store).
		e.kind = ErrNoAPI
	default:
		e.kind = ErrUnavailable
	}
	return nil, e
}

// NarInfo fetches and parses <hash>.narinfo; (nil, nil) when the cache
// does not have it.
func (c *Client) NarInfo(ctx context.Context, hashPart string) (*narinfo.NarInfo, error) {
	data, err := c.do(ctx, http.MethodGet, "/"+hashPart+".narinfo", nil, MaxNarInfo)
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		if !errors.Is(err, ErrUnavailable) {
			err = fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		return nil, err
	}
	info, err := narinfo.Parse(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("%w: %s.narinfo: %v", ErrUnavailable, hashPart, err)
	}
	return info, nil
}

// Pin pins storePath (so GC keeps it and its closure), noting why. It
// returns the cache's answer.
func (c *Client) Pin(ctx context.Context, storePath, note string) (json.RawMessage, error) {
	return c.PinWith(ctx, storePath, note, false)
}

// PinWith is Pin; upstream also has a cache with pull-through pull the
// paths of the closure that only an upstream has, so the pin keeps them.
func (c *Client) PinWith(ctx context.Context, storePath, note string, upstream bool) (json.RawMessage, error) {
	hash, err := hashOf(storePath)
	if err != nil {
		return nil, err
	}
	body, _ := json.Marshal(map[string]any{"storePath": storePath, "note": note, "upstream": upstream})
	data, err := c.do(ctx, http.MethodPost, "/api/pins/"+hash, body, 1<<20)
	return json.RawMessage(data), apiErr(err)
}

// Unpin removes the pin of storePath (or of a bare hash part).
func (c *Client) Unpin(ctx context.Context, pathOrHash string) (json.RawMessage, error) {
	hash, err := hashOf(pathOrHash)
	if err != nil {
		return nil, err
	}
	data, err := c.do(ctx, http.MethodDelete, "/api/pins/"+hash, nil, 1<<20)
	return json.RawMessage(data), apiErr(err)
}

// Pins returns the pin list (admin).
func (c *Client) Pins(ctx context.Context) ([]store.Pin, error) {
	data, err := c.do(ctx, http.MethodGet, "/api/pins", nil, 64<<20)
	if err != nil {
		return nil, apiErr(err)
	}
	var pins []store.Pin
	if err := json.Unmarshal(data, &pins); err != nil {
		return nil, fmt.Errorf("%w: GET /api/pins: %v", ErrUnavailable, err)
	}
	return pins, nil
}

// GC has the cache collect its upload store (admin). A zero field of p
// leaves the cache's own [gc] bound; dryRun only reports.
func (c *Client) GC(ctx context.Context, p store.Policy, dryRun bool) (*store.GCReport, error) {
	q := fmt.Sprintf("/api/gc?dry-run=%t", dryRun)
	if p.MaxSize > 0 {
		q += fmt.Sprintf("&max-size=%d", p.MaxSize)
	}
	if p.MaxAge > 0 {
		q += "&max-age=" + p.MaxAge.String()
	}
	data, err := c.do(ctx, http.MethodPost, q, nil, 64<<20)
	if err != nil {
		return nil, apiErr(err)
	}
	var rep store.GCReport
	if err := json.Unmarshal(data, &rep); err != nil {
		return nil, fmt.Errorf("%w: POST /api/gc: %v", ErrUnavailable, err)
	}
	return &rep, nil
}

// ErrVerifyFailed: the cache's verify run stopped on an error (its answer
// said ERROR), so what it checked is not the whole store.
var ErrVerifyFailed = errors.New("the cache's verify failed")

// Verify has the cache re-hash its upload store (admin), quarantining
// damage with repair. The answer streams while the cache works: progress,
// when set, gets each progress report, and line every other line, as the
// cache words it (what `cache verify` prints). damaged reports a damaged
// NAR file; an ERROR line is ErrVerifyFailed, after every line was given.
func (c *Client) Verify(ctx context.Context, repair bool, progress func(done, total int64), line func(string)) (damaged bool, err error) {
	resp, err := c.send(ctx, http.MethodPost, fmt.Sprintf("/api/verify?repair=%t", repair), nil)
	if err != nil {
		return false, apiErr(err)
	}
	defer resp.Body.Close()
	failed := false
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		text := sc.Text()
		var done, total int64
		if n, _ := fmt.Sscanf(text, "progress %d %d", &done, &total); n == 2 {
			if progress != nil {
				progress(done, total)
			}
			continue
		}
		damaged = damaged || strings.HasPrefix(text, "DAMAGED ")
		failed = failed || strings.HasPrefix(text, "ERROR ")
		line(text)
	}
	if err := sc.Err(); err != nil {
		return damaged, fmt.Errorf("%w: reading the answer of POST /api/verify: %v", ErrUnavailable, err)
	}
	if failed {
		return damaged, ErrVerifyFailed
	}
	return damaged, nil
}

// Forget lifts the tombstone of a collected path (admin), so it may be
// uploaded with another NAR: ErrNotFound when there is none.
func (c *Client) Forget(ctx context.Context, pathOrHash string) error {
	hash, err := hashOf(pathOrHash)
	if err != nil {
		return err
	}
	_, err = c.do(ctx, http.MethodDelete, "/api/tombstones/"+hash, nil, 1<<20)
	return apiErr(err)
}

// apiErr tells a missing API from a missing thing: 405, or a 404 whose
// body is the router's default ("404 page not found", not an answer of
// the API, which names what it did not find), mean the server has no such
// route (not a Concordia cache, or an older one).
func apiErr(err error) error {
	var e *Error
	if errors.As(err, &e) && (errors.Is(err, ErrNoAPI) || errors.Is(err, ErrNotFound) && e.Body == "404 page not found") {
		e.kind = ErrNoAPI
	}
	return err
}

func hashOf(pathOrHash string) (string, error) {
	if narinfo.ValidHashPart(pathOrHash) {
		return pathOrHash, nil
	}
	base := pathOrHash[strings.LastIndexByte(pathOrHash, '/')+1:]
	hash, _, err := narinfo.ParseBaseName(base)
	if err != nil {
		return "", err
	}
	return hash, nil
}

// EnvToken is the environment variable a token may come from.
const EnvToken = "CONCORDIA_TOKEN"

// Token finds the token for cacheURL: the first line of file when given,
// else the password netrc holds for the cache's host (the netrc CI hands
// `nix copy`; a "default" entry counts), else $CONCORDIA_TOKEN. "" when
// none is set anywhere.
func Token(file, netrc, cacheURL string) (string, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("cache token: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	if netrc != "" {
		t, err := NetrcPassword(netrc, cacheURL)
		if err != nil || t != "" {
			return t, err
		}
	}
	return os.Getenv(EnvToken), nil
}

// NetrcPassword returns the password netrc (file path) holds for the host
// of cacheURL, or the "default" entry's: the cache accepts its token as a
// Basic password, which is how Nix sends it, and as a Bearer token.
func NetrcPassword(path, cacheURL string) (string, error) {
	_, password, err := NetrcLogin(path, cacheURL)
	return password, err
}

// NetrcLogin is the login and password a netrc gives the host of
// cacheURL (its "machine" entry, else "default"), as curl reads it for
// Nix. Empty strings when it names neither.
func NetrcLogin(path, cacheURL string) (login, password string, err error) {
	u, err := url.Parse(cacheURL)
	if err != nil {
		return "", "", fmt.Errorf("cache URL %q: %v", cacheURL, err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", "", fmt.Errorf("netrc: %w", err)
	}
	type entry struct{ login, password string }
	var machine, def *entry
	var cur *entry
	words := strings.Fields(string(b))
	for i := 0; i < len(words); i++ {
		switch words[i] {
		case "machine":
			cur = nil
			if i+1 < len(words) {
				if words[i+1] == u.Hostname() && machine == nil {
					machine = &entry{}
					cur = machine
				}
				i++
			}
		case "default":
			cur = nil
			if def == nil {
				def = &entry{}
				cur = def
			}
		case "login", "password":
			if i+1 < len(words) {
				if cur != nil && words[i] == "login" {
					cur.login = words[i+1]
				} else if cur != nil {
					cur.password = words[i+1]
				}
				i++
			}
		}
	}
	for _, e := range []*entry{machine, def} {
		if e != nil && e.password != "" {
			return e.login, e.password, nil
		}
	}
	return "", "", nil
}
