package host

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
)

// bootChange says which boot-time parts of a system differ from another's.
// On NixOS kernel, initrd and kernel-modules are links into other store
// paths, as they are in the simulated systems (internal/fleettest).
type bootChange struct{ kernel, modules, initrd bool }

// required: only a reboot runs the new kernel or modules. (The initrd's
// store path changes on most nixpkgs bumps, since stage 1 carries systemd,
// udev and kmod: on its own it only recommends a reboot.)
func (c bootChange) required() bool { return c.kernel || c.modules }

func (c bootChange) names() []string {
	var n []string
	if c.kernel {
		n = append(n, "kernel")
	}
	if c.initrd {
		n = append(n, "initrd")
	}
	if c.modules {
		n = append(n, "kernel-modules")
	}
	return n
}

// compareBoot compares the boot-time parts of systems a and b.
func compareBoot(a, b string) (bootChange, error) {
	var c bootChange
	for _, p := range []struct {
		name string
		diff *bool
	}{{"kernel", &c.kernel}, {"initrd", &c.initrd}, {"kernel-modules", &c.modules}} {
		same, err := sameTree(filepath.Join(a, p.name), filepath.Join(b, p.name))
		if err != nil {
			return c, fmt.Errorf("compare %s: %w", p.name, err)
		}
		*p.diff = !same
	}
	return c, nil
}

func sameTree(a, b string) (bool, error) {
	ra, errA := filepath.EvalSymlinks(a)
	rb, errB := filepath.EvalSymlinks(b)
	switch {
	case errors.Is(errA, fs.ErrNotExist) && errors.Is(errB, fs.ErrNotExist):
		return true, nil
	case errors.Is(errA, fs.ErrNotExist) || errors.Is(errB, fs.ErrNotExist):
		return false, nil
	case errA != nil:
		return false, errA
	case errB != nil:
		return false, errB
	case ra == rb:
		return true, nil
	}
	ha, err := treeHash(ra)
	if err != nil {
		return false, err
	}
	hb, err := treeHash(rb)
	if err != nil {
		return false, err
	}
	return bytes.Equal(ha, hb), nil
}

// hashes caches treeHash of paths in /nix/store, which never change: the
// exporter compares the same kernels at every scrape.
var hashes struct {
	sync.Mutex
	m map[string][]byte
}

const maxCachedHashes = 64

// treeHash hashes names, kinds, link targets and contents under root.
func treeHash(root string) ([]byte, error) {
	cacheable := strings.HasPrefix(root, "/nix/store/")
	if cacheable {
		hashes.Lock()
		h, ok := hashes.m[root]
		hashes.Unlock()
		if ok {
			return h, nil
		}
	}
	h := sha256.New()
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(h, "l %s %s\x00", rel, t)
		case d.IsDir():
			fmt.Fprintf(h, "d %s\x00", rel)
		default:
			fmt.Fprintf(h, "f %s\x00", rel)
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			_, err = io.Copy(h, f)
			f.Close()
			if err != nil {
				return err
			}
			h.Write([]byte{0})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	sum := h.Sum(nil)
	if cacheable {
		hashes.Lock()
		if hashes.m == nil || len(hashes.m) >= maxCachedHashes {
			hashes.m = map[string][]byte{}
		}
		hashes.m[root] = sum
		hashes.Unlock()
	}
	return sum, nil
}

// inhibitorChanges compares the switch inhibitors of two systems
// (system.switch.inhibitors, a JSON object of strings in
// <toplevel>/switch-inhibitors) as nixpkgs' pre-switch check does: a key
// both have with another value blocks a live switch. It returns
// "key : old -> new" for each, sorted; none when either file is missing
// or unreadable (switch-to-configuration's own check still runs).
func inhibitorChanges(current, next string) []string {
	read := func(sys string) map[string]string {
		b, err := os.ReadFile(filepath.Join(sys, "switch-inhibitors"))
		if err != nil {
			return nil
		}
		var m map[string]string
		if json.Unmarshal(b, &m) != nil {
			return nil
		}
		return m
	}
	old, nw := read(current), read(next)
	var diff []string
	for k, v := range old {
		if nv, ok := nw[k]; ok && nv != v {
			diff = append(diff, fmt.Sprintf("%s : %s -> %s", k, v, nv))
		}
	}
	sort.Strings(diff)
	return diff
}
