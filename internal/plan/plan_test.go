package plan_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"strings"
	"testing"

	"github.com/bos55/concordia/internal/closure"
	"github.com/bos55/concordia/internal/hostverb"
	"github.com/bos55/concordia/internal/plan"
	"github.com/bos55/concordia/pkg/nar"
	"github.com/bos55/concordia/pkg/narinfo"
)

// fakeCache is a cache's narinfos (a graph of references) and listings.
type fakeCache struct {
	refs     map[string][]string
	missing  map[string]bool
	unsigned map[string]bool
	listings map[string]*nar.Listing // by hash part
	down     bool
}

func (c *fakeCache) Walk(ctx context.Context, root string) (*closure.Closure, error) {
	if c.down {
		return nil, closure.ErrCache
	}
	cl := &closure.Closure{Result: closure.Result{Root: root}, Infos: map[string]*narinfo.NarInfo{}}
	var visit func(p string)
	visit = func(p string) {
		if _, ok := cl.Infos[p]; ok {
			return
		}
		refs, ok := c.refs[p]
		if !ok || c.missing[p] {
			for _, m := range cl.Missing {
				if m == p {
					return
				}
			}
			cl.Missing = append(cl.Missing, p)
			return
		}
		cl.Infos[p] = &narinfo.NarInfo{StorePath: p, NarSize: 1000, FileSize: 400, NarHash: narinfo.SHA256([]byte(p))}
		cl.Paths++
		if c.unsigned[p] {
			cl.Unsigned = append(cl.Unsigned, p)
		}
		for _, r := range refs {
			visit(r)
		}
	}
	visit(root)
	return cl, nil
}

func (c *fakeCache) Listing(ctx context.Context, hash string) (*nar.Listing, error) {
	return c.listings[hash], nil
}

// system adds a toplevel with boot links and packages to the cache; its
// listing is served unless noListing.
func (c *fakeCache) system(key, name, kernel, initrd string, pkgs []string, noListing bool) string {
	top := sp(key, "nixos-system-"+name)
	k, m, i := sp(kernel, "linux-"+kernel), sp(kernel, "linux-"+kernel+"-modules"), sp(initrd, "initrd-linux-"+kernel)
	c.refs[k], c.refs[m], c.refs[i] = nil, []string{k}, nil
	refs := []string{k, m, i}
	for _, p := range pkgs {
		c.refs[p] = nil
		refs = append(refs, p)
	}
	c.refs[top] = refs
	if !noListing {
		doc := `{"version":1,"root":{"type":"directory","entries":{"initrd":{"type":"symlink","target":"` + i + `/initrd"},` +
			`"kernel":{"type":"symlink","target":"` + k + `/bzImage"},"kernel-modules":{"type":"symlink","target":"` + m + `"}}}}`
		l, err := nar.ParseListing(strings.NewReader(doc))
		if err != nil {
			panic(err)
		}
		c.listings[top[len("/nix/store/"):][:32]] = l
	}
	return top
}

func status(current, booted string) *hostverb.Status {
	return &hostverb.Status{Current: hostverb.System{Path: current}, Booted: hostverb.System{Path: booted}}
}

func TestMake(t *testing.T) {
	c := &fakeCache{refs: map[string][]string{}, missing: map[string]bool{}, unsigned: map[string]bool{}, listings: map[string]*nar.Listing{}}
	ossl14, ossl15, hello := sp("x", "openssl-3.0.14"), sp("x", "openssl-3.0.15"), sp("x", "hello-2.12")
	v1 := c.system("1", "web-24.05.1", "6.1.0", "i1", []string{ossl14, hello}, false)
	bump := c.system("2", "web-24.05.2", "6.1.0", "i1", []string{ossl15, hello}, false)
	initrd := c.system("3", "web-24.05.3", "6.1.0", "i2", []string{ossl15, hello}, false)
	kernel := c.system("4", "web-24.05.4", "6.6.1", "i3", []string{ossl15, hello}, false)
	unlisted := c.system("5", "web-24.05.5", "6.6.1", "i3", []string{ossl15}, true)
	notCached := sp("6", "nixos-system-web-old")
	broken := c.system("7", "web-broken", "6.1.0", "i1", []string{sp("x", "gone-1.0"), sp("x", "forged-1.0")}, false)
	c.missing[sp("x", "gone-1.0")] = true
	c.unsigned[sp("x", "forged-1.0")] = true
	// A hostile listing: the kernel is a file, not a link.
	hostile := c.system("8", "web-hostile", "6.1.0", "i1", nil, true)
	hl, _ := nar.ParseListing(strings.NewReader(`{"version":1,"root":{"type":"directory","entries":{"kernel":{"type":"regular","size":3}}}}`))
	c.listings[hostile[len("/nix/store/"):][:32]] = hl

	targets := []plan.Target{
		{Node: "same", Path: v1, Mode: hostverb.Switch, Status: status(v1, v1), Walker: c},
		{Node: "bump", Path: bump, Mode: hostverb.Switch, Status: status(v1, v1), Walker: c},
		{Node: "initrd", Path: initrd, Mode: hostverb.Boot, Status: status(v1, v1), Walker: c},
		{Node: "kernel", Path: kernel, Mode: hostverb.Switch, Status: status(bump, v1), Walker: c},
		{Node: "unlisted", Path: unlisted, Mode: hostverb.Switch, Status: status(v1, v1), Walker: c},
		{Node: "oldhost", Path: bump, Mode: hostverb.Test, Status: status(notCached, notCached), Walker: c},
		{Node: "broken", Path: broken, Mode: hostverb.Switch, Status: status(v1, v1), Walker: c},
		{Node: "down", Path: bump, Mode: hostverb.Switch, StatusErr: "ssh: connection refused", Walker: c},
		{Node: "hostile", Path: hostile, Mode: hostverb.Switch, Status: status(v1, v1), Walker: c},
	}
	// The local store holds the unlisted system, with links of the kernel
	// system's shape.
	local := map[string]string{}
	for _, l := range []string{"kernel", "kernel-modules", "initrd"} {
		local[unlisted+"/"+l] = c.listings[kernel[len("/nix/store/"):][:32]].Lookup(l).Target
	}
	p := plan.Make(context.Background(), targets, plan.Options{
		Lister: c,
		Exists: func(p string) bool { return p == unlisted },
		Readlink: func(p string) (string, error) {
			if t, ok := local[p]; ok {
				return t, nil
			}
			return "", fs.ErrNotExist
		},
	})
	by := map[string]plan.Host{}
	for _, h := range p.Hosts {
		by[h.Node] = h
	}
	if h := by["same"]; !h.Unchanged || h.Diff == nil || h.Diff.PathsAdded != 0 || h.Reboot.Verdict != plan.RebootNo || !h.Closure.OK || h.Error != "" {
		t.Errorf("same: %+v", h)
	}
	if h := by["bump"]; h.Unchanged || h.Diff == nil || h.Diff.PathsAdded != 2 || h.Diff.PathsRemoved != 2 || h.Diff.DownloadBytes != 800 ||
		!hasChange(h.Diff, "openssl", "3.0.14", "3.0.15") || h.Reboot.Verdict != plan.RebootNo || h.Reboot.Source != "cache,cache" {
		t.Errorf("bump: %+v %+v", h, h.Diff)
	}
	if h := by["initrd"]; h.Reboot.Verdict != plan.RebootRecommended || strings.Join(h.Reboot.Changed, ",") != "initrd" {
		t.Errorf("initrd: %+v", h.Reboot)
	}
	if h := by["kernel"]; h.Reboot.Verdict != plan.RebootRequired || strings.Join(h.Reboot.Changed, ",") != "kernel,kernel-modules,initrd" ||
		!hasChange(h.Diff, "linux", "6.1.0", "6.6.1") || h.Current != bump || h.Booted != v1 {
		t.Errorf("kernel: %+v %+v", h.Reboot, h.Diff)
	}
	if h := by["unlisted"]; h.Reboot.Verdict != plan.RebootRequired || h.Reboot.Source != "local,cache" {
		t.Errorf("unlisted: %+v", h.Reboot)
	}
	if h := by["oldhost"]; h.Diff != nil || !strings.Contains(h.DiffUnknown, "not in the cache") || h.Reboot.Verdict != plan.RebootUnknown ||
		!strings.Contains(h.Reboot.Reason, "not in this machine's store") || !h.Closure.OK || h.Error != "" || h.Mode != hostverb.Test {
		t.Errorf("oldhost: %+v", h)
	}
	if h := by["broken"]; h.Closure.OK || len(h.Closure.Missing) != 1 || len(h.Closure.Unsigned) != 1 {
		t.Errorf("broken: %+v", h.Closure)
	}
	if h := by["down"]; !strings.Contains(h.Error, "connection refused") || !h.Closure.OK || h.Reboot.Verdict != plan.RebootUnknown {
		t.Errorf("down: %+v", h)
	}
	if h := by["hostile"]; h.Reboot.Verdict != plan.RebootUnknown || !strings.Contains(h.Reboot.Reason, "not a link") {
		t.Errorf("hostile: %+v", h.Reboot)
	}
	err := p.Err()
	if !errors.Is(err, plan.ErrNotDeployable) {
		t.Fatalf("Err %v", err)
	}
	for _, want := range []string{"broken (closure not deployable: 1 path(s) missing from the cache, 1 path(s) not signed", "down (could not be planned"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Err %q does not say %q", err, want)
		}
	}
	for _, ok := range []string{"same", "bump", "kernel", "oldhost", "hostile"} {
		if strings.Contains(err.Error(), ok+" (") {
			t.Errorf("Err names %s: %v", ok, err)
		}
	}
	// The table and details, and the JSON CI reads.
	var out bytes.Buffer
	plan.Print(&out, p)
	for _, want := range []string{"NODE", "web-24.05.1 (unchanged)", "web-24.05.1 -> web-24.05.2", "openssl: 3.0.14 → 3.0.15",
		"linux: 6.1.0 → 6.6.1", "required: kernel, kernel-modules, initrd differ", "NOT DEPLOYABLE", "1 missing, 1 unsigned"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	b, _ := json.Marshal(p)
	var back map[string]any
	json.Unmarshal(b, &back)
	if back["schemaVersion"] != float64(1) || len(back["hosts"].([]any)) != len(targets) {
		t.Errorf("json: %s", b)
	}
	// The cache down: every host is an error, nothing panics.
	c.down = true
	p = plan.Make(context.Background(), targets[:2], plan.Options{Lister: c})
	if err := p.Err(); err == nil || !strings.Contains(err.Error(), "cache unavailable") {
		t.Errorf("cache down: %v", err)
	}
}

func hasChange(d *plan.Diff, name, before, after string) bool {
	if d == nil {
		return false
	}
	for _, c := range d.Changes {
		if c.Name == name && strings.Join(c.Before, ",") == before && strings.Join(c.After, ",") == after {
			return true
		}
	}
	return false
}
