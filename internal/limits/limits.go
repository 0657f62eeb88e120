// Package limits is the cache server's resource policy: how much an
// untrusted NAR (an upload, or a stored blob read back to answer a client)
// may cost to decompress, parse and list, the defaults, the config key of
// each bound, and the error that names the key when one is exceeded.
//
// The mechanisms live where the work is done (pkg/nar's ReaderOptions,
// internal/compress's DecodeLimits); this package only turns one set of
// numbers into both and their refusals into answers: 413 for a size, 400
// for a shape, 500 for data already stored that a read path will not
// decode.
package limits

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/bos55/concordia/internal/compress"
	"github.com/bos55/concordia/pkg/nar"
)

// Limits are the bounds. A zero field means its default (see OrDefault),
// never "no bound".
type Limits struct {
	MaxNARSize     int64 // uncompressed NAR bytes
	MaxDepth       int   // directory nesting, the root at 0
	MaxEntries     int64 // nodes in one NAR
	MaxNameLen     int   // bytes of one entry name
	MaxTargetLen   int   // bytes of one symlink target
	XZDictMax      int64 // dictionary an xz block, lzip member or lzma stream may ask for
	ZstdWindowMax  int64 // window a zstd frame may ask for
	MaxRatio       int64 // decompressed per compressed byte past the first 64 MiB; negative: no bound
	MaxListingSize int64 // bytes of one .ls document
	// What one upload token may make the cache keep beside NARs.
	MaxNarinfoSize  int64 // bytes of one narinfo, uploaded or served
	MaxSignatures   int   // Sig lines of one narinfo
	MaxLogSize      int64 // decompressed bytes of one build log
	MaxPinsPerToken int   // pins one token name (not an admin) may hold
	// MaxDeployReportSize bounds one deploy report a deployer sends
	// (store.DeployReports): the history keeps upload.deploy_reports_max
	// of them, so this times that is what the history may cost.
	MaxDeployReportSize int64
}

// The defaults; internal/config/example.toml says why each.
const (
	DefaultMaxNARSize     = 64 << 30
	DefaultMaxDepth       = 256
	DefaultMaxEntries     = 10_000_000
	DefaultMaxNameLen     = nar.MaxNameLen
	DefaultMaxTargetLen   = nar.MaxTargetLen
	DefaultXZDictMax      = compress.DefaultXZDict
	DefaultZstdWindowMax  = compress.DefaultZstdWindow
	DefaultMaxRatio       = 50_000
	DefaultMaxListingSize = 1 << 30

	DefaultMaxNarinfoSize  = 64 << 10
	DefaultMaxSignatures   = 16
	DefaultMaxLogSize      = 64 << 20
	DefaultMaxPinsPerToken = 1000
	// A push's report is about 1 KiB per host: 1 MiB holds a fleet of
	// several hundred hosts.
	DefaultMaxDeployReportSize = 1 << 20
)

// MaxInlineNAR is the largest upload.inline_max_size: a NAR file kept in
// the index is held in memory whole while it waits for its narinfo, and
// the held ones' log refuses a record past it as damage.
const MaxInlineNAR = 1 << 20

// Config keys of the bounds, as errors name them.
const (
	KeyNARSize     = "limits.max_nar_size"
	KeyDepth       = "limits.max_depth"
	KeyEntries     = "limits.max_entries"
	KeyNameLen     = "limits.max_name_length"
	KeyTargetLen   = "limits.max_target_length"
	KeyXZDict      = "limits.xz_dict_max"
	KeyZstdWindow  = "limits.zstd_window_max"
	KeyRatio       = "limits.max_ratio"
	KeyListingSize = "limits.max_listing_size"

	KeyNarinfoSize  = "limits.max_narinfo_size"
	KeySignatures   = "limits.max_signatures"
	KeyLogSize      = "limits.max_log_size"
	KeyPinsPerToken = "limits.max_pins_per_token"

	KeyDeployReportSize = "limits.max_deploy_report_size"
)

// Default returns the default bounds.
func Default() Limits {
	return Limits{
		MaxNARSize:     DefaultMaxNARSize,
		MaxDepth:       DefaultMaxDepth,
		MaxEntries:     DefaultMaxEntries,
		MaxNameLen:     DefaultMaxNameLen,
		MaxTargetLen:   DefaultMaxTargetLen,
		XZDictMax:      DefaultXZDictMax,
		ZstdWindowMax:  DefaultZstdWindowMax,
		MaxRatio:       DefaultMaxRatio,
		MaxListingSize: DefaultMaxListingSize,

		MaxNarinfoSize:  DefaultMaxNarinfoSize,
		MaxSignatures:   DefaultMaxSignatures,
		MaxLogSize:      DefaultMaxLogSize,
		MaxPinsPerToken: DefaultMaxPinsPerToken,

		MaxDeployReportSize: DefaultMaxDeployReportSize,
	}
}

// OrDefault is l with every zero field set to its default, so an Options
// struct that sets one bound (or none) keeps the others.
func (l Limits) OrDefault() Limits {
	d := Default()
	set := func(v *int64, def int64) {
		if *v == 0 {
			*v = def
		}
	}
	set(&l.MaxNARSize, d.MaxNARSize)
	set(&l.MaxEntries, d.MaxEntries)
	set(&l.XZDictMax, d.XZDictMax)
	set(&l.ZstdWindowMax, d.ZstdWindowMax)
	set(&l.MaxRatio, d.MaxRatio)
	set(&l.MaxListingSize, d.MaxListingSize)
	if l.MaxDepth == 0 {
		l.MaxDepth = d.MaxDepth
	}
	if l.MaxNameLen == 0 {
		l.MaxNameLen = d.MaxNameLen
	}
	if l.MaxTargetLen == 0 {
		l.MaxTargetLen = d.MaxTargetLen
	}
	return l.docDefaults()
}

// NAR is what pkg/nar's reader must enforce.
func (l Limits) NAR() nar.ReaderOptions {
	return nar.ReaderOptions{
		MaxSize:      l.MaxNARSize,
		MaxDepth:     l.MaxDepth,
		MaxEntries:   l.MaxEntries,
		MaxNameLen:   l.MaxNameLen,
		MaxTargetLen: l.MaxTargetLen,
	}
}

// Decode is what a decompressor of a NAR must enforce; sizeHint is the
// NAR's size when known (0 otherwise).
func (l Limits) Decode(sizeHint int64) compress.DecodeLimits {
	return compress.DecodeLimits{
		XZDict:     l.XZDictMax,
		ZstdWindow: l.ZstdWindowMax,
		MaxSize:    l.MaxNARSize,
		MaxRatio:   max(l.MaxRatio, 0),
		SizeHint:   sizeHint,
	}
}

// UploadBody bounds the request body of a NAR upload: the NAR size plus
// what compression can add to incompressible data (zstd and xz add well
// under 0.1%, bzip2 under 1%), so a NAR at the limit is never refused for
// its framing, and the disk never takes more than that for one upload.
func (l Limits) UploadBody() int64 {
	return l.MaxNARSize + l.MaxNARSize/64 + 1<<20
}

// Error is a refusal because an input exceeds a bound. It names the
// config key, and its status is 413 for sizes and 400 for shapes.
type Error struct {
	Key  string
	Max  int64
	Size bool
	Err  error // what the reader or decoder said
}

func (e *Error) Error() string {
	v := fmt.Sprint(e.Max)
	if e.Size && e.Key != KeyRatio {
		v = `"` + sizeString(e.Max) + `"`
	}
	return fmt.Sprintf("%v (%s = %s)", e.Err, e.Key, v)
}

// sizeString writes n as the config file would: "64G", "512M", or bytes.
func sizeString(n int64) string {
	for _, u := range []struct {
		s string
		v int64
	}{{"T", 1 << 40}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}} {
		if n >= u.v && n%u.v == 0 {
			return fmt.Sprintf("%d%s", n/u.v, u.s)
		}
	}
	return fmt.Sprint(n)
}

func (e *Error) Unwrap() error { return e.Err }

// HTTPStatus is 413 Content Too Large for a size bound, else 400.
func (e *Error) HTTPStatus() int {
	if e.Size {
		return http.StatusRequestEntityTooLarge
	}
	return http.StatusBadRequest
}

// Check returns err with the limit error of pkg/nar or internal/compress
// it holds, if any, turned into an *Error naming the bound's key (wrapping
// err, so errors.Is still sees what err held); other errors are returned
// unchanged.
func (l Limits) Check(err error) error {
	if err == nil {
		return nil
	}
	var le *Error
	if errors.As(err, &le) {
		return err
	}
	var ne *nar.LimitError
	if errors.As(err, &ne) {
		switch ne.Limit {
		case nar.LimitSize:
			return &Error{Key: KeyNARSize, Max: l.MaxNARSize, Size: true, Err: err}
		case nar.LimitDepth:
			return &Error{Key: KeyDepth, Max: int64(l.MaxDepth), Err: err}
		case nar.LimitEntries:
			return &Error{Key: KeyEntries, Max: l.MaxEntries, Err: err}
		case nar.LimitNameLen:
			return &Error{Key: KeyNameLen, Max: int64(l.MaxNameLen), Err: err}
		case nar.LimitTargetLen:
			return &Error{Key: KeyTargetLen, Max: int64(l.MaxTargetLen), Err: err}
		}
	}
	var ce *compress.LimitError
	if errors.As(err, &ce) {
		switch ce.Limit {
		case compress.LimitXZDict, compress.LimitLzipDict, compress.LimitLZMADict:
			return &Error{Key: KeyXZDict, Max: l.XZDictMax, Size: true, Err: err}
		case compress.LimitZstdWindow:
			return &Error{Key: KeyZstdWindow, Max: l.ZstdWindowMax, Size: true, Err: err}
		case compress.LimitSize:
			return &Error{Key: KeyNARSize, Max: l.MaxNARSize, Size: true, Err: err}
		case compress.LimitRatio:
			return &Error{Key: KeyRatio, Max: l.MaxRatio, Size: true, Err: err}
		}
	}
	return err
}

// ListingTooLarge is the refusal of a listing over MaxListingSize.
func (l Limits) ListingTooLarge(what string) error {
	return &Error{Key: KeyListingSize, Max: l.MaxListingSize, Size: true,
		Err: fmt.Errorf("%s: listing larger than %d bytes", what, l.MaxListingSize)}
}

// Stored returns err, when it holds an *Error, as the server's problem
// rather than the client's: a blob stored before the bounds were lowered
// (or recovered from an older version) that a read path refuses to decode
// is answered 500 and logged, never 404 (it exists) nor 4xx (the client
// asked nothing wrong). Other errors are returned unchanged.
func Stored(err error) error {
	var le *Error
	if err == nil || !errors.As(err, &le) {
		return err
	}
	return &storedError{err}
}

type storedError struct{ err error }

func (e *storedError) Error() string {
	return "stored data exceeds a configured limit, not decoded: " + e.err.Error()
}
func (e *storedError) Unwrap() error   { return e.err }
func (e *storedError) HTTPStatus() int { return http.StatusInternalServerError }
