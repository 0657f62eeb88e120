package nixreplay

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/bos55/concordia/pkg/nar"
	"github.com/bos55/concordia/pkg/narinfo"
)

// Errors a replayed operation ends in, for errors.Is. The client's own
// message is in the wrapping error.
var (
	ErrStatus     = errors.New("nixreplay: status the client does not accept") // Fatal, or Retry exhausted
	ErrAbsent     = errors.New("nixreplay: not in the binary cache")           // narinfo absent for a wanted path; NAR "substitute gone"
	ErrNotCache   = errors.New("nixreplay: does not appear to be a binary cache")
	ErrCut        = errors.New("nixreplay: transfer cut and not resumable") // client would not (or could no longer) resume
	ErrDecode     = errors.New("nixreplay: client cannot decode the body")
	ErrVerify     = errors.New("nixreplay: NAR does not match its narinfo")
	ErrBadNarInfo = errors.New("nixreplay: narinfo the client rejects")
)

// Entry is one HTTP request as the client made it and the conclusion it
// drew from the answer.
type Entry struct {
	Method          string
	Path            string // URL path, e.g. /nar/<filehash>.nar.zst
	AcceptEncoding  string
	ContentType     string
	ContentEncoding string // of the request body (PUT)
	Expect          string
	Range           string
	Status          int  // 0: no response (transport error)
	Kind            Kind // role of the request in the client
	Outcome         Outcome
	Err             string // transport or body error, if any
}

// Client replays one Profile against the binary cache at BaseURL.
type Client struct {
	Profile
	BaseURL string
	// HTTP defaults to a client whose transport adds no Accept-Encoding
	// of its own (Go's default would send "gzip" and decode silently,
	// which no Nix version does) and sends Expect: 100-continue properly.
	HTTP *http.Client
	// Login and Password, when set, go out as HTTP Basic on every
	// request: what curl does with a netrc entry for the host.
	Login, Password string
	// Sleep waits between retries; nil does not wait (the real client
	// waits 250 ms doubling, filetransfer.cc 2.8.0:465).
	Sleep    func(ctx context.Context, attempt int) error
	StoreDir string // default /nix/store

	mu    sync.Mutex
	trace []Entry
}

// Trace returns the requests made so far.
func (c *Client) Trace() []Entry {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.trace)
}

// ResetTrace forgets the requests made so far.
func (c *Client) ResetTrace() {
	c.mu.Lock()
	c.trace = nil
	c.mu.Unlock()
}

func (c *Client) storeDir() string { return cmp.Or(c.StoreDir, "/nix/store") }

var defaultHTTP = &http.Client{Transport: &http.Transport{
	DisableCompression:    true,
	ExpectContinueTimeout: 5 * time.Second,
	MaxIdleConnsPerHost:   25, // http-connections
}}

func (c *Client) http() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return defaultHTTP
}

func (c *Client) record(e Entry) {
	c.mu.Lock()
	c.trace = append(c.trace, e)
	c.mu.Unlock()
}

type response struct {
	status int
	header http.Header
	body   []byte // as received: still Content-Encoded
}

// request makes one transfer the way TransferItem does, with retries and,
// for a NAR, resumes. It returns the last response and the outcome.
func (c *Client) request(ctx context.Context, kind Kind, method, p string, body []byte, hdr map[string]string) (*response, Outcome, error) {
	var got []byte   // NAR bytes already "written to the sink"
	var etag string  // Lix refuses a resume whose ETag changed
	var encoded bool // the response that got cut had a Content-Encoding
	var rangeRefused bool
	for attempt := 1; ; attempt++ {
		req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(c.BaseURL, "/")+p, bytes.NewReader(body))
		if err != nil {
			return nil, Fatal, err
		}
		if body == nil {
			req.Body, req.ContentLength = http.NoBody, 0
		}
		resuming := len(got) > 0
		if c.UserAgent != "" {
			req.Header.Set("User-Agent", c.UserAgent)
		}
		if ae := c.AcceptEncoding; ae != "" &&
			(method == http.MethodGet || method == http.MethodHead && c.AcceptEncOnHead || method == http.MethodPut && c.AcceptEncOnPut) &&
			(!resuming || c.AcceptEncOnRange) {
			req.Header.Set("Accept-Encoding", ae)
		}
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		if method == http.MethodPut && c.Expect100 {
			req.Header.Set("Expect", "100-continue")
		}
		if resuming {
			req.Header.Set("Range", fmt.Sprintf("bytes=%d-", len(got)))
		}
		if c.Login != "" || c.Password != "" {
			req.SetBasicAuth(c.Login, c.Password)
		}
		e := Entry{Method: method, Path: p, Kind: kind,
			AcceptEncoding: req.Header.Get("Accept-Encoding"), ContentType: req.Header.Get("Content-Type"),
			ContentEncoding: req.Header.Get("Content-Encoding"), Expect: req.Header.Get("Expect"), Range: req.Header.Get("Range")}

		resp, err := c.http().Do(req)
		var r *response
		var bodyErr error
		if err == nil {
			r = &response{status: resp.StatusCode, header: resp.Header}
			r.body, bodyErr = io.ReadAll(resp.Body)
			resp.Body.Close()
			e.Status = resp.StatusCode
		}
		out := Retry // transport errors are transient (curl codes outside Nix's no-retry list)
		switch {
		case err != nil:
			e.Err = err.Error()
		case resuming && r.status == http.StatusOK:
			// curl: "HTTP server doesn't seem to support byte ranges"
			// (CURLE_RANGE_ERROR), transient for Nix. Unverified against
			// a real run.
			e.Err, rangeRefused = "range not honoured", true
		case bodyErr != nil && c.Classify(kind, r.status) == OK:
			e.Err = bodyErr.Error()
		default:
			out = c.Classify(kind, r.status)
		}
		if c.ResumeIgnoresEncoding && resuming && r != nil && etag != "" && r.header.Get("ETag") != etag {
			e.Err, out = "ETag changed during transfer", Fatal // curlfiletransfer.cc restartTransfer
		}
		e.Outcome = out
		c.record(e)

		if out == OK && resuming {
			if cr := r.header.Get("Content-Range"); !strings.HasPrefix(cr, fmt.Sprintf("bytes %d-", len(got))) {
				return r, Fatal, fmt.Errorf("%w: %s %s: Content-Range %q after Range from %d", ErrStatus, method, p, cr, len(got))
			}
			r.body = append(got, r.body...)
			return r, OK, nil
		}
		if out != Retry {
			if out == Fatal {
				return r, out, fmt.Errorf("%w: %s %s: HTTP %d", ErrStatus, method, p, e.Status)
			}
			return r, out, nil
		}
		// A transient failure. A NAR whose bytes reached the sink can only
		// go on with a Range request (filetransfer.cc 2.8.0:459-463).
		if kind == KindNAR && r != nil && bodyErr != nil && len(r.body) > 0 {
			if !resuming {
				etag = r.header.Get("ETag")
				encoded = contentEncoded(c.Profile, r.header.Get("Content-Encoding"))
			}
			if r.header.Get("Accept-Ranges") != "bytes" || encoded && !c.ResumeIgnoresEncoding {
				return r, Fatal, fmt.Errorf("%w: %s %s after %d bytes (Accept-Ranges %q, Content-Encoding %q)",
					ErrCut, method, p, len(got)+len(r.body), r.header.Get("Accept-Ranges"), r.header.Get("Content-Encoding"))
			}
			got = append(got, r.body...)
		}
		if attempt >= c.Tries {
			err := fmt.Errorf("%w: %s %s: %d attempts, last HTTP %d %s", ErrStatus, method, p, attempt, e.Status, e.Err)
			if rangeRefused || len(got) > 0 {
				err = fmt.Errorf("%w (%w)", err, ErrCut)
			}
			return r, Fatal, err
		}
		if c.Sleep != nil {
			if err := c.Sleep(ctx, attempt); err != nil {
				return r, Fatal, err
			}
		}
	}
}

// contentEncoded: does this Content-Encoding stop a resume? Before 2.34
// any non-empty value did, "identity" included (encoding.empty());
// from 2.34 identity counts as none (filetransfer.cc 2.34.0:324).
func contentEncoded(p Profile, ce string) bool {
	ce = strings.ToLower(strings.TrimSpace(ce))
	if p.CurlDecodes {
		return ce != "" && ce != "identity"
	}
	return ce != ""
}

// decodeBody undoes the response's Content-Encoding as the profile would.
func (c *Client) decodeBody(ctx context.Context, r *response) ([]byte, error) {
	ce := strings.ToLower(strings.TrimSpace(r.header.Get("Content-Encoding")))
	if !c.Decodes(ce, Sniff(r.body)) {
		return nil, fmt.Errorf("%w: Content-Encoding %q (bytes look like %q)", ErrDecode, ce, Sniff(r.body))
	}
	method := ce
	if !c.CurlDecodes && !c.ByName && ce != "br" && ce != "" && ce != "none" {
		method = Sniff(r.body)
	}
	return Decompress(ctx, method, r.body)
}

// decodeNAR undoes the narinfo's Compression as makeDecompressionSink
// does (binary-cache-store.cc 2.8.0:341, narFromPath).
func (c *Client) decodeNAR(ctx context.Context, compression string, b []byte) ([]byte, error) {
	s := Sniff(b)
	switch {
	case compression == "none" || compression == "":
		return b, nil
	case compression == "br":
		return Decompress(ctx, "br", b)
	case !c.ByName:
		if s == "" {
			return nil, fmt.Errorf("%w: Compression %s: input compression not recognized", ErrDecode, compression)
		}
		return Decompress(ctx, s, b)
	case s != compression:
		return nil, fmt.Errorf("%w: Compression %s but the bytes are %q", ErrDecode, compression, s)
	}
	return Decompress(ctx, compression, b)
}

// cacheInfo fetches nix-cache-info, PUTting one when the client takes it
// as absent, as BinaryCacheStore::init does for readers and writers alike
// (binary-cache-store.cc 2.8.0:37-61).
func (c *Client) cacheInfo(ctx context.Context) error {
	r, out, err := c.request(ctx, KindCacheInfo, http.MethodGet, "/nix-cache-info", nil, nil)
	if err != nil {
		return err
	}
	if out == Absent {
		_, _, err := c.request(ctx, KindPut, http.MethodPut, "/nix-cache-info", []byte("StoreDir: "+c.storeDir()+"\n"),
			map[string]string{"Content-Type": "text/x-nix-cache-info"})
		if err != nil {
			return fmt.Errorf("%w: %w", ErrNotCache, err)
		}
		return nil
	}
	b, err := c.decodeBody(ctx, r)
	if err != nil {
		return err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && k == "StoreDir" && strings.TrimSpace(v) != c.storeDir() {
			return fmt.Errorf("binary cache is for Nix stores with prefix %q, not %q", strings.TrimSpace(v), c.storeDir())
		}
	}
	return nil
}

// narInfo GETs and parses a narinfo; nil when the client takes it as absent.
func (c *Client) narInfo(ctx context.Context, storePath string) (*narinfo.NarInfo, error) {
	r, out, err := c.request(ctx, KindNarInfo, http.MethodGet, "/"+narinfo.HashPartOf(storePath)+".narinfo", nil, nil)
	if err != nil || out == Absent {
		return nil, err
	}
	b, err := c.decodeBody(ctx, r)
	if err != nil {
		return nil, err
	}
	ni, err := narinfo.Parse(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrBadNarInfo, storePath, err)
	}
	if ni.HashPart() != narinfo.HashPartOf(storePath) { // goodStorePath, store-api.cc 2.8.0:491-496
		return nil, fmt.Errorf("%w: asked for %s, got %s", ErrBadNarInfo, storePath, ni.StorePath)
	}
	return ni, nil
}

// Fetched is one substituted path.
type Fetched struct {
	NarInfo *narinfo.NarInfo
	NAR     []byte // decoded and checked against NarHash and NarSize
}

// Substitute replays nix copy --from <cache> --to <store> paths: the
// cache's nix-cache-info, CopyFromHEADs HEADs per top path, the closure's
// narinfos (top paths first, then references breadth-first), then the
// NARs with dependencies first (store-api.cc 2.8.0:981-1021, commands
// BuiltPathsCommand::run 2.8.0:146-172). It returns the closure in that
// order.
func (c *Client) Substitute(ctx context.Context, paths ...string) ([]Fetched, error) {
	if err := c.cacheInfo(ctx); err != nil {
		return nil, err
	}
	for _, p := range paths {
		for range c.CopyFromHEADs {
			_, out, err := c.request(ctx, KindExists, http.MethodHead, "/"+narinfo.HashPartOf(p)+".narinfo", nil, nil)
			if err != nil {
				return nil, err
			}
			if out == Absent {
				return nil, fmt.Errorf("%w: path '%s' is not valid", ErrAbsent, p)
			}
		}
	}
	infos := map[string]*narinfo.NarInfo{}
	queue := slices.Clone(paths)
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if _, ok := infos[p]; ok {
			continue
		}
		ni, err := c.narInfo(ctx, p)
		if err != nil {
			return nil, err
		}
		if ni == nil {
			return nil, fmt.Errorf("%w: path '%s' is not valid", ErrAbsent, p)
		}
		infos[p] = ni
		for _, r := range ni.References {
			if rp := ni.StoreDir() + "/" + r; rp != p {
				queue = append(queue, rp)
			}
		}
	}
	var out []Fetched
	for _, p := range topo(infos) {
		ni := infos[p]
		r, o, err := c.request(ctx, KindNAR, http.MethodGet, "/"+strings.TrimPrefix(ni.URL, "/"), nil, nil)
		if err != nil {
			return out, err
		}
		if o == Absent {
			return out, fmt.Errorf("%w: NAR %s of %s gone", ErrAbsent, ni.URL, p)
		}
		b, err := c.decodeBody(ctx, r)
		if err != nil {
			return out, fmt.Errorf("%s: %w", ni.URL, err)
		}
		if b, err = c.decodeNAR(ctx, ni.Compression, b); err != nil {
			return out, fmt.Errorf("%s: %w", ni.URL, err)
		}
		sum := sha256.Sum256(b)
		if got := narinfo.SHA256(sum[:]); !got.Equal(ni.NarHash) || uint64(len(b)) != ni.NarSize {
			return out, fmt.Errorf("%w: %s: got %s/%d, narinfo says %s/%d", ErrVerify, p, got, len(b), ni.NarHash, ni.NarSize)
		}
		out = append(out, Fetched{NarInfo: ni, NAR: b})
	}
	return out, nil
}

// topo orders store paths with every reference before its referrer, ties
// by path, as topoSortPaths followed by reverse yields one valid order.
func topo(infos map[string]*narinfo.NarInfo) []string {
	keys := make([]string, 0, len(infos))
	for k := range infos {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	done := map[string]bool{}
	var out []string
	var visit func(string)
	visit = func(p string) {
		if done[p] {
			return
		}
		done[p] = true
		ni := infos[p]
		refs := slices.Clone(ni.References)
		slices.Sort(refs)
		for _, r := range refs {
			if rp := ni.StoreDir() + "/" + r; rp != p && infos[rp] != nil {
				visit(rp)
			}
		}
		out = append(out, p)
	}
	for _, k := range keys {
		visit(k)
	}
	return out
}

// Path is one store path to upload: its NAR and the narinfo fields the
// uploader knows from its own store.
type Path struct {
	StorePath  string
	NAR        []byte
	References []string // full store paths or base names
	Deriver    string   // base name or ""
	CA         string
}

// UploadOptions are the binary cache store URL parameters of nix copy --to.
type UploadOptions struct {
	Compression     string // ?compression=, default xz as in Nix
	WriteNARListing bool   // ?write-nar-listing=1: PUT <hash>.ls
	// NarinfoCompression and LSCompression (?narinfo-compression=,
	// ?ls-compression=) need MetaCompression (2.32+).
	NarinfoCompression, LSCompression string
	Keys                              []narinfo.SecretKey // ?secret-key=
}

// narExt is the file-name suffix Nix gives a NAR it compressed with
// method: anything but these six, gzip and none included, gets a bare
// ".nar" (binary-cache-store.cc 2.8.0:168-175, 2.35.0:180-186).
func narExt(method string) string {
	switch method {
	case "xz":
		return ".nar.xz"
	case "bzip2":
		return ".nar.bz2"
	case "zstd":
		return ".nar.zst"
	case "lzip":
		return ".nar.lzip"
	case "lz4":
		return ".nar.lz4"
	case "br":
		return ".nar.br"
	}
	return ".nar"
}

type prepared struct {
	p    Path
	info *narinfo.NarInfo
	file []byte
}

// Upload replays nix copy --to <cache>?compression=... for paths (a
// closure; order does not matter): nix-cache-info, every path's narinfo
// (queryValidPaths), then the missing paths in the profile's Order.
func (c *Client) Upload(ctx context.Context, paths []Path, o UploadOptions) error {
	comp := cmp.Or(o.Compression, "xz")
	if !c.MetaCompression && (o.NarinfoCompression != "" || o.LSCompression != "") {
		return fmt.Errorf("%s has no narinfo-compression or ls-compression", c.Name)
	}
	if err := c.cacheInfo(ctx); err != nil {
		return err
	}
	known := map[string]bool{} // store path -> valid in the cache
	for _, p := range paths {
		ni, err := c.narInfo(ctx, p.StorePath)
		if err != nil {
			return err
		}
		known[p.StorePath] = ni != nil
	}
	prep := map[string]*prepared{}
	for _, p := range paths {
		if known[p.StorePath] {
			continue
		}
		file, err := Compress(ctx, comp, p.NAR)
		if err != nil {
			return err
		}
		narSum, fileSum := sha256.Sum256(p.NAR), sha256.Sum256(file)
		fh := narinfo.SHA256(fileSum[:])
		refs := make([]string, len(p.References))
		for i, r := range p.References {
			refs[i] = path.Base(r)
		}
		prep[p.StorePath] = &prepared{p: p, file: file, info: &narinfo.NarInfo{
			StorePath: p.StorePath, URL: "nar/" + strings.TrimPrefix(fh.String(), "sha256:") + narExt(comp),
			Compression: comp, FileHash: &fh, FileSize: uint64(len(file)),
			NarHash: narinfo.SHA256(narSum[:]), NarSize: uint64(len(p.NAR)),
			References: refs, Deriver: p.Deriver, CA: p.CA,
		}}
		prep[p.StorePath].info.Sign(o.Keys...)
	}
	infos := map[string]*narinfo.NarInfo{}
	for k, v := range prep {
		infos[k] = v.info
	}
	order := topo(infos)
	switch c.Order {
	case OrderSequential, OrderPerPath:
		for _, sp := range order {
			if err := c.uploadNAR(ctx, prep[sp], o); err != nil {
				return err
			}
			if err := c.uploadNarInfo(ctx, prep[sp], known, o); err != nil {
				return err
			}
		}
	case OrderNARsFirst:
		bySize := slices.Clone(order)
		slices.SortStableFunc(bySize, func(a, b string) int { // UploadNar::operator<
			return cmp.Or(-cmp.Compare(prep[a].info.NarSize, prep[b].info.NarSize), cmp.Compare(a, b))
		})
		for _, sp := range bySize {
			if err := c.uploadNAR(ctx, prep[sp], o); err != nil {
				return err
			}
		}
		for _, sp := range order {
			if err := c.uploadNarInfo(ctx, prep[sp], known, o); err != nil {
				return err
			}
		}
	}
	return nil
}

// put uploads body, compressing it first when method is set (2.32+).
func (c *Client) put(ctx context.Context, p, contentType, method string, body []byte) error {
	hdr := map[string]string{"Content-Type": contentType}
	if method != "" {
		b, err := Compress(ctx, method, body)
		if err != nil {
			return err
		}
		body, hdr["Content-Encoding"] = b, method
	}
	_, _, err := c.request(ctx, KindPut, http.MethodPut, p, body, hdr)
	return err
}

// uploadNAR is uploadData: the .ls listing if asked for, then HEAD the
// NAR's URL and PUT it unless it exists (binary-cache-store.cc
// 2.8.0:194-276).
func (c *Client) uploadNAR(ctx context.Context, pr *prepared, o UploadOptions) error {
	if o.WriteNARListing {
		var ls bytes.Buffer
		if _, err := nar.WriteListing(&ls, bytes.NewReader(pr.p.NAR), nar.ReaderOptions{}); err != nil {
			return err
		}
		if err := c.put(ctx, "/"+narinfo.HashPartOf(pr.p.StorePath)+".ls", "application/json", o.LSCompression, ls.Bytes()); err != nil {
			return err
		}
	}
	_, out, err := c.request(ctx, KindExists, http.MethodHead, "/"+pr.info.URL, nil, nil)
	if err != nil {
		return err
	}
	if out == OK {
		return nil
	}
	_, _, err = c.request(ctx, KindPut, http.MethodPut, "/"+pr.info.URL, pr.file,
		map[string]string{"Content-Type": "application/x-nix-nar"})
	return err
}

// uploadNarInfo checks the references are valid (a GET for one the client
// knows nothing of) and PUTs the narinfo (binary-cache-store.cc
// 2.8.0:183-192, 282-285; 2.35.0:280-301).
func (c *Client) uploadNarInfo(ctx context.Context, pr *prepared, known map[string]bool, o UploadOptions) error {
	for _, r := range pr.info.References {
		rp := pr.info.StoreDir() + "/" + r
		if rp == pr.p.StorePath || known[rp] {
			continue
		}
		ni, err := c.narInfo(ctx, rp)
		if err != nil {
			return err
		}
		if ni == nil {
			return fmt.Errorf("%w: cannot add '%s' to the binary cache because the reference '%s' is not valid", ErrAbsent, pr.p.StorePath, rp)
		}
		known[rp] = true
	}
	if err := c.put(ctx, "/"+narinfo.HashPartOf(pr.p.StorePath)+".narinfo", "text/x-nix-narinfo", o.NarinfoCompression, []byte(pr.info.String())); err != nil {
		return err
	}
	known[pr.p.StorePath] = true
	return nil
}
