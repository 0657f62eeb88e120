// Package cacheapi is the one client of a Concordia cache's HTTP interface:
// narinfos (read as any Nix client reads them) and the cache's own API
// (pins, GC, verify). The deployer's closure check and pinner and the
// `cache` command's --cache mode all use it, and it is the one place that
// finds the token a caller sends: a token file, a netrc (as Nix reads it
// for `nix copy`) or $CONCORDIA_TOKEN.
package cacheapi

import (
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
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%w: %s %s: %v", ErrUnavailable, method, u, err)
	}
	if resp.StatusCode/100 == 2 {
		if int64(len(data)) > limit {
			return nil, fmt.Errorf("%w: %s %s: answer larger than %d bytes", ErrUnavailable, method, u, limit)
		}
		return data, nil
	}
	e := &Error{Method: method, Path: path, Status: resp.Status, Body: strings.TrimSpace(string(data[:min(len(data), 4096)]))}
	switch resp.StatusCode {
	case http.StatusUnauthorized:
		e.kind = ErrAuth
	case http.StatusForbidden:
		e.kind = ErrForbidden
	case http.StatusNotFound, http.StatusGone:
		e.kind = ErrNotFound
	case http.StatusMethodNotAllowed:
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
	hash, err := hashOf(storePath)
	if err != nil {
		return nil, err
	}
	body, _ := json.Marshal(map[string]string{"storePath": storePath, "note": note})
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

// Pins returns the pin list (admin) as the cache answers it, a JSON array
// of the upload store's pins.
func (c *Client) Pins(ctx context.Context) (json.RawMessage, error) {
	data, err := c.do(ctx, http.MethodGet, "/api/pins", nil, 64<<20)
	return json.RawMessage(data), apiErr(err)
}

// Call is any other API call (GC, verify): method and path with its query,
// the JSON body (nil: none), the answer decoded into out (a *string gets
// the text; nil: dropped).
func (c *Client) Call(ctx context.Context, method, path string, body []byte, out any) error {
	data, err := c.do(ctx, method, path, body, 64<<20)
	if err != nil {
		return apiErr(err)
	}
	switch o := out.(type) {
	case nil:
		return nil
	case *string:
		*o = strings.TrimSpace(string(data))
		return nil
	default:
		return json.Unmarshal(data, out)
	}
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
	u, err := url.Parse(cacheURL)
	if err != nil {
		return "", fmt.Errorf("cache URL %q: %v", cacheURL, err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("netrc: %w", err)
	}
	words := strings.Fields(string(b))
	var machine, def string
	cur := ""
	for i := 0; i+1 < len(words); i++ {
		switch words[i] {
		case "machine":
			cur = words[i+1]
			i++
		case "default":
			cur = "\x00default"
		case "password":
			if cur == u.Hostname() && machine == "" {
				machine = words[i+1]
			}
			if cur == "\x00default" && def == "" {
				def = words[i+1]
			}
			i++
		}
	}
	if machine != "" {
		return machine, nil
	}
	return def, nil
}
