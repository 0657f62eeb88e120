package fleettest_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bos55/concordia/internal/fleettest"
)

// TestSystemLayout: a fake system is shaped as a NixOS toplevel for a
// closure diff: packages named as given, kernel, initrd and kernel-modules
// links into store paths of their own named as nixpkgs names them, shared
// by systems with the same kernel.
func TestSystemLayout(t *testing.T) {
	f := fleettest.New(t, 0, fleettest.Options{NoInitial: true})
	a := f.Build(t, fleettest.System{Label: "a", Packages: []string{"openssl-3.0.14", "hello-2.12"}})
	b := f.Build(t, fleettest.System{Label: "b", Packages: []string{"openssl-3.0.15", "hello-2.12"}})
	c := f.Build(t, fleettest.System{Label: "c", Kernel: "6.6.1", Initrd: "other"})
	link := func(sys, name string) string {
		t.Helper()
		target, err := os.Readlink(filepath.Join(sys, name))
		if err != nil {
			t.Fatal(err)
		}
		return target
	}
	name := func(p string) string { return filepath.Base(p)[33:] }
	for _, tc := range []struct{ sys, link, want string }{
		{a, "kernel", "linux-6.1.0/bzImage"},
		{a, "initrd", "initrd-linux-6.1.0/initrd"},
		{a, "kernel-modules", "linux-6.1.0-modules"},
		{c, "kernel", "linux-6.6.1/bzImage"},
		{c, "kernel-modules", "linux-6.6.1-modules"},
		{a, "sw/share/openssl-3.0.14", "openssl-3.0.14"},
	} {
		got := link(tc.sys, tc.link)
		if !strings.HasPrefix(got, "/nix/store/") || name(strings.TrimSuffix(strings.TrimSuffix(got, "/bzImage"), "/initrd"))+
			strings.TrimPrefix(got, strings.TrimSuffix(strings.TrimSuffix(got, "/bzImage"), "/initrd")) != tc.want {
			t.Errorf("%s/%s -> %s, want .../<hash>-%s", filepath.Base(tc.sys), tc.link, got, tc.want)
		}
	}
	if link(a, "kernel") != link(b, "kernel") || link(a, "initrd") != link(b, "initrd") {
		t.Error("two systems with the same kernel do not share its store paths")
	}
	if link(a, "sw/share/hello-2.12") != link(b, "sw/share/hello-2.12") {
		t.Error("two systems do not share a package of the same name")
	}
	if link(a, "initrd") == link(c, "initrd") {
		t.Error("another Initrd, the same initrd path")
	}
	if b, err := os.ReadFile(filepath.Join(c, "kernel")); err != nil || string(b) != "6.6.1\n" {
		t.Errorf("kernel reads %q %v", b, err)
	}
	if b, err := os.ReadFile(filepath.Join(c, "initrd")); err != nil || string(b) != "other\n" {
		t.Errorf("initrd reads %q %v", b, err)
	}
	// Another fleet gets its own paths under the same names.
	g := fleettest.New(t, 0, fleettest.Options{NoInitial: true})
	other := g.Build(t, fleettest.System{Label: "a", Packages: []string{"openssl-3.0.14"}})
	if link(other, "kernel") == link(a, "kernel") || link(other, "sw/share/openssl-3.0.14") == link(a, "sw/share/openssl-3.0.14") {
		t.Error("two fleets share a path")
	}
}
