package genmetrics_test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/bos55/concordia/internal/genmetrics"
	"github.com/bos55/concordia/internal/host"
)

// layout is a host's generation state in a temp dir, the way NixOS lays it
// out: system-N-link generations, the system profile, /run links.
type layout struct {
	t    *testing.T
	dir  string
	opts host.Options
}

func newLayout(t *testing.T) *layout {
	d := t.TempDir()
	for _, sub := range []string{"profiles", "run", "store"} {
		if err := os.MkdirAll(filepath.Join(d, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return &layout{t: t, dir: d, opts: host.Options{
		StateDir:      filepath.Join(d, "run", "concordia"),
		StoreDir:      filepath.Join(d, "store"),
		Profile:       filepath.Join(d, "profiles", "system"),
		CurrentSystem: filepath.Join(d, "run", "current-system"),
		BootedSystem:  filepath.Join(d, "run", "booted-system"),
		BootDir:       filepath.Join(d, "boot"), // no loader: the profile is the boot default
		NixOSRunDir:   filepath.Join(d, "run", "nixos"),
	}}
}

// system makes a fake system with the given kernel and version.
func (l *layout) system(name, kernel, version string) string {
	p := filepath.Join(l.dir, "store", "00000000000000000000000000000000-nixos-system-"+name)
	if err := os.MkdirAll(p, 0o755); err != nil {
		l.t.Fatal(err)
	}
	for f, c := range map[string]string{"kernel": kernel, "initrd": "initrd", "nixos-version": version + "\n"} {
		if err := os.WriteFile(filepath.Join(p, f), []byte(c), 0o644); err != nil {
			l.t.Fatal(err)
		}
	}
	return p
}

func (l *layout) link(link, target string) {
	_ = os.Remove(link)
	if err := os.Symlink(target, link); err != nil {
		l.t.Fatal(err)
	}
}

func (l *layout) generation(n int, system string) {
	name := "system-" + itoa(n) + "-link"
	l.link(filepath.Join(l.dir, "profiles", name), system)
	l.link(l.opts.Profile, name)
}

func itoa(n int) string { return strconv.Itoa(n) }

func (l *layout) expect(want string) {
	l.t.Helper()
	reg := genmetrics.Registry(l.opts)
	names := []string{"nixos_current_generation", "nixos_boot_generation", "nixos_booted_generation",
		"nixos_test_deployment_active", "nixos_reboot_required", "nixos_generation_metrics_up"}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), names...); err != nil {
		l.t.Error(err)
	}
}

const header = `# HELP nixos_boot_generation Generation number of the system the boot loader starts next: its default entry where it can be read (source systemd-boot or grub), else the system profile (source profile).
# TYPE nixos_boot_generation gauge
# HELP nixos_booted_generation Generation number of the system that was booted (/run/booted-system); 0 when it is no longer a generation.
# TYPE nixos_booted_generation gauge
# HELP nixos_current_generation Generation number of the running system (/run/current-system); 0 when it is no generation of the system profile, as during a test deployment.
# TYPE nixos_current_generation gauge
# HELP nixos_generation_metrics_up 1 when the generation state could be read.
# TYPE nixos_generation_metrics_up gauge
# HELP nixos_reboot_required 1 when the boot default or the running system has another kernel or kernel modules than the booted one.
# TYPE nixos_reboot_required gauge
# HELP nixos_test_deployment_active 1 when the running system is not the boot default (a ` + "`test`" + ` deployment, reverted by a reboot).
# TYPE nixos_test_deployment_active gauge
`

func values(cur, boot, booted, test, reboot int) string {
	return header + "nixos_boot_generation{source=\"profile\"} " + itoa(boot) + "\nnixos_booted_generation " + itoa(booted) +
		"\nnixos_current_generation " + itoa(cur) + "\nnixos_generation_metrics_up 1\nnixos_reboot_required " + itoa(reboot) +
		"\nnixos_test_deployment_active " + itoa(test) + "\n"
}

// TestLifecycle walks a host through boot, switch, test, boot-mode deploy
// of a new kernel and reboot, checking the figures after each step.
func TestLifecycle(t *testing.T) {
	l := newLayout(t)
	a := l.system("a", "k1", "24.05.1")
	b := l.system("b", "k1", "24.05.2")
	c := l.system("c", "k1", "24.05.3-test")
	d := l.system("d", "k2", "24.11.1")

	// Booted into generation 1.
	l.generation(1, a)
	l.link(l.opts.CurrentSystem, a)
	l.link(l.opts.BootedSystem, a)
	l.expect(values(1, 1, 1, 0, 0))

	// switch to b (same kernel): no reboot needed.
	l.generation(2, b)
	l.link(l.opts.CurrentSystem, b)
	l.expect(values(2, 2, 1, 0, 0))

	// test c: running c, profile still b.
	l.link(l.opts.CurrentSystem, c)
	l.expect(values(0, 2, 1, 1, 0))

	// boot d with a new kernel: the boot default changes, the running one
	// (still c) does not, a reboot is pending.
	l.generation(3, d)
	l.expect(values(0, 3, 1, 1, 1))

	// reboot: d runs and was booted.
	l.link(l.opts.CurrentSystem, d)
	l.link(l.opts.BootedSystem, d)
	l.expect(values(3, 3, 3, 0, 0))

	// the info metric carries the running system's version.
	reg := genmetrics.Registry(l.opts)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, mf := range mfs {
		if mf.GetName() != "nixos_system_info" {
			continue
		}
		for _, lp := range mf.GetMetric()[0].GetLabel() {
			if lp.GetName() == "version" && lp.GetValue() == "24.11.1" {
				found = true
			}
		}
	}
	if !found {
		t.Error("nixos_system_info has no version=\"24.11.1\" label")
	}
}

// TestTextfile writes the node-exporter textfile and reads it back.
func TestTextfile(t *testing.T) {
	l := newLayout(t)
	a := l.system("a", "k1", "24.05.1")
	l.generation(1, a)
	l.link(l.opts.CurrentSystem, a)
	l.link(l.opts.BootedSystem, a)
	out := filepath.Join(t.TempDir(), "nixos.prom")
	if err := genmetrics.WriteTextfile(out, l.opts); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"nixos_current_generation 1\n", "nixos_config_age_seconds ", `nixos_system_info{boot_default="` + a} {
		if !strings.Contains(string(b), want) {
			t.Errorf("textfile lacks %q:\n%s", want, b)
		}
	}
}

// TestUnreadable: a broken profile reports up=0 instead of failing the scrape.
func TestUnreadable(t *testing.T) {
	l := newLayout(t)
	if err := os.WriteFile(l.opts.Profile, []byte("not a link"), 0o644); err != nil {
		t.Fatal(err)
	}
	reg := genmetrics.Registry(l.opts)
	if n, err := testutil.GatherAndCount(reg); err != nil || n == 0 {
		t.Fatalf("gather: %d metrics, %v", n, err)
	}
}

// The boot generation is the loader's default where it can be read (it can
// differ from the profile: an entry picked by hand, a boot loader that was
// not updated), the profile only as a fallback; the label says which.
func TestBootGenerationFromTheLoader(t *testing.T) {
	l := newLayout(t)
	a := l.system("a", "k1", "24.05.1")
	b := l.system("b", "k1", "24.05.2")
	l.generation(1, a)
	l.generation(2, b)
	l.link(l.opts.CurrentSystem, b)
	l.link(l.opts.BootedSystem, b)
	gather := func() string {
		var out strings.Builder
		mfs, err := genmetrics.Registry(l.opts).Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == "nixos_boot_generation" {
				for _, m := range mf.GetMetric() {
					out.WriteString(m.GetLabel()[0].GetValue() + " " + strconv.Itoa(int(m.GetGauge().GetValue())))
				}
			}
		}
		return out.String()
	}
	if got := gather(); got != "profile 2" {
		t.Fatalf("no loader: %q", got)
	}
	os.MkdirAll(filepath.Join(l.opts.BootDir, "loader"), 0o755)
	os.WriteFile(filepath.Join(l.opts.BootDir, "loader", "loader.conf"), []byte("timeout 3\ndefault nixos-generation-1.conf\n"), 0o644)
	if got := gather(); got != "systemd-boot 1" {
		t.Fatalf("systemd-boot: %q", got)
	}
	os.RemoveAll(filepath.Join(l.opts.BootDir, "loader"))
	os.MkdirAll(filepath.Join(l.opts.BootDir, "grub"), 0o755)
	grub := "set default=0\nmenuentry \"NixOS - Default\" {\n  linux /nix/store/x-linux/bzImage init=" + a + "/init loglevel=4\n}\n"
	os.WriteFile(filepath.Join(l.opts.BootDir, "grub", "grub.cfg"), []byte(grub), 0o644)
	if got := gather(); got != "grub 1" {
		t.Fatalf("grub: %q", got)
	}
}
