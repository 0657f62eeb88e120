package migrate

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/bos55/concordia/internal/store"
)

// copyLogs copies the build logs the destination lacks. A log it has is
// compared by size and hash, without reading either: the same is
// skipped, another is a conflict (a build log never changes either).
func (c *copier) copyLogs(ctx context.Context) error {
	names, err := c.from.LogNames(ctx)
	if err != nil {
		return fmt.Errorf("list the source's build logs: %w", err)
	}
	for _, drv := range names {
		if err := c.copyLog(ctx, drv); err != nil {
			return err
		}
	}
	return nil
}

func (c *copier) copyLog(ctx context.Context, drv string) error {
	what := "log " + drv
	size, sum, err := c.from.LogSum(ctx, drv)
	if err != nil {
		return c.problem(ctx, what, err)
	}
	haveSize, haveSum, err := c.to.LogSum(ctx, drv)
	switch {
	case err == nil && haveSize == size && bytes.Equal(haveSum, sum):
		c.rep.Logs++
		return nil
	case err == nil:
		c.conflict(what, fmt.Errorf("%w: the destination has another build log (%d bytes)", store.ErrConflict, haveSize))
		return nil
	case !errors.Is(err, store.ErrNotFound):
		return c.problem(ctx, what, err)
	case c.opts.DryRun:
		c.rep.Logs++
		return nil
	}
	rc, _, err := c.from.BuildLog(ctx, drv)
	if err != nil {
		return c.problem(ctx, what, err)
	}
	defer rc.Close()
	if err := c.to.PutLog(ctx, drv, rc); err != nil {
		return c.problem(ctx, what, err)
	}
	c.rep.Logs++
	return nil
}

// copyRealisations copies realisations and build-trace entries; the
// destination takes the same document again as a no-op and refuses
// another as a conflict, so they are simply sent (each is small).
func (c *copier) copyRealisations(ctx context.Context) error {
	ids, err := c.from.RealisationIDs(ctx)
	if err != nil {
		return fmt.Errorf("list the source's realisations: %w", err)
	}
	for _, id := range ids {
		what := "realisation " + id
		doc, err := c.from.Realisation(ctx, id)
		if err != nil {
			if err := c.problem(ctx, what, err); err != nil {
				return err
			}
			continue
		}
		if !c.opts.DryRun {
			if err := c.to.PutRealisation(ctx, id, bytes.NewReader(doc)); err != nil {
				if err := c.problem(ctx, what, err); err != nil {
					return err
				}
				continue
			}
		}
		c.rep.Realisations++
	}
	return nil
}

// copyPins copies the pins as they were made (owner, note, time), so
// each stays its owner's to remove. A pin of the same path the
// destination has already stays; another owner's is a conflict.
func (c *copier) copyPins(ctx context.Context) error {
	pins, err := c.from.Pins(ctx)
	if err != nil {
		return fmt.Errorf("list the source's pins: %w", err)
	}
	have, err := c.to.Pins(ctx)
	if err != nil {
		return fmt.Errorf("list the destination's pins: %w", err)
	}
	owner := map[string]string{}
	for _, p := range have {
		owner[hashOf(p.StorePath)] = p.Owner
	}
	for _, p := range pins {
		what := "pin " + p.StorePath
		if o, ok := owner[hashOf(p.StorePath)]; ok {
			if o != p.Owner {
				c.conflict(what, fmt.Errorf("%w: the destination has it pinned by %q, the source by %q", store.ErrConflict, o, p.Owner))
			} else {
				c.rep.Pins++
			}
			continue
		}
		if !c.opts.DryRun {
			if _, err := c.to.PutPin(ctx, p); err != nil {
				if err := c.problem(ctx, what, err); err != nil {
					return err
				}
				continue
			}
		}
		c.rep.Pins++
	}
	return nil
}

// copyTombstones copies the NAR hashes of collected paths, so the
// destination refuses, as the source would, an upload that gives one of
// them another NAR. One the destination has (or whose path it has) stays.
func (c *copier) copyTombstones(ctx context.Context) error {
	tombs, err := c.from.Tombstones(ctx)
	if err != nil {
		return fmt.Errorf("list the source's tombstones: %w", err)
	}
	for _, t := range tombs {
		if c.opts.DryRun {
			c.rep.Tombstones++
			continue
		}
		added, err := c.to.PutTombstone(ctx, t)
		if err != nil {
			if err := c.problem(ctx, "tombstone "+t.StorePath, err); err != nil {
				return err
			}
			continue
		}
		if added {
			c.rep.Tombstones++
		}
	}
	return nil
}
