package upload

import (
	"context"

	"github.com/bos55/concordia/pkg/narinfo"
)

// Paths pulled from an upstream binary cache (package pullthrough) are
// kept here as uploads are, so the next client gets them at LAN speed and
// they stay served while the upstream is unreachable. The NAR file comes
// through PutNAR, verified like an upload's; the narinfo is the
// upstream's, whose signature the caller checked. What differs from an
// upload is what the record means: the path is a cache of the upstream's,
// which has its whole closure, so its references need not be here, and
// GC evicts it before any upload (gc.go).

// Adopt implements store.Adopter: it publishes the path ni describes,
// pulled from the upstream origin, with the NAR file name received by
// PutNAR. The file must match ni (NarHash, NarSize, Compression, and
// FileHash and FileSize when set); ni's URL is the upstream's and is not
// kept: the record serves nar/<name>. A path the index has stays exactly
// as it is when ni describes it (nil) and is ErrConflict otherwise, as is
// a tombstone of another NAR; a tombstone of the same NAR is lifted. The
// record keeps ni's signatures (within the limits) beside the cache's
// own, and origin, which PathInfo answers as Origin.
func (s *Store) Adopt(ctx context.Context, name string, ni *narinfo.NarInfo, origin string) error {
	err := s.adopt(ctx, name, ni, origin)
	s.metrics.upload("adopt", err)
	return err
}

// adopt is putNarInfo for a pulled path. Other stores are not consulted:
// no reference is looked up, and what another store serves under the
// hash part is the server's to prefer (it asks the stores in order); the
// upstreams among them are where the path came from.
func (s *Store) adopt(ctx context.Context, name string, ni *narinfo.NarInfo, origin string) error {
	up, err := checkAdoption(ni, name, origin, s.storeDir, s.opts.Limits)
	if err != nil {
		return err
	}
	canon := s.blobOf(up)
	claimed, err := s.claim(ctx, up, canon, nil, nil)
	s.unpend(canon, claimed)
	return mapErr(err)
}
