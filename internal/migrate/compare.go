package migrate

import (
	"bytes"
	"context"
	"fmt"

	"github.com/bos55/concordia/internal/store/upload"
)

// compare checks the destination against the source once everything is
// copied: every path there with the same NAR hash, every pin, build log
// and realisation. What is missing and was not already reported as a
// conflict or failure goes in Report.Missing. What the destination has
// beyond the source (it was not empty) is not a difference.
func (c *copier) compare(ctx context.Context) error {
	reported := map[string]bool{}
	for _, p := range append(append([]Problem(nil), c.rep.Conflicts...), c.rep.Failed...) {
		reported[p.What] = true
	}
	missing := func(what string) {
		if !reported[what] {
			c.rep.Missing = append(c.rep.Missing, what)
		}
	}
	if err := c.comparePaths(ctx, missing); err != nil {
		return err
	}
	for _, set := range []struct {
		what   string
		list   func(ctx context.Context) ([]string, error)
		listTo func(ctx context.Context) ([]string, error)
		key    func(string) string
	}{
		{"log ", c.from.LogNames, c.to.LogNames, func(s string) string { return s }},
		{"realisation ", c.from.RealisationIDs, c.to.RealisationIDs, func(s string) string { return s }},
		{"pin ", pinNames(c.from), pinNames(c.to), hashOf},
	} {
		src, err := set.list(ctx)
		if err != nil {
			return fmt.Errorf("compare: %w", err)
		}
		dst, err := set.listTo(ctx)
		if err != nil {
			return fmt.Errorf("compare: %w", err)
		}
		have := map[string]bool{}
		for _, k := range dst {
			have[set.key(k)] = true
		}
		for _, k := range src {
			if !have[set.key(k)] {
				missing(set.what + k)
			}
		}
	}
	return nil
}

// comparePaths reports the source's paths the destination lacks or has
// with another NAR hash.
func (c *copier) comparePaths(ctx context.Context, missing func(string)) error {
	src, err := c.from.PathRecords(ctx)
	if err != nil {
		return fmt.Errorf("compare: read the source: %w", err)
	}
	dst, err := c.to.PathRecords(ctx)
	if err != nil {
		return fmt.Errorf("compare: read the destination: %w", err)
	}
	narHash := make(map[string][]byte, len(dst))
	for _, r := range dst {
		narHash[r.NarInfo.StorePath] = r.NarInfo.NarHash.Digest
	}
	for _, r := range src {
		if h, ok := narHash[r.NarInfo.StorePath]; !ok || !bytes.Equal(h, r.NarInfo.NarHash.Digest) {
			missing(r.NarInfo.StorePath)
		}
	}
	return nil
}

// pinNames lists the store paths (or hash parts) s has pinned.
func pinNames(s *upload.Store) func(context.Context) ([]string, error) {
	return func(ctx context.Context) ([]string, error) {
		pins, err := s.Pins(ctx)
		var out []string
		for _, p := range pins {
			out = append(out, p.StorePath)
		}
		return out, err
	}
}
