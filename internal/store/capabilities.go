package store

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/bos55/concordia/pkg/narinfo"
)

// The capabilities of a store that takes uploads. The server installs the
// upload routes for an Uploader and the admin API for what else it is
// (Pinner, Collector, Verifier, Forgetter), so a second backend (blobs on
// an object store) is served by the same handlers, and storetest's
// RunUploader holds it to the same contract.

// Uploader is the capability of taking uploads as `nix copy --to` sends
// them over HTTP: NAR files first, named by the hash of their bytes, then
// the narinfo that claims one, and the documents around a path (listing,
// build log, realisations). A store that takes uploads serves them, so it
// is a Store. Bodies are untrusted: every method verifies what it is given
// and keeps nothing of a refused upload (ErrInvalid, ErrConflict,
// ErrNoSpace, or a limits error naming the bound).
type Uploader interface {
	Store
	// PutNAR stores the NAR file name (ParseNARName's form) from body,
	// checking that the bytes hash to the name and decode to a valid NAR.
	// The file is pending, not served, until a narinfo claims it.
	PutNAR(ctx context.Context, name string, body io.Reader) (*BlobInfo, error)
	// HasNAR reports whether the NAR file name was received, pending or
	// claimed: nix copy HEADs a NAR before PUTting it and skips the
	// upload on 200.
	HasNAR(ctx context.Context, name string) (bool, error)
	// OpenBlob opens a claimed NAR file by its name, for GET /nar/<name>
	// (the URL an uploaded narinfo names). Pending files are ErrNotFound.
	OpenBlob(ctx context.Context, name string) (f ReadSeekCloser, size int64, err error)
	// PutNarInfo publishes the path of hashPart once everything its
	// narinfo claims is true: its NAR was received and matches, and every
	// reference is present (here or in a store this one defers to). A
	// path that is served already may come again only unchanged
	// (ErrConflict otherwise).
	PutNarInfo(ctx context.Context, hashPart string, body io.Reader) error
	// PutListing stores the .ls listing of hashPart (sent before the
	// narinfo); write-once once the path is published.
	PutListing(ctx context.Context, hashPart string, body io.Reader) error
	// PutLog stores the build log of a derivation ("<hash>-<name>.drv");
	// a log served already may come again only with the same text.
	PutLog(ctx context.Context, drvBase string, body io.Reader) error
	// PutRealisation stores a realisation ("sha256:<hash>!<output>"), as
	// immutable as the path it names.
	PutRealisation(ctx context.Context, id string, body io.Reader) error
	// PutBuildTrace stores a build-trace-v2 document, answered afterwards
	// by Realisation("<drv base name>!<output>").
	PutBuildTrace(ctx context.Context, drvBase, output string, body io.Reader) error
}

// Adopter is the capability of keeping paths pulled from an upstream
// binary cache (package pullthrough), so the next client gets them from
// this cache at LAN speed and they stay served while the upstream is
// unreachable. The NAR file arrives as an upload does (PutNAR, verified
// the same way); the narinfo is the upstream's, which the caller checked
// is signed by one of that upstream's keys.
type Adopter interface {
	Uploader
	// Adopt publishes the path ni describes, pulled from the upstream
	// named origin, with the NAR file name received by PutNAR. The file
	// must match ni (NarHash, NarSize, Compression, and FileHash and
	// FileSize when given: ErrInvalid otherwise). References need not be
	// present: the upstream that signed ni has them. A path the store
	// has already stays exactly as it is when ni describes it (no-op)
	// and is ErrConflict otherwise, as is a tombstone's other NAR. The
	// record keeps ni's signatures (within the limits) beside the
	// store's own, and its Origin. Adopted paths are a cache: GC evicts
	// them first, least recently used first, except those in a pinned
	// closure.
	Adopt(ctx context.Context, name string, ni *narinfo.NarInfo, origin string) error
}

// FileNARStat is the optional capability of a FileNAR store that can
// describe its file without opening it. The server renders narinfos with
// it: opening the file of a path pulled from an upstream would start the
// download, and a narinfo lookup (a writer's probe, nix path-info) must
// never do that.
type FileNARStat interface {
	// StatFileNAR is OpenFileNAR's description of the file, without the
	// file. ErrNotFound when the store keeps no file for the path (the
	// server then announces its own compression and streams NAR).
	StatFileNAR(ctx context.Context, info *PathInfo) (compression string, fileHash []byte, fileSize int64, err error)
}

// NARRedirector is the optional capability of a FileNAR store whose files
// a client may download from where they are kept (an S3 bucket), so the
// server answers with a redirect instead of streaming the bytes through
// itself. Nix follows redirects for NAR downloads.
type NARRedirector interface {
	// NARRedirect is the URL of the path's stored file, "" when the
	// store does not redirect it (off, or not a file it can presign).
	NARRedirect(ctx context.Context, info *PathInfo) (string, error)
}

// DebugInfo is the capability of keeping Nix's index of DWARF debug info
// files by build ID: with index-debug-info=true, nix copy --to HEADs
// debuginfo/<build-id>.debug and, when that is absent, PUTs a small JSON
// document there naming the NAR and the member holding the debug file,
// before it PUTs that NAR (binary-cache-store.cc 2.8.0:212-265,
// 2.32.0:215-267). Readers (dwarffs) GET debuginfo/<build-id> and follow
// "archive".
type DebugInfo interface {
	// PutDebugInfo stores the document of buildID (40 lowercase hex
	// digits, what Nix indexes). Write-once: the same document again is
	// a no-op, another is ErrConflict while the NAR the first names is
	// served.
	PutDebugInfo(ctx context.Context, buildID string, body io.Reader) error
	// DebugInfo returns the document of buildID, ErrNotFound when there
	// is none or the NAR it names is not served (not uploaded yet, or
	// collected).
	DebugInfo(ctx context.Context, buildID string) ([]byte, error)
}

// BlobInfo is what an upload computed for a NAR file.
type BlobInfo struct {
	Name        string
	Compression string
	FileHash    []byte
	FileSize    int64
	NarHash     []byte
	NarSize     uint64
	// Existed is true when the blob was already stored (the upload was
	// verified and then dropped: one copy per FileHash).
	Existed bool
}

// ParseNARName splits "<filehash nix32>.nar[.ext]", the name under which
// Nix uploads a NAR file, into the file hash and the compression its
// extension means. Anything else is ErrInvalid.
func ParseNARName(name string) (fileHash []byte, compression string, err error) {
	base, suffix, _ := narinfo.SplitNARName(name)
	compression, ok := narinfo.SuffixCompression(suffix)
	if !ok {
		return nil, "", fmt.Errorf("%w: NAR file name %q: want <nix32 file hash>.nar[.zst|.xz|.bz2|.lzip|.lz4|.br|.gz]", ErrInvalid, name)
	}
	if len(base) != nixbase32.EncodedLen(sha256.Size) {
		return nil, "", fmt.Errorf("%w: NAR file name %q: the file hash must be %d nix32 characters", ErrInvalid, name, nixbase32.EncodedLen(sha256.Size))
	}
	h, err := nixbase32.DecodeString(base)
	if err != nil {
		return nil, "", fmt.Errorf("%w: NAR file name %q: %v", ErrInvalid, name, err)
	}
	return h, compression, nil
}

// Pinner is the capability of keeping paths through garbage collection:
// a pinned path and its closure are GC roots. The deployer pins each
// host's running system; a pin made over HTTP belongs to the token that
// made it, so one pin token cannot unpin another's systems.
type Pinner interface {
	// PinWith pins a full store path or a bare hash part (a path not
	// uploaded yet may be pinned) for owner, who may hold at most
	// maxPins pins (0: no bound; ErrTooManyPins past it, nothing
	// changed). A path pinned already by another owner keeps that pin,
	// which existing reports; the same owner pinning again refreshes
	// its note.
	PinWith(ctx context.Context, pathOrHash, note, owner string, maxPins int) (existing *Pin, err error)
	// UnpinAs removes the pin if owner made it, or any pin when
	// anyOwner (an admin): ErrNotFound when there is none, ErrNotOwner
	// when another owner made it; either way nothing changes.
	UnpinAs(ctx context.Context, pathOrHash, owner string, anyOwner bool) error
	// Pins lists every pin, sorted by store path.
	Pins(ctx context.Context) ([]Pin, error)
}

// Pin is a GC root.
type Pin struct {
	StorePath string `json:"storePath"`
	Note      string `json:"note,omitempty"`
	// Owner is the name of the token that made the pin over HTTP; only
	// that token name (or an admin) may remove it. "" for pins made on
	// the store directly and before pins had owners: admin only.
	Owner   string    `json:"owner,omitempty"`
	Created time.Time `json:"created"`
}

// ErrNotOwner is UnpinAs's refusal of a pin another token made.
var ErrNotOwner = errors.New("pinned by another token")

// ErrTooManyPins is PinWith's refusal of a new pin for an owner that
// holds its limit already (limits.max_pins_per_token).
var ErrTooManyPins = errors.New("too many pins")

// RefusalHeader names, in an HTTP answer of the cache, which of its
// refusals a 4xx is when the status alone does not say (both a missing
// permission and a full pin quota are 403): its clients match the value,
// never the text of the body.
const RefusalHeader = "Concordia-Refusal"

// RefusalTooManyPins is RefusalHeader's value for ErrTooManyPins.
const RefusalTooManyPins = "too-many-pins"

// Collector is the capability of garbage collection that never breaks a
// closure: only paths no pin and no kept path needs are deleted, least
// recently used first, with the documents that belong to them.
type Collector interface {
	// GC collects with the store's configured policy.
	GC(ctx context.Context, dryRun bool) (*GCReport, error)
	// GCWith collects with policy p instead (an operator's one-off
	// bounds).
	GCWith(ctx context.Context, p Policy, dryRun bool) (*GCReport, error)
}

// Policy bounds what GC keeps. A zero field is no bound.
type Policy struct {
	MaxSize int64         // total bytes of NAR files, build logs and realisations
	MaxAge  time.Duration // since last access (narinfo or NAR served, upload)
}

// GCReport says what a GC run did (or, dry, would do). It is also the
// JSON answer of the server's POST /api/gc.
type GCReport struct {
	DryRun       bool
	Deleted      []string // store paths, in deletion order
	Freed        int64    // bytes of NAR files, logs and realisations removed
	BlobsDeleted int
	Pending      int // abandoned uploads removed
	SizeBefore   int64
	SizeAfter    int64
	PathsBefore  int
	PathsAfter   int
	// Logs and realisations removed: with their paths, or belonging to
	// none past the grace period.
	LogsDeleted         int
	RealisationsDeleted int
	// Tombstones written for the deleted paths, and expired ones removed
	// (gc.remember).
	Tombstones       int
	TombstonesPruned int
	// KeptForWriters are the paths GC would have deleted but kept
	// because a writer was told they exist within gc.writer_ttl (see
	// WriterTold).
	KeptForWriters int
	// PulledDeleted counts the deleted paths that were pulled from an
	// upstream (store.Adopter): evicted before any upload.
	PulledDeleted int
}

// Verifier is the capability of re-checking stored NAR files against the
// hashes computed at upload, since disks rot after a file is accepted.
type Verifier interface {
	// Verify re-hashes every NAR file; with repair, damaged ones are set
	// aside and the paths claiming them dropped, with every path whose
	// closure that breaks. progress, when set, is called with bytes done
	// and total.
	Verify(ctx context.Context, repair bool, progress func(done, total int64)) (*VerifyReport, error)
}

// BadBlob is a NAR file that failed re-verification.
type BadBlob struct {
	Name   string
	Reason string
	Paths  []string // store paths that claimed it
}

// VerifyReport says what Verify found and, with repair, did.
type VerifyReport struct {
	Checked int
	Bytes   int64
	Bad     []BadBlob
	// Broken are paths dropped by repair because a reference of theirs
	// was dropped (their closure would be incomplete).
	Broken []string
	// Repaired is true when bad blobs were quarantined and their paths
	// dropped.
	Repaired bool
}

// Forgetter is the capability of lifting a tombstone. A collected path's
// NAR hash is remembered so an upload cannot give that store path other
// contents (hosts that fetched it keep the old ones); an operator who
// knows no host should keep them lets it be uploaded anew.
type Forgetter interface {
	// Forget removes the tombstone of a collected path (a full store
	// path or a hash part) and returns the path. ErrNotFound when there
	// is none; ErrConflict when the store serves the path.
	Forget(ctx context.Context, pathOrHash string) (forgotten string, err error)
}

// DeployReports is the capability of keeping the fleet's deploy history:
// the JSON report of every `deployer push` (and later reboots), sent by
// the deployer when it is given the cache, so an operator sees what was
// deployed where without the CI job's logs. The history is bounded: past
// its count the oldest report goes, with its hosts' entries. A report is
// untrusted input and is stored only when it has the shape of a report
// (an id, a start time, hosts with a node and a result, failed nodes
// among them); fields beyond that shape are kept as sent, so a newer
// deployer's report is stored whole. Reports are write-once: the same id
// again is accepted only with the same bytes (a retry), ErrConflict
// otherwise, so nobody rewrites what happened.
type DeployReports interface {
	// PutDeployReport stores the report id from body, recording which
	// token (sender) sent it. created is false when the same bytes were
	// stored already (nothing changed).
	PutDeployReport(ctx context.Context, id, sender string, body io.Reader) (created bool, err error)
	// DeployReport is the report id as it was sent; ErrNotFound when
	// there is none (never stored, or dropped as the oldest).
	DeployReport(ctx context.Context, id string) ([]byte, error)
	// DeployReports lists at most limit reports, newest stored first,
	// starting after the cursor before ("" for the newest); the page's
	// Next continues it.
	DeployReports(ctx context.Context, limit int, before string) (*DeployPage, error)
	// NodeDeploys is the last results of one node (at most limit,
	// newest first): ErrNotFound when no kept report names it.
	NodeDeploys(ctx context.Context, node string, limit int) (*NodeHistory, error)
	// DeployNodes is every node a kept report names, sorted by name,
	// each with at most limit of its last results.
	DeployNodes(ctx context.Context, limit int) ([]NodeHistory, error)
}

// DeploySummary is what a list of deploy reports says of each.
type DeploySummary struct {
	ID string `json:"id"`
	// Kind is what the report is of: "push" unless it says otherwise
	// (its "kind" field, e.g. "reboot").
	Kind  string    `json:"kind"`
	Mode  string    `json:"mode,omitempty"`
	Start time.Time `json:"start"`
	// Millis is how long it took, as the report says.
	Millis float64 `json:"ms"`
	// Stored is when the cache took it, Sender the token that sent it.
	Stored time.Time `json:"stored"`
	Sender string    `json:"sender,omitempty"`
	Hosts  int       `json:"hosts"`
	// Failed are the first 20 nodes the report lists as failed, of
	// FailedCount.
	Failed      []string `json:"failed"`
	FailedCount int      `json:"failedCount"`
	Size        int      `json:"size"`
}

// DeployPage is one page of DeployReports.
type DeployPage struct {
	Reports []DeploySummary `json:"reports"`
	// Next is the cursor of the next (older) page, "" after the last.
	Next string `json:"next,omitempty"`
}

// NodeDeploy is one node's part of one report.
type NodeDeploy struct {
	Node     string    `json:"node"`
	Deploy   string    `json:"deploy"` // the report's id
	Kind     string    `json:"kind"`
	Hostname string    `json:"hostname,omitempty"`
	Path     string    `json:"path,omitempty"` // the system deployed
	Mode     string    `json:"mode,omitempty"`
	Result   string    `json:"result"`
	Error    string    `json:"error,omitempty"` // its first 256 bytes
	Start    time.Time `json:"start"`
	Millis   float64   `json:"ms"`
	// RebootRequired is what the deploy found on the host.
	RebootRequired bool `json:"rebootRequired,omitempty"`
}

// NodeHistory is a node's last results in the kept reports.
type NodeHistory struct {
	Node string       `json:"node"`
	Last []NodeDeploy `json:"last"` // newest first
	// LastOK is the newest result "ok" in the kept reports, which may be
	// older than every one in Last: the system the deployer last put on
	// the node and by which deploy. Nil when there is none.
	LastOK *NodeDeploy `json:"lastOK,omitempty"`
}

// Sizer is the optional capability of counting what a store holds, for
// the cache's landing page. It may scan the whole index (the upload store
// has no running totals), so callers keep its answer a few seconds.
type Sizer interface {
	// Size counts the store's paths, their NAR bytes and the paths
	// registered at or after since.
	Size(ctx context.Context, since time.Time) (StoreSize, error)
}

// StoreSize is Sizer's answer.
type StoreSize struct {
	Paths int
	// NarBytes is the sum of the paths' uncompressed NAR sizes.
	NarBytes int64
	// FileBytes is what the store keeps on disk for them when that
	// differs from NarBytes (compressed NAR files, logs): the figure
	// gc.max_size bounds. 0 for a store whose bytes are the NARs.
	FileBytes int64
	// Since is the paths registered at or after Size's since.
	Since int
}

// Referrers is the optional capability of listing the paths that refer
// to a path (the reverse of PathInfo.References), for the cache's search
// page. The upload store keeps no reverse index, so this may scan.
type Referrers interface {
	// Referrers lists at most limit full store paths whose references
	// name storePath (itself excluded), sorted; more reports that
	// others were left out.
	Referrers(ctx context.Context, storePath string, limit int) (paths []string, more bool, err error)
}
