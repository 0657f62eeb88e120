package migrate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/upload"
)

// order sorts recs so that every path comes after the paths it refers to
// (the destination refuses a narinfo whose references it lacks). A
// reference to a path not in recs (the machine's /nix/store, an
// upstream's) and a self-reference impose nothing. The order is the same
// every run: depth first over recs and references sorted.
func order(recs []upload.PathRecord) []upload.PathRecord {
	byHash := make(map[string]*upload.PathRecord, len(recs))
	for i := range recs {
		byHash[hashOf(recs[i].NarInfo.StorePath)] = &recs[i]
	}
	seen := make(map[string]bool, len(recs))
	out := make([]upload.PathRecord, 0, len(recs))
	var visit func(hp string)
	visit = func(hp string) {
		r := byHash[hp]
		if r == nil || seen[hp] {
			return
		}
		seen[hp] = true // a cycle (impossible in a store) stops here
		refs := slices.Clone(r.NarInfo.References)
		slices.Sort(refs)
		for _, ref := range refs {
			visit(hashOf(ref))
		}
		out = append(out, *r)
	}
	for i := range recs {
		visit(hashOf(recs[i].NarInfo.StorePath))
	}
	return out
}

// copyPaths copies every path of the source in order, reporting each.
func (c *copier) copyPaths(ctx context.Context) error {
	recs, err := c.from.PathRecords(ctx)
	if err != nil {
		return fmt.Errorf("read the source: %w", err)
	}
	c.rep.Paths = len(recs)
	for i, r := range order(recs) {
		if err := ctx.Err(); err != nil {
			return err
		}
		act, err := c.copyPath(ctx, &r)
		if err != nil {
			return err
		}
		switch act {
		case Copied:
			c.rep.Copied++
		case Skipped:
			c.rep.Skipped++
		default:
			c.bad[hashOf(r.NarInfo.StorePath)] = true
		}
		if c.opts.Progress != nil {
			c.opts.Progress(Progress{Done: i + 1, Total: len(recs), Path: r.NarInfo.StorePath, Action: act})
		}
	}
	return nil
}

// copyPath copies one path unless the destination has it; the error is
// only a cancelled run's, a path's own problem is its Action and the
// report's.
func (c *copier) copyPath(ctx context.Context, r *upload.PathRecord) (Action, error) {
	sp, hp := r.NarInfo.StorePath, hashOf(r.NarInfo.StorePath)
	for _, ref := range r.NarInfo.References {
		if h := hashOf(ref); h != hp && c.bad[h] {
			c.fail(sp, fmt.Errorf("its reference %s was not copied", ref))
			return Failed, nil
		}
	}
	have, err := c.to.PathRecordOf(ctx, hp)
	switch {
	case err == nil:
		return c.present(ctx, r, have)
	case !errors.Is(err, store.ErrNotFound):
		return Failed, c.problem(ctx, sp, fmt.Errorf("look it up at the destination: %w", err))
	case c.opts.DryRun:
		c.countBlob(r.Blob, int64(r.NarInfo.FileSize))
		return Copied, nil
	}
	if err := c.copyBlob(ctx, r); err != nil {
		return Failed, c.problem(ctx, sp, err)
	}
	if err := c.publish(ctx, r); err != nil {
		if errors.Is(err, store.ErrConflict) {
			return Conflict, c.problem(ctx, sp, err)
		}
		return Failed, c.problem(ctx, sp, err)
	}
	return Copied, c.finish(ctx, r)
}

// present handles a path the destination has: the same NAR is skipped
// (its listing and times are put back, in case an earlier run stopped
// between those and the narinfo); another NAR is a conflict and stays.
func (c *copier) present(ctx context.Context, r, have *upload.PathRecord) (Action, error) {
	sp := r.NarInfo.StorePath
	if have.NarInfo.StorePath != sp || !bytes.Equal(have.NarInfo.NarHash.Digest, r.NarInfo.NarHash.Digest) {
		c.conflict(sp, fmt.Errorf("%w: the destination has %s with NarHash %s, the source %s with NarHash %s",
			store.ErrConflict, have.NarInfo.StorePath, have.NarInfo.NarHash, sp, r.NarInfo.NarHash))
		return Conflict, nil
	}
	if c.opts.DryRun {
		return Skipped, nil
	}
	return Skipped, c.finish(ctx, r)
}

// countBlob counts a NAR file once, however many paths share it.
func (c *copier) countBlob(name string, size int64) bool {
	if c.blobs[name] {
		return false
	}
	c.blobs[name] = true
	c.rep.Blobs++
	c.rep.Bytes += size
	return true
}

// copyBlob streams the path's NAR file, as stored, into the
// destination's intake, which verifies it; a file the destination has
// already (another path's, or an earlier run's) is not sent again.
func (c *copier) copyBlob(ctx context.Context, r *upload.PathRecord) error {
	if c.blobs[r.Blob] {
		return nil
	}
	has, err := c.to.HasNAR(ctx, r.Blob)
	if err != nil {
		return fmt.Errorf("NAR file %s at the destination: %w", r.Blob, err)
	}
	if has {
		c.blobs[r.Blob] = true
		return nil
	}
	f, _, err := c.from.OpenBlob(ctx, r.Blob)
	if err != nil {
		return fmt.Errorf("open NAR file %s: %w", r.Blob, err)
	}
	defer f.Close()
	in := &countReader{r: f}
	if _, err := c.to.PutNAR(ctx, r.Blob, in); err != nil {
		return fmt.Errorf("NAR file %s: %w", r.Blob, err)
	}
	c.countBlob(r.Blob, in.n)
	return nil
}

// publish commits the narinfo through the destination's intake: an
// upload's as a PUT, a pulled path's as an adoption from its upstream
// (so it stays evictable first and its closure stays the upstream's).
// The destination has no signing keys: the signatures are the source's.
func (c *copier) publish(ctx context.Context, r *upload.PathRecord) error {
	var err error
	if r.Origin != "" {
		err = c.to.Adopt(ctx, r.Blob, r.NarInfo, r.Origin)
	} else {
		err = c.to.PutNarInfo(ctx, hashOf(r.NarInfo.StorePath), strings.NewReader(r.NarInfo.String()))
	}
	if err != nil {
		return fmt.Errorf("narinfo: %w%s", err, c.upstreamHint(r))
	}
	return nil
}

// upstreamHint explains the refusal of a path that refers to one only an
// upstream has (the source asked it when the path was uploaded): the
// destination checks references against the stores it was opened with,
// which for a maintenance command are not the upstreams.
func (c *copier) upstreamHint(r *upload.PathRecord) string {
	hp := hashOf(r.NarInfo.StorePath)
	for _, ref := range r.NarInfo.References {
		if h := hashOf(ref); h != hp && c.upstream[h] != "" {
			return fmt.Sprintf(" (its reference %s is one only the upstream %s has, which the destination does not consult)", ref, c.upstream[h])
		}
	}
	return ""
}

// finish copies what belongs to a published path: its listing, and its
// registration and access times, so GC at the destination orders it as
// the source would have. Neither is the path: a problem with one is
// reported on its own and does not keep the path's referrers back.
func (c *copier) finish(ctx context.Context, r *upload.PathRecord) error {
	sp, hp := r.NarInfo.StorePath, hashOf(r.NarInfo.StorePath)
	ls, err := c.from.Listing(ctx, hp)
	if err == nil {
		err = c.to.PutListing(ctx, hp, bytes.NewReader(ls))
		if err == nil {
			c.rep.Listings++
		}
	}
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		if err := c.problem(ctx, "listing of "+sp, err); err != nil {
			return err
		}
	}
	if err := c.to.SetPathTimes(ctx, hp, r.Registered, r.Access, r.Told); err != nil {
		return c.problem(ctx, "times of "+sp, err)
	}
	return nil
}
