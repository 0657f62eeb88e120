package host

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// bootFiles are the parts of a system that only a reboot can change.
var bootFiles = []string{"kernel", "initrd", "kernel-modules"}

// bootChanges lists which of kernel, initrd and kernel-modules differ
// between systems a and b. On NixOS they are links into other store paths
// and compare by target; the simulated systems hold small files and
// directories, compared by content.
func bootChanges(a, b string) ([]string, error) {
	var diff []string
	for _, name := range bootFiles {
		same, err := sameTree(filepath.Join(a, name), filepath.Join(b, name))
		if err != nil {
			return nil, fmt.Errorf("compare %s: %w", name, err)
		}
		if !same {
			diff = append(diff, name)
		}
	}
	return diff, nil
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

// treeHash hashes names, kinds, link targets and contents under root.
func treeHash(root string) ([]byte, error) {
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
	return h.Sum(nil), err
}
