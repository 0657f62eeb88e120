package nixreplay

import "slices"

// Kind is the role a request plays in the client, which decides how the
// client reads its status: the same 403 is "absent" on a narinfo and fatal
// on a PUT.
type Kind int

const (
	KindCacheInfo Kind = iota // GET nix-cache-info (BinaryCacheStore::init / getNixCacheInfo)
	KindNarInfo               // GET <hash>.narinfo (queryPathInfoUncached, getFile with a callback)
	KindExists                // HEAD (fileExists: NAR before upload, narinfo for isValidPath)
	KindNAR                   // GET nar/... (narFromPath, getFile into a sink)
	KindPut                   // PUT anything (upsertFile)
)

func (k Kind) String() string {
	return [...]string{"cache-info", "narinfo", "exists", "nar", "put"}[k]
}

// Outcome is what the client concludes from one response status.
type Outcome int

const (
	OK     Outcome = iota // 2xx (200, 201, 204, 206; 304 too)
	Absent                // the file is taken as not there: narinfo miss, HEAD false, nix-cache-info to be PUT; on a NAR GET, "substitute gone"
	Retry                 // transient: the client tries again (Tries in all), then fails
	Fatal                 // an error at once, no retry
)

func (o Outcome) String() string { return [...]string{"ok", "absent", "retry", "fatal"}[o] }

// UploadOrder is how nix copy --to orders a closure's uploads.
type UploadOrder int

const (
	// OrderSequential: one path at a time, dependencies first; per path
	// HEAD nar, PUT nar, PUT narinfo. Nix 2.8-2.10 copyPaths feeds
	// Store::addMultipleToStore(Source&), a plain loop (store-api.cc
	// 2.8.0:262-273, 1001-1021; the parallel processGraph is under #if 0).
	OrderSequential UploadOrder = iota
	// OrderPerPath: paths in parallel on a thread pool, each after its
	// references; per path HEAD nar, PUT nar, PUT narinfo. Nix 2.11-2.34
	// and Lix (Store::addMultipleToStore(PathsSource&), store-api.cc
	// 2.14.0:263-340). The replayer runs it serially in the same
	// dependencies-first order, one valid interleaving of the real one.
	OrderPerPath
	// OrderNARsFirst: NAR uploads have no dependencies and go largest
	// first; a narinfo waits for its NAR and its references' narinfos.
	// Nix 2.35 BinaryCacheStore::addMultipleToStore (binary-cache-store.cc
	// 2.35.0:326-455, commit 47dccd5759). The replayer runs it serially:
	// every NAR by descending NarSize, then every narinfo dependencies first.
	OrderNARsFirst
)

func (o UploadOrder) String() string {
	return [...]string{"sequential", "per-path", "nars-first"}[o]
}

// curlAll is what libcurl sends for CURLOPT_ACCEPT_ENCODING "": every
// coding it was built with. This is Debian 12's libcurl 7.88.1 (zlib,
// brotli, zstd); another build sends another list, so it is not a
// property of the Nix version.
const curlAll = "deflate, gzip, br, zstd"

// nixList is the fixed header Nix 2.14-2.33 put in every request
// (filetransfer.cc 2.14.0:104, 2.33.0:134).
const nixList = "zstd, br, gzip, deflate, bzip2, xz"

// Profile is one client version's HTTP behaviour against a binary cache.
// Every field is read off the sources cited in Source; where a field could
// not be verified there, its comment in Profiles says so.
type Profile struct {
	Name   string
	Source []string

	// UserAgent as curl sends it ("curl/<LIBCURL_VERSION> Nix/<version>",
	// filetransfer.cc 2.8.0:288-290); the curl part is the build's.
	UserAgent string

	// AcceptEncoding is the request header on downloads ("" = none).
	// OnHead, OnPut, OnResume say whether HEAD requests, PUTs and
	// resumed (Range) GETs carry it too.
	AcceptEncoding   string
	AcceptEncOnHead  bool
	AcceptEncOnPut   bool
	AcceptEncOnRange bool

	// CurlDecodes: libcurl decodes Content-Encoding (CURLOPT_ACCEPT_ENCODING),
	// so only its codings (deflate, gzip, br, zstd) and identity work and
	// any other coding fails the transfer. False: Nix decodes the coding
	// itself with makeDecompressionSink, like a narinfo Compression.
	CurlDecodes bool
	// ByName: makeDecompressionSink picks the decoder by the method's name
	// (2.22+); false: libarchive sniffs the bytes and the name only matters
	// for "br" and "none" (compression.cc 2.8.0:202-213).
	ByName bool
	// Identity: "identity" is taken for no compression (2.31+,
	// compression.cc 2.31.0:224, commit 0a96b7e627); before, it went to
	// libarchive and failed "input compression not recognized".
	Identity bool

	// Tries is download-attempts: requests per transfer including the
	// first (filetransfer.hh 2.8.0:45, "attempt < request.tries").
	Tries int
	// ResumeIgnoresEncoding: a cut NAR download resumes with Range when
	// the response had Accept-Ranges: bytes, whatever its
	// Content-Encoding (Lix). False: only with no (or, 2.34+, identity)
	// Content-Encoding (filetransfer.cc 2.8.0:459-463).
	ResumeIgnoresEncoding bool
	// RetryPuts: transient PUT failures are retried like downloads (Nix:
	// uploads go through the same TransferItem::finish). Lix throws at
	// once for a request with data (curlfiletransfer.hh withRetries).
	RetryPuts bool

	// Order of uploads in nix copy --to.
	Order UploadOrder
	// MetaCompression: narinfo-compression, ls-compression and
	// log-compression exist; such PUT bodies are compressed and carry
	// Content-Encoding (http-binary-cache-store.cc 2.32.0:149-162).
	MetaCompression bool
	// CacheInfoForbiddenAbsent: 401/403 on nix-cache-info count as absent,
	// so the uploader PUTs one; from 2.26 getNixCacheInfo only takes 404
	// (http-binary-cache-store.cc 2.26.0:197-208).
	CacheInfoForbiddenAbsent bool
	// Unauthorized: 401 and 407 are their own error class, not Forbidden,
	// so a narinfo or HEAD answered 401 is fatal (filetransfer.cc
	// 2.35.0:826-832).
	Unauthorized bool
	// Expect100 on every PUT: not Nix's doing but libcurl's for HTTP/1.1
	// uploads; observed with Debian's nix 2.8 on libcurl 7.88.1 for bodies
	// of 21 bytes to 2 MB. Assumed the same for the other profiles.
	Expect100 bool
	// CopyFromHEADs is how many HEAD <hash>.narinfo requests nix copy
	// --from makes per top-level path before the closure's GETs (the
	// installable's isValidPath; the positive answer is never cached,
	// store-api.cc 2.8.0:451-455). Observed 2 with real 2.8.
	CopyFromHEADs int
}

// Classify maps a status to the client's conclusion for a request of
// kind k. It follows curlFileTransfer::TransferItem::finish (error class)
// and HttpBinaryCacheStore (which classes mean absent).
func (p Profile) Classify(k Kind, status int) Outcome {
	if status >= 200 && status < 300 || status == 304 {
		return OK
	}
	var class string
	switch {
	case status == 404 || status == 410:
		class = "notfound"
	case p.Unauthorized && (status == 401 || status == 407):
		class = "unauthorized"
	case status == 401 || status == 403 || status == 407:
		class = "forbidden"
	case status >= 400 && status < 500 && status != 408 && status != 429:
		class = "misc"
	case status == 501 || status == 505 || status == 511:
		class = "misc"
	default: // other 5xx, 408, 429, 1xx/3xx oddities
		class = "transient"
	}
	switch k {
	case KindCacheInfo:
		if class == "notfound" || class == "forbidden" && p.CacheInfoForbiddenAbsent {
			return Absent
		}
	case KindNarInfo, KindExists, KindNAR:
		if class == "notfound" || class == "forbidden" {
			return Absent
		}
	case KindPut:
		if class == "transient" && !p.RetryPuts {
			return Fatal
		}
	}
	if class == "transient" {
		return Retry
	}
	return Fatal
}

// Decodes reports whether the client decodes a body sent with
// Content-Encoding ce whose bytes look like sniffed (see Sniff).
func (p Profile) Decodes(ce, sniffed string) bool {
	switch ce {
	case "", "none":
		return true
	case "identity":
		return p.Identity
	}
	if p.CurlDecodes {
		return slices.Contains([]string{"deflate", "gzip", "br", "zstd"}, ce)
	}
	if ce == "br" {
		return true
	}
	if !p.ByName {
		return sniffed != "" // libarchive recognised the bytes
	}
	// 2.22+: the name must be a libarchive filter name and match the bytes.
	return ce == sniffed
}

// Profile citations are file:line at a tag of github.com/NixOS/nix, or at
// Lix commit 049cc4e1322b07173f79f67bf64ecd257afeb7d0 (2.95.0-433).
const lixRev = "lix@049cc4e13"

// Profiles are the clients the replayer speaks as.
var Profiles = []Profile{
	{
		Name: "Nix 2.8",
		Source: []string{
			"src/libstore/filetransfer.cc 2.8.0:112-118 (request headers: no Accept-Encoding)",
			"src/libstore/filetransfer.cc 2.8.0:394-474 (error classes, retry, resume only if acceptRanges && encoding.empty())",
			"src/libstore/http-binary-cache-store.cc 2.8.0:105-183 (HEAD fileExists; 404/403 absent)",
			"src/libstore/binary-cache-store.cc 2.8.0:37-61 (nix-cache-info GET, PUT if absent)",
			"src/libstore/binary-cache-store.cc 2.8.0:133-290 (.ls, HEAD nar, PUT nar, PUT narinfo)",
			"src/libstore/store-api.cc 2.8.0:262-273, 981-1021 (sequential, dependencies first)",
			"src/libutil/compression.cc 2.8.0:39-63, 202-213 (libarchive sniffs; br by name)",
			"observed: Debian nix 2.8.0 (curl/7.85.0 in the User-Agent, libcurl 7.88.1 at run time)",
		},
		UserAgent:                "curl/7.85.0 Nix/2.8.0",
		Tries:                    5,
		RetryPuts:                true,
		Order:                    OrderSequential,
		CacheInfoForbiddenAbsent: true,
		Expect100:                true,
		CopyFromHEADs:            2,
	},
	{
		Name: "Nix 2.14-2.30",
		Source: []string{
			"src/libstore/filetransfer.cc 2.14.0:104 (fixed Accept-Encoding in every request)",
			"src/libstore/store-api.cc 2.14.0:263-340, 1060-1131 (parallel per path; since 2.11.0)",
			"src/libutil/compression.cc 2.22.0:37-67 and src/libutil/tarfile.cc 2.22.0:54-78 (decoder by name from 2.22)",
			"src/libstore/http-binary-cache-store.cc 2.26.0:197-208 (nix-cache-info: only 404 absent from 2.26)",
			"src/libstore/filetransfer.cc 2.30.0:476-477 (429: longer delay, still transient)",
		},
		UserAgent:       "curl/7.88.1 Nix/2.30.0", // unverified: curl part depends on the build
		AcceptEncoding:  nixList,
		AcceptEncOnHead: true, AcceptEncOnPut: true, AcceptEncOnRange: true,
		// ByName is true from 2.22; CacheInfoForbiddenAbsent only up to
		// 2.25. The profile models 2.26-2.30, the newest part of its range;
		// ProfileAt gives 2.14-2.21 and 2.22-2.25.
		ByName:        true,
		Tries:         5,
		RetryPuts:     true,
		Order:         OrderPerPath,
		Expect100:     true,
		CopyFromHEADs: 2, // unverified: only 2.8 was traced
	},
	{
		Name: "Nix 2.31-2.33",
		Source: []string{
			"src/libstore/filetransfer.cc 2.31.0:126, 569 (same header; resume rule unchanged)",
			"src/libutil/compression.cc 2.31.0:224 (identity accepted)",
			"src/libstore/http-binary-cache-store.cc 2.32.0:149-162 (narinfo/ls/log compression + Content-Encoding on PUT)",
			"src/libstore/http-binary-cache-store.cc 2.33.0:136-173 (streamed upload with a size: Content-Length)",
		},
		UserAgent:       "curl/7.88.1 Nix/2.33.0", // unverified
		AcceptEncoding:  nixList,
		AcceptEncOnHead: true, AcceptEncOnPut: true, AcceptEncOnRange: true,
		ByName:          true,
		Identity:        true,
		Tries:           5,
		RetryPuts:       true,
		Order:           OrderPerPath,
		MetaCompression: true, // 2.32 and 2.33 only; 2.31 has no such settings
		Expect100:       true,
		CopyFromHEADs:   2, // unverified
	},
	{
		Name: "Nix 2.34",
		Source: []string{
			"src/libstore/filetransfer.cc 2.34.0:484-492 (CURLOPT_ACCEPT_ENCODING \"\" unless upload or resume; commit fa07d9d055)",
			"src/libstore/filetransfer.cc 2.34.0:322-325, 752 (identity is no encoding; resume if acceptRanges && !hasContentEncoding)",
			"src/libstore/http-binary-cache-store.cc 2.34.0:162-167 (Content-Encoding on PUT)",
		},
		UserAgent:       "curl/7.88.1 Nix/2.34.0", // unverified
		AcceptEncoding:  curlAll,
		AcceptEncOnHead: true, // HEAD has no request.data
		CurlDecodes:     true,
		ByName:          true,
		Identity:        true,
		Tries:           5,
		RetryPuts:       true,
		Order:           OrderPerPath,
		MetaCompression: true,
		Expect100:       true,
		CopyFromHEADs:   2, // unverified
	},
	{
		Name: "Nix 2.35",
		Source: []string{
			"src/libstore/filetransfer.cc 2.35.0:598-605 (Accept-Encoding as 2.34)",
			"src/libstore/filetransfer.cc 2.35.0:821-846 (401/407 Unauthorized, 403 Forbidden)",
			"src/libstore/filetransfer.cc 2.35.0:915-982 (retry; Retry-After; 429/503 longer base delay)",
			"src/libstore/binary-cache-store.cc 2.35.0:326-455 (NARs largest first, narinfos after)",
			"src/libstore/http-binary-cache-store.cc 2.35.0:212-217, 287-290 (PUT Content-Encoding; absent = NotFound|Forbidden)",
		},
		UserAgent:       "curl/7.88.1 Nix/2.35.0", // unverified
		AcceptEncoding:  curlAll,
		AcceptEncOnHead: true,
		CurlDecodes:     true,
		ByName:          true,
		Identity:        true,
		Tries:           5,
		RetryPuts:       true,
		Order:           OrderNARsFirst,
		MetaCompression: true,
		Unauthorized:    true,
		Expect100:       true,
		CopyFromHEADs:   2, // unverified
	},
	{
		Name: "Lix",
		Source: []string{
			"lix/libstore/transferitem.cc " + lixRev + ":93 (CURLOPT_ACCEPT_ENCODING \"\" on every request)",
			"lix/libstore/transferitem.cc " + lixRev + ":427-447 (error classes as Nix 2.8)",
			"lix/libstore/curlfiletransfer.hh " + lixRev + ":64-92 (no retry with data; resume needs only Accept-Ranges)",
			"lix/libstore/curlfiletransfer.cc " + lixRev + ":329-370 (resume fails if ETag changed)",
			"lix/libstore/curlfiletransfer.cc " + lixRev + ":448-463 (exists: 404/403 false)",
			"lix/libstore/http-binary-cache-store.cc " + lixRev + ":116-155 (no PUT Content-Encoding; 404/403 absent)",
			"lix/libstore/store-api.cc " + lixRev + ":341 (processGraphAsync: parallel per path)",
		},
		UserAgent:       "curl/7.88.1 Lix/2.95.0", // unverified
		AcceptEncoding:  curlAll,
		AcceptEncOnHead: true, AcceptEncOnPut: true, AcceptEncOnRange: true,
		CurlDecodes:              true,
		ByName:                   false, // unverified: Lix forked at 2.18, which sniffs
		Identity:                 true,  // curl treats identity as no coding
		Tries:                    5,     // unverified: backoffTimeouts(tries) assumed to allow tries requests
		ResumeIgnoresEncoding:    true,
		Order:                    OrderPerPath,
		CacheInfoForbiddenAbsent: true,
		Expect100:                true,
		CopyFromHEADs:            2, // unverified
	},
}

// ProfileAt returns the profile by name, or false.
func ProfileAt(name string) (Profile, bool) {
	for _, p := range Profiles {
		if p.Name == name {
			return p, true
		}
	}
	switch name { // the parts of "Nix 2.14-2.30" that behave differently
	case "Nix 2.14-2.21":
		p, _ := ProfileAt("Nix 2.14-2.30")
		p.Name, p.ByName, p.CacheInfoForbiddenAbsent = name, false, true
		return p, true
	case "Nix 2.22-2.25":
		p, _ := ProfileAt("Nix 2.14-2.30")
		p.Name, p.CacheInfoForbiddenAbsent = name, true
		return p, true
	}
	return Profile{}, false
}
