package limits

import (
	"fmt"
	"strings"
)

// The documents an upload token may make the cache keep beside NARs
// (narinfos, build logs, pins) are bounded too, so that no upload, and no
// pile of them, makes a record that the cache or a deployer then refuses
// to read: the deployer's closure check reads at most 1 MiB of a narinfo.

// docDefaults sets the document bounds left at zero to their defaults, so
// Limits that name only NAR bounds (written before these existed) do not
// refuse every signature, log or pin.
func (l Limits) docDefaults() Limits {
	d := Default()
	if l.MaxNarinfoSize == 0 {
		l.MaxNarinfoSize = d.MaxNarinfoSize
	}
	if l.MaxSignatures == 0 {
		l.MaxSignatures = d.MaxSignatures
	}
	if l.MaxLogSize == 0 {
		l.MaxLogSize = d.MaxLogSize
	}
	if l.MaxPinsPerToken == 0 {
		l.MaxPinsPerToken = d.MaxPinsPerToken
	}
	if l.MaxDeployReportSize == 0 {
		l.MaxDeployReportSize = d.MaxDeployReportSize
	}
	return l
}

// DeployReportTooLarge is the refusal of a deploy report over
// MaxDeployReportSize bytes (413).
func (l Limits) DeployReportTooLarge(err error) error {
	return &Error{Key: KeyDeployReportSize, Max: l.MaxDeployReportSize, Size: true, Err: err}
}

// NarinfoTooLarge is the refusal of an uploaded narinfo over
// MaxNarinfoSize bytes (413).
func (l Limits) NarinfoTooLarge(err error) error {
	return &Error{Key: KeyNarinfoSize, Max: l.MaxNarinfoSize, Size: true, Err: err}
}

// TooManySignatures is the refusal of an uploaded narinfo with more than
// MaxSignatures Sig lines (400).
func (l Limits) TooManySignatures(n int, err error) error {
	return &Error{Key: KeySignatures, Max: int64(l.MaxSignatures),
		Err: fmt.Errorf("%w: %d signatures", err, n)}
}

// LogTooLarge is the refusal of a build log over MaxLogSize bytes,
// decompressed (413).
func (l Limits) LogTooLarge(err error) error {
	return &Error{Key: KeyLogSize, Max: l.MaxLogSize, Size: true, Err: err}
}

// SigLineCost is what one signature adds to a rendered narinfo.
func SigLineCost(sig string) int { return len("Sig: ") + len(sig) + 1 }

// BoundSigs chooses the signatures a narinfo keeps: every signature by a
// key named in own (the cache's: what hosts trust), then the others in the
// order given (a record's stored ones before an upload's new ones), each
// only while the count stays within MaxSignatures and the document, base
// bytes without its Sig lines, within MaxNarinfoSize. Duplicates count
// once. The cache's own are kept even past the bounds: without them hosts
// would not substitute the path, and there are as many as it has keys.
func (l Limits) BoundSigs(base int, own []string, lists ...[]string) (kept, dropped []string) {
	seen := map[string]bool{}
	isOwn := func(sig string) bool {
		name, _, _ := strings.Cut(sig, ":")
		for _, o := range own {
			if o == name {
				return true
			}
		}
		return false
	}
	size := base
	for _, pass := range []bool{true, false} {
		for _, list := range lists {
			for _, sig := range list {
				if seen[sig] || isOwn(sig) != pass {
					continue
				}
				seen[sig] = true
				cost := SigLineCost(sig)
				if !pass && (len(kept) >= l.MaxSignatures || int64(size+cost) > l.MaxNarinfoSize) {
					dropped = append(dropped, sig)
					continue
				}
				kept = append(kept, sig)
				size += cost
			}
		}
	}
	return kept, dropped
}

// SigsWithin reports whether a narinfo of base bytes without signatures,
// with sigs, is within the bounds, without building anything: the common
// case, for which BoundSigs need not run.
func (l Limits) SigsWithin(base int, sigs []string) bool {
	if len(sigs) > l.MaxSignatures {
		return false
	}
	size := base
	for _, s := range sigs {
		size += SigLineCost(s)
	}
	return int64(size) <= l.MaxNarinfoSize
}
