package plan

import (
	"path"
	"sort"

	"github.com/bos55/concordia/pkg/narinfo"
)

// Kinds of a package change in a Diff.
const (
	// KindVersion: the package is in both closures with other versions
	// (openssl 3.0.14 -> 3.0.15).
	KindVersion = "version"
	// KindAdded and KindRemoved: the package is in one closure only.
	KindAdded   = "added"
	KindRemoved = "removed"
	// KindRebuilt: the same versions, other store paths (a dependency
	// changed, or a rebuild): what diff-closures shows only as a size
	// change, named here because a rebuilt initrd or toplevel is news.
	KindRebuilt = "rebuilt"
)

// Change is one package (a name, all its outputs and versions) that
// differs between two closures.
type Change struct {
	Name string `json:"name"`
	Kind string `json:"kind"`
	// Before and After are the versions only the current or only the new
	// closure has (diff-closures' "removed" and "added" versions), sorted
	// as strings; "" is a path with no version.
	Before []string `json:"before,omitempty"`
	After  []string `json:"after,omitempty"`
	// NarSizeDelta is the change of the package's unpacked size.
	NarSizeDelta int64 `json:"narSizeDelta"`
}

// Diff is what `nix store diff-closures current new` says, from the
// narinfos alone, plus what deploying the new closure would fetch.
type Diff struct {
	PathsAdded   int   `json:"pathsAdded"`
	PathsRemoved int   `json:"pathsRemoved"`
	NarSizeDelta int64 `json:"narSizeDelta"`
	// DownloadBytes is the sum of the narinfos' FileSize (the NAR as the
	// cache sends it, compressed) of the new closure's paths that are not
	// in the current one: what the host substitutes, unless it has them
	// from an older generation. A narinfo without a FileSize counts its
	// NarSize. DownloadNarBytes is the same paths unpacked.
	DownloadBytes    int64    `json:"downloadBytes"`
	DownloadNarBytes int64    `json:"downloadNarBytes"`
	Changes          []Change `json:"changes"`
}

// Closure is the narinfos of a closure by full store path.
type Closure map[string]*narinfo.NarInfo

// Compare diffs two closures as diff-closures does: paths grouped by
// package name (Package), then per name the versions only one side has.
// A name whose versions are the same on both sides but whose paths differ
// is KindRebuilt.
func Compare(current, next Closure) *Diff {
	d := &Diff{Changes: []Change{}}
	type side struct {
		versions map[string]bool
		paths    map[string]bool
		size     int64
	}
	group := func(c Closure) map[string]*side {
		g := map[string]*side{}
		for p, info := range c {
			name, version := Package(storeName(p))
			s := g[name]
			if s == nil {
				s = &side{versions: map[string]bool{}, paths: map[string]bool{}}
				g[name] = s
			}
			s.versions[version] = true
			s.paths[p] = true
			s.size += int64(info.NarSize)
		}
		return g
	}
	before, after := group(current), group(next)
	names := map[string]bool{}
	for n := range before {
		names[n] = true
	}
	for n := range after {
		names[n] = true
	}
	empty := &side{}
	for name := range names {
		b, a := before[name], after[name]
		if b == nil {
			b = empty
		}
		if a == nil {
			a = empty
		}
		c := Change{Name: name, NarSizeDelta: a.size - b.size}
		for v := range b.versions {
			if !a.versions[v] {
				c.Before = append(c.Before, v)
			}
		}
		for v := range a.versions {
			if !b.versions[v] {
				c.After = append(c.After, v)
			}
		}
		sort.Strings(c.Before)
		sort.Strings(c.After)
		switch {
		case len(b.paths) == 0:
			c.Kind = KindAdded
		case len(a.paths) == 0:
			c.Kind = KindRemoved
		case len(c.Before) > 0 || len(c.After) > 0:
			c.Kind = KindVersion
		case !samePaths(b.paths, a.paths):
			c.Kind = KindRebuilt
		default:
			continue
		}
		d.Changes = append(d.Changes, c)
	}
	sort.Slice(d.Changes, func(i, j int) bool { return d.Changes[i].Name < d.Changes[j].Name })
	for p, info := range next {
		if _, ok := current[p]; ok {
			continue
		}
		d.PathsAdded++
		d.DownloadNarBytes += int64(info.NarSize)
		if info.FileSize > 0 {
			d.DownloadBytes += int64(info.FileSize)
		} else {
			d.DownloadBytes += int64(info.NarSize)
		}
	}
	for p := range current {
		if _, ok := next[p]; !ok {
			d.PathsRemoved++
		}
	}
	d.NarSizeDelta = size(next) - size(current)
	return d
}

func samePaths(a, b map[string]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for p := range a {
		if !b[p] {
			return false
		}
	}
	return true
}

func size(c Closure) int64 {
	var n int64
	for _, info := range c {
		n += int64(info.NarSize)
	}
	return n
}

// storeName is a store path's name without its hash ("openssl-3.0.14"
// of /nix/store/<hash>-openssl-3.0.14).
func storeName(p string) string {
	base := path.Base(p)
	if _, name, err := narinfo.ParseBaseName(base); err == nil {
		return name
	}
	return base
}
