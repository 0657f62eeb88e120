package plan

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"

	"github.com/bos55/concordia/pkg/nar"
	"github.com/bos55/concordia/pkg/narinfo"
)

// Reboot verdicts.
const (
	RebootNo          = "no"
	RebootRequired    = "required"    // kernel or kernel-modules differ from the booted system's
	RebootRecommended = "recommended" // only the initrd differs
	RebootUnknown     = "unknown"     // see Reason
)

// Reboot says whether the new system needs a reboot to run fully: the
// host's own rule (internal/host's kernel policy), decided before the
// deploy from the toplevels' links.
type Reboot struct {
	Verdict string `json:"verdict"`
	// Changed names the links that differ: kernel, kernel-modules, initrd.
	Changed []string `json:"changed,omitempty"`
	// Booted is the system the host booted, what the links are compared with.
	Booted string `json:"booted,omitempty"`
	// Source says where the links were read: "cache" (the .ls listings)
	// or "local" (the deployer machine's store), for each of the two
	// systems in turn ("cache,local").
	Source string `json:"source,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// bootLinks are the parts of a NixOS toplevel that only a reboot changes:
// nixos/modules/system/boot/kernel.nix links kernel to the kernel
// package's image, kernel-modules to the modules tree and initrd to the
// initial ramdisk's image.
var bootLinks = []string{"kernel", "kernel-modules", "initrd"}

// links are a toplevel's boot links: name -> target ("" when the toplevel
// has none, as a container's).
type links map[string]string

// linksFromListing reads the boot links of a toplevel from its listing.
// A link that is something else than a symlink is a toplevel this plan
// cannot read (the simulated systems before were).
func linksFromListing(l *nar.Listing) (links, error) {
	if l.Root == nil || l.Root.Type != nar.TypeDirectory {
		return nil, errors.New("the listing is not of a directory: not a NixOS toplevel")
	}
	out := links{}
	for _, name := range bootLinks {
		n := l.Lookup(name)
		switch {
		case n == nil:
			out[name] = ""
		case n.Type != nar.TypeSymlink:
			return nil, fmt.Errorf("%s is a %s, not a link into the store", name, n.Type)
		default:
			out[name] = n.Target
		}
	}
	return out, nil
}

// linksFromFS reads the boot links of a toplevel in the local store.
func linksFromFS(readlink func(string) (string, error), sys string) (links, error) {
	out := links{}
	for _, name := range bootLinks {
		t, err := readlink(path.Join(sys, name))
		switch {
		case errors.Is(err, fs.ErrNotExist):
			out[name] = ""
		case err != nil:
			return nil, err
		default:
			out[name] = t
		}
	}
	return out, nil
}

// exists reports whether a store path is on the deployer machine.
func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// targetPath splits a link target into its store path and the rest
// ("/nix/store/<h>-linux-6.6.1/bzImage" is the store path and "bzImage").
func targetPath(storeDir, t string) (storePath, rest string, ok bool) {
	trimmed, found := strings.CutPrefix(t, storeDir+"/")
	if !found {
		return "", "", false
	}
	base, rest, _ := strings.Cut(trimmed, "/")
	if _, _, err := narinfo.ParseBaseName(base); err != nil {
		return "", "", false
	}
	return storeDir + "/" + base, rest, true
}

// sameTarget decides whether two link targets are the same boot part: the
// same target, or targets in two store paths whose NARs have the same hash
// (the same bytes under another name) at the same place. The host
// compares contents; two store paths whose NARs differ are counted as a
// change here even if the linked file itself is the same.
func sameTarget(ctx context.Context, storeDir, a, b string, info func(context.Context, string) *narinfo.NarInfo) bool {
	if a == b {
		return true
	}
	pa, ra, okA := targetPath(storeDir, a)
	pb, rb, okB := targetPath(storeDir, b)
	if !okA || !okB || ra != rb {
		return false
	}
	ia, ib := info(ctx, pa), info(ctx, pb)
	return ia != nil && ib != nil && ia.NarHash.String() == ib.NarHash.String() && ia.NarSize == ib.NarSize
}

// compareLinks gives the verdict of new links against the booted ones.
func compareLinks(ctx context.Context, storeDir string, booted, next links, info func(context.Context, string) *narinfo.NarInfo) (verdict string, changed []string) {
	for _, name := range bootLinks {
		if !sameTarget(ctx, storeDir, booted[name], next[name], info) {
			changed = append(changed, name)
		}
	}
	verdict = RebootNo
	for _, c := range changed {
		switch c {
		case "kernel", "kernel-modules":
			return RebootRequired, changed
		case "initrd":
			verdict = RebootRecommended
		}
	}
	return verdict, changed
}
