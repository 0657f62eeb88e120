package gate_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/bos55/concordia/internal/gate"
)

const (
	self = "/opt/concordia/bin/deployer"
	sudo = "/usr/bin/sudo"
	p    = "/nix/store/0c6k4b8x2yv3z5w7q9r1s2t3u4v5w6x7-nixos-system-a"
)

func TestParse(t *testing.T) {
	allowed := []struct {
		cmd  string
		want []string
	}{
		{"deployer fetch " + p, []string{self, "fetch", p}},
		{self + " fetch " + p, []string{self, "fetch", p}},
		{"deployer  status --local --json", []string{self, "status", "--local", "--json"}},
		{"sudo -n " + self + " activate --mode switch --id d-1 --confirm-timeout 30s " + p,
			[]string{sudo, "-n", self, "activate", "--mode", "switch", "--id", "d-1", "--confirm-timeout", "30s", p}},
		{"sudo -n deployer confirm --id d-1", []string{sudo, "-n", self, "confirm", "--id", "d-1"}},
		{"sudo -n " + self + " wait --id d-1 --timeout 5m", []string{sudo, "-n", self, "wait", "--id", "d-1", "--timeout", "5m"}},
		{"sudo -n " + self + " status --local", []string{sudo, "-n", self, "status", "--local"}},
		{"sudo -n " + self + " rollback --local", []string{sudo, "-n", self, "rollback", "--local"}},
		{"sudo -n " + self + " activate --magic-rollback=false " + p, []string{sudo, "-n", self, "activate", "--magic-rollback=false", p}},
	}
	for _, tc := range allowed {
		t.Run("allow "+tc.cmd, func(t *testing.T) {
			got, err := gate.Parse(tc.cmd, self, sudo)
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("argv %q, want %q", got, tc.want)
			}
		})
	}
	refused := []string{
		"",
		"sh",
		"/bin/sh -c id",
		"bash",
		"deployer",
		"deployer push --on all",
		"deployer gate",
		"deployer watchdog --id x",
		"deployer activate --mode switch " + p, // host verbs as root only through sudo
		"deployer status",                      // status without --local would ssh onwards
		"sudo -n /bin/sh",
		"sudo /bin/sh",
		"sudo " + self + " activate " + p, // without -n
		"sudo -n " + self + " fetch " + p,
		"sudo -n " + self + " gate",
		"sudo -n /tmp/evil/deployer activate " + p,
		"sudo -n -u root " + self + " activate " + p,
		"deployer fetch " + p + "; sh",
		"deployer fetch " + p + " && id",
		"deployer fetch " + p + " | sh",
		"deployer fetch $(id)",
		"deployer fetch `id`",
		"deployer fetch '" + p + "'",
		"deployer fetch \"" + p + "\"",
		"deployer fetch /nix/store/*",
		"deployer fetch /nix/store/?",
		"deployer fetch " + p + " > /etc/passwd",
		"deployer fetch < /etc/shadow",
		"deployer fetch " + p + "\nsh",
		"deployer fetch \\" + p,
		"deployer fetch ~root",
		"deployer\tfetch " + p,
		"deployer fetch " + p + " &",
		"deployer fetch {a,b}",
		"deployer fetch a#b",
		"deployer fetch !1",
		"deployer fetch %s",
	}
	for _, cmd := range refused {
		t.Run("refuse "+cmd, func(t *testing.T) {
			got, err := gate.Parse(cmd, self, sudo)
			if !errors.Is(err, gate.ErrRefused) {
				t.Fatalf("allowed as %q (err %v)", got, err)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	f.Add("deployer fetch " + p)
	f.Add("sudo -n " + self + " activate --mode switch --id x " + p)
	f.Add("sh -c 'id'")
	f.Fuzz(func(t *testing.T, cmd string) {
		argv, err := gate.Parse(cmd, self, sudo)
		if err != nil {
			return
		}
		if argv[0] != self && argv[0] != sudo {
			t.Fatalf("runs %q", argv[0])
		}
		if argv[0] == sudo && (argv[1] != "-n" || argv[2] != self) {
			t.Fatalf("sudo runs %q", argv)
		}
		for _, a := range argv {
			for _, c := range a {
				if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '/' || c == '.' || c == '_' || c == '=' || c == ':' || c == ',' || c == '@' || c == '+' || c == '-') {
					t.Fatalf("argument %q has %q", a, c)
				}
			}
		}
	})
}

func TestParseLinkToSelf(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "real-deployer")
	os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755)
	link := filepath.Join(dir, "deployer-link")
	if err := os.Symlink(bin, link); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(dir, "other")
	os.WriteFile(other, []byte("#!/bin/sh\n"), 0o755)
	got, err := gate.Parse("sudo -n "+link+" confirm --id x", bin, sudo)
	if err != nil || !slices.Equal(got, []string{sudo, "-n", bin, "confirm", "--id", "x"}) {
		t.Fatalf("link to self: %q %v", got, err)
	}
	if _, err := gate.Parse("sudo -n "+other+" confirm --id x", bin, sudo); !errors.Is(err, gate.ErrRefused) {
		t.Fatalf("other binary allowed: %v", err)
	}
}
