package host_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bos55/concordia/internal/host"
	"github.com/bos55/concordia/internal/hostverb"
	"github.com/bos55/concordia/pkg/narinfo"
)

// Activate refuses every system no trusted key vouches for, before it
// takes the lock or writes anything, and says which check failed.
func TestActivateRefusesUntrustedSystems(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	old := e.system("6.1")
	e.boot(old)
	other, _, err := narinfo.GenerateKey("attacker-1")
	if err != nil {
		t.Fatal(err)
	}
	unsigned := e.system("6.1")
	e.trust.add(unsigned, nil)
	foreign := e.system("6.1")
	e.trust.add(foreign, &other)
	ca := e.system("6.1")
	info := e.trust.add(ca, nil)
	info.CA = "fixed:r:sha256:1xmr8jicvzszfzpz46g37mlpvbzjl2wpwvl2b05psipssyp1sm8h"
	link := filepath.Join(e.store, "cccccccccccccccccccccccccccccccc-nixos-system-link")
	if err := os.Symlink(old, link); err != nil {
		t.Fatal(err)
	}
	e.trust.add(link, &e.trust.key)
	file := filepath.Join(e.store, "dddddddddddddddddddddddddddddddd-nixos-system-file")
	os.WriteFile(file, []byte("#!/bin/sh\n"), 0o755)
	e.trust.add(file, &e.trust.key)
	// switch-to-configuration pointing into a store path the system does
	// not reference, and out of the store.
	stray := e.system("6.1")
	outside := e.system("6.1")
	for sys, target := range map[string]string{stray: filepath.Join(unsigned, "bin", "switch-to-configuration"), outside: "/bin/sh"} {
		stc := filepath.Join(sys, "bin", "switch-to-configuration")
		os.Remove(stc)
		if err := os.Symlink(target, stc); err != nil {
			t.Fatal(err)
		}
	}
	// Into a referenced path is how NixOS ships switch-to-configuration-ng.
	ng := e.system("6.1")
	stc := filepath.Join(ng, "bin", "switch-to-configuration")
	os.Remove(stc)
	os.Symlink(filepath.Join(old, "bin", "switch-to-configuration"), stc)
	e.trust.add(ng, &e.trust.key, old)

	cases := []struct{ name, path, why string }{
		{"unsigned", unsigned, "no signature"},
		{"untrusted key", foreign, "untrusted keys (attacker-1)"},
		{"content-addressed", ca, "content-addressed"},
		{"symlink", link, "is a symlink"},
		{"regular file", file, "not a directory"},
		{"stc outside closure", stray, "outside the closure"},
		{"stc outside store", outside, "outside the store"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := hostActivate(e, "d-"+strings.ReplaceAll(tc.name, " ", "-"), tc.path)
			if hostverb.ExitCode(err) != hostverb.ExitInvalid || !strings.Contains(err.Error(), tc.why) {
				t.Fatalf("got %v, want invalid naming %q", err, tc.why)
			}
		})
	}
	if len(e.sw.Calls()) != 0 {
		t.Fatalf("a refused system was activated: %v", e.sw.Calls())
	}
	if _, err := os.Stat(e.o.StateDir); !os.IsNotExist(err) {
		t.Fatalf("a refused activation left state behind: %v", err)
	}
	if _, err := hostActivate(e, "d-ng", ng); err != nil {
		t.Fatalf("switch-to-configuration in a referenced path: %v", err)
	}
}

func hostActivate(e *env, id, path string) (*hostverb.Record, error) {
	r, err := host.Activate(context.Background(), e.o, e.req(id, hostverb.DryActivate, path))
	e.spawn.wg.Wait()
	return r, err
}
