// Package plan says what a deploy would change, before anything changes:
// per host, the closure diff between the system it runs and the new one
// (packages whose versions change, paths added and removed, the download
// size), whether a reboot is needed to run the new kernel, whether the
// new closure is complete and signed in the cache, and the mode. It reads
// only narinfos and the toplevels' .ls listings from the cache (and the
// hosts' status, which the caller asks): no NAR is downloaded, nothing on
// a host changes. `deployer plan` and `push --dry-run` print it; its JSON
// (Plan, SchemaVersion) is for CI.
package plan

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"strings"
	"sync"

	"github.com/bos55/concordia/internal/closure"
	"github.com/bos55/concordia/internal/hostverb"
	"github.com/bos55/concordia/pkg/nar"
	"github.com/bos55/concordia/pkg/narinfo"
)

// SchemaVersion is the version of the JSON form of a Plan. Fields are only
// added within a version; a change of meaning or a removal bumps it.
const SchemaVersion = 1

// ErrNotDeployable is wrapped by Plan.Err when a host could not be
// planned or its closure could not be deployed.
var ErrNotDeployable = errors.New("plan: not deployable")

// Walker walks a closure through the cache's narinfos (closure.Checker).
type Walker interface {
	Walk(ctx context.Context, root string) (*closure.Closure, error)
}

// Lister fetches a path's .ls listing; (nil, nil) when the cache has none
// (cacheapi.Client).
type Lister interface {
	Listing(ctx context.Context, hashPart string) (*nar.Listing, error)
}

// Target is one host to plan.
type Target struct {
	Node string
	Path string // the new system
	Mode hostverb.Mode
	// Status is the host's answer to the status verb; nil when it could
	// not be asked, StatusErr saying why.
	Status    *hostverb.Status
	StatusErr string
	// Walker walks closures with the keys this node trusts.
	Walker Walker
}

// Options configure Make.
type Options struct {
	// Lister reads toplevels' listings; nil: the local store only.
	Lister Lister
	// Readlink reads a link in the local store; os.Readlink when nil.
	// Exists reports whether a store path is on this machine.
	Readlink func(string) (string, error)
	Exists   func(string) bool
	// Parallel bounds the hosts planned at once (default 8); the walks
	// share the walker's memo, so hosts with the same systems cost one.
	Parallel int
}

// Plan is the plan of a deploy: its JSON is the stable schema CI reads.
type Plan struct {
	SchemaVersion int    `json:"schemaVersion"`
	Hosts         []Host `json:"hosts"`
}

// Host is one host's plan.
type Host struct {
	Node string        `json:"node"`
	Mode hostverb.Mode `json:"mode"`
	// New is the system to deploy; Current the one the host runs,
	// Booted the one it booted ("" when the host reported none).
	New     string `json:"new"`
	Current string `json:"current,omitempty"`
	Booted  string `json:"booted,omitempty"`
	// Unchanged: the host runs the new system already.
	Unchanged bool `json:"unchanged"`
	// Closure is the cache's check of the new closure.
	Closure *ClosureCheck `json:"closure,omitempty"`
	// Diff is current -> new; nil when it could not be made
	// (DiffUnknown says why: the current system is not in the cache).
	Diff        *Diff  `json:"diff,omitempty"`
	DiffUnknown string `json:"diffUnknown,omitempty"`
	Reboot      Reboot `json:"reboot"`
	// Error: the host could not be planned (its status could not be read,
	// the cache could not be asked). The other fields hold what is known.
	Error string `json:"error,omitempty"`
}

// ClosureCheck is whether the new closure can be deployed: every path in
// the cache, signed by a key the node trusts.
type ClosureCheck struct {
	OK       bool     `json:"ok"`
	Paths    int      `json:"paths"`
	Missing  []string `json:"missing,omitempty"`
	Unsigned []string `json:"unsigned,omitempty"`
}

// Err names the hosts that could not be planned or whose closure is not
// deployable; nil when every host can be deployed.
func (p *Plan) Err() error {
	var bad []string
	for _, h := range p.Hosts {
		switch {
		case h.Error != "":
			bad = append(bad, h.Node+" (could not be planned: "+h.Error+")")
		case h.Closure == nil || !h.Closure.OK:
			bad = append(bad, h.Node+" ("+h.Closure.problem()+")")
		}
	}
	if len(bad) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrNotDeployable, strings.Join(bad, "; "))
}

func (c *ClosureCheck) problem() string {
	if c == nil {
		return "closure not checked"
	}
	var parts []string
	if n := len(c.Missing); n > 0 {
		parts = append(parts, fmt.Sprintf("%d path(s) missing from the cache", n))
	}
	if n := len(c.Unsigned); n > 0 {
		parts = append(parts, fmt.Sprintf("%d path(s) not signed by a trusted key", n))
	}
	return "closure not deployable: " + strings.Join(parts, ", ")
}

// Make plans every target, in parallel; it never fails as a whole: what
// went wrong for a host is in its Host.
func Make(ctx context.Context, targets []Target, o Options) *Plan {
	if o.Readlink == nil {
		o.Readlink = os.Readlink
	}
	if o.Exists == nil {
		o.Exists = exists
	}
	par := o.Parallel
	if par <= 0 {
		par = 8
	}
	m := &maker{o: o, listings: map[string]*listingEntry{}}
	p := &Plan{SchemaVersion: SchemaVersion, Hosts: make([]Host, len(targets))}
	sem := make(chan struct{}, par)
	var wg sync.WaitGroup
	for i, t := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			p.Hosts[i] = m.host(ctx, t)
		}()
	}
	wg.Wait()
	return p
}

type maker struct {
	o        Options
	mu       sync.Mutex
	listings map[string]*listingEntry // by store path
}

type listingEntry struct {
	done chan struct{}
	l    *nar.Listing
	err  error
}

func (m *maker) host(ctx context.Context, t Target) Host {
	h := Host{Node: t.Node, Mode: t.Mode, New: t.Path}
	if t.Status != nil {
		h.Current, h.Booted = t.Status.Current.Path, t.Status.Booted.Path
	}
	h.Unchanged = t.Status != nil && h.Current == t.Path
	var errs []string
	if t.Status == nil {
		reason := t.StatusErr
		if reason == "" {
			reason = "no status"
		}
		errs = append(errs, "status: "+reason)
	}
	if t.Walker == nil {
		h.Error = strings.Join(append(errs, "no closure walker"), "; ")
		h.Reboot = Reboot{Verdict: RebootUnknown, Booted: h.Booted, Reason: "the cache was not asked"}
		return h
	}
	next, err := t.Walker.Walk(ctx, t.Path)
	if err != nil {
		h.Error = strings.Join(append(errs, fmt.Sprintf("closure of the new system: %v", err)), "; ")
		h.Reboot = Reboot{Verdict: RebootUnknown, Booted: h.Booted, Reason: "the cache could not be asked"}
		return h
	}
	h.Closure = &ClosureCheck{OK: next.OK(), Paths: next.Paths, Missing: next.Missing, Unsigned: next.Unsigned}
	var cur *closure.Closure
	switch {
	case t.Status == nil:
		h.DiffUnknown = "the host's current system is not known"
	case h.Current == "":
		h.DiffUnknown = "the host reports no current system"
	default:
		cur, err = t.Walker.Walk(ctx, h.Current)
		switch {
		case err != nil:
			errs = append(errs, fmt.Sprintf("closure of the current system: %v", err))
			h.DiffUnknown = "the cache could not be asked for the current system"
		case len(cur.Infos) == 0 || cur.Infos[h.Current] == nil:
			h.DiffUnknown = fmt.Sprintf("the current system %s is not in the cache", h.Current)
		default:
			h.Diff = Compare(Closure(cur.Infos), Closure(next.Infos))
			if n := len(cur.Missing); n > 0 {
				h.DiffUnknown = fmt.Sprintf("%d path(s) of the current closure are not in the cache: the diff counts what they lead to as added", n)
			}
		}
	}
	h.Reboot = m.reboot(ctx, t, h, next, cur)
	h.Error = strings.Join(errs, "; ")
	return h
}

// reboot compares the new system's boot links with the booted system's.
func (m *maker) reboot(ctx context.Context, t Target, h Host, next, cur *closure.Closure) Reboot {
	r := Reboot{Booted: h.Booted}
	if h.Booted == "" {
		r.Verdict, r.Reason = RebootUnknown, "the host reports no booted system"
		if t.Status == nil {
			r.Reason = "the host's booted system is not known"
		}
		return r
	}
	storeDir, _, _, err := narinfo.ParseStorePath(t.Path)
	if err != nil {
		r.Verdict, r.Reason = RebootUnknown, err.Error()
		return r
	}
	nl, nsrc, err := m.links(ctx, t.Path)
	if err != nil {
		r.Verdict, r.Reason = RebootUnknown, "new system: "+err.Error()
		return r
	}
	bl, bsrc, err := m.links(ctx, h.Booted)
	if err != nil {
		r.Verdict, r.Reason = RebootUnknown, "booted system: "+err.Error()
		return r
	}
	r.Source = nsrc + "," + bsrc
	info := func(ctx context.Context, p string) *narinfo.NarInfo {
		if i := next.Infos[p]; i != nil {
			return i
		}
		if cur != nil && cur.Infos[p] != nil {
			return cur.Infos[p]
		}
		c, err := t.Walker.Walk(ctx, p)
		if err != nil {
			return nil
		}
		return c.Infos[p]
	}
	r.Verdict, r.Changed = compareLinks(ctx, storeDir, bl, nl, info)
	return r
}

// links reads a toplevel's boot links: from its listing in the cache, else
// from the local store, and says which.
func (m *maker) links(ctx context.Context, sys string) (links, string, error) {
	var why []string
	if m.o.Lister != nil {
		l, err := m.listing(ctx, sys)
		switch {
		case err != nil:
			why = append(why, fmt.Sprintf("its listing: %v", err))
		case l == nil:
			why = append(why, "the cache has no listing of it")
		default:
			ls, err := linksFromListing(l)
			if err == nil {
				return ls, "cache", nil
			}
			why = append(why, fmt.Sprintf("its listing: %v", err))
		}
	}
	if m.o.Exists(sys) {
		ls, err := linksFromFS(m.o.Readlink, sys)
		if err == nil {
			return ls, "local", nil
		}
		why = append(why, fmt.Sprintf("the local store: %v", err))
	} else {
		why = append(why, "it is not in this machine's store")
	}
	return nil, "", fmt.Errorf("%s: %s", path.Base(sys), strings.Join(why, "; "))
}

// listing fetches a toplevel's listing once per plan (hosts share their
// booted and new systems).
func (m *maker) listing(ctx context.Context, sys string) (*nar.Listing, error) {
	m.mu.Lock()
	e, ok := m.listings[sys]
	if !ok {
		e = &listingEntry{done: make(chan struct{})}
		m.listings[sys] = e
	}
	m.mu.Unlock()
	if ok {
		select {
		case <-e.done:
			return e.l, e.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	defer close(e.done)
	_, hash, _, err := narinfo.ParseStorePath(sys)
	if err != nil {
		e.err = err
		return nil, err
	}
	e.l, e.err = m.o.Lister.Listing(ctx, hash)
	return e.l, e.err
}

// Short is a system's name for a table: the store path's name without the
// hash and the "nixos-system-" every toplevel starts with.
func Short(p string) string {
	if p == "" {
		return "-"
	}
	return strings.TrimPrefix(storeName(p), "nixos-system-")
}
