package plan_test

import (
	"crypto/sha256"
	"strings"
	"testing"

	"github.com/bos55/concordia/internal/plan"
	"github.com/bos55/concordia/pkg/narinfo"
)

const nix32 = "0123456789abcdfghijklmnpqrsvwxyz"

// sp makes a valid store path for a name, its hash from key (so two paths
// of one name can differ).
func sp(key, name string) string {
	sum := sha256.Sum256([]byte(key + "/" + name))
	var b strings.Builder
	for i := 0; i < 32; i++ {
		b.WriteByte(nix32[int(sum[i])%32])
	}
	return "/nix/store/" + b.String() + "-" + name
}

func closureOf(paths map[string]uint64) plan.Closure {
	c := plan.Closure{}
	for p, size := range paths {
		c[p] = &narinfo.NarInfo{StorePath: p, NarSize: size, FileSize: size / 2}
	}
	return c
}

func TestCompare(t *testing.T) {
	glibc := sp("a", "glibc-2.39-52")
	kernel := sp("a", "linux-6.1.0")
	cur := closureOf(map[string]uint64{
		sp("a", "nixos-system-web1-24.05.1"): 1000,
		sp("a", "openssl-3.0.14"):            40000,
		sp("a", "openssl-3.0.14-bin"):        2000,
		glibc:                                100000,
		sp("a", "old-tool-1.0"):              500,
		kernel:                               9000,
		sp("a", "linux-6.1.0-modules"):       3000,
		sp("a", "initrd-linux-6.1.0"):        7000,
	})
	next := closureOf(map[string]uint64{
		sp("b", "nixos-system-web1-24.05.2"): 1000,
		sp("b", "openssl-3.0.15"):            41000,
		sp("b", "openssl-3.0.15-bin"):        2000,
		glibc:                                100000,
		sp("b", "hello-2.12"):                3000,
		kernel:                               9000,
		sp("a", "linux-6.1.0-modules"):       3000,
		sp("b", "initrd-linux-6.1.0"):        7100,
	})
	next[sp("b", "hello-2.12")].FileSize = 0 // no FileSize: counted as its NarSize
	d := plan.Compare(cur, next)
	if d.PathsAdded != 5 || d.PathsRemoved != 5 {
		t.Errorf("+%d -%d paths, want +5 -5", d.PathsAdded, d.PathsRemoved)
	}
	if want := int64(1000/2 + 41000/2 + 2000/2 + 3000 + 7100/2); d.DownloadBytes != want {
		t.Errorf("download %d, want %d", d.DownloadBytes, want)
	}
	if want := int64(1000 + 41000 + 2000 + 3000 + 7100); d.DownloadNarBytes != want {
		t.Errorf("download unpacked %d, want %d", d.DownloadNarBytes, want)
	}
	if want := int64(1000 + 3000 + 100 - 500); d.NarSizeDelta != want {
		t.Errorf("size delta %d, want %d", d.NarSizeDelta, want)
	}
	var got []string
	for _, c := range d.Changes {
		got = append(got, c.Kind+" "+c.Name+" "+strings.Join(c.Before, ",")+">"+strings.Join(c.After, ","))
	}
	want := []string{
		"added hello >2.12",
		"rebuilt initrd-linux >",
		"version nixos-system-web1 24.05.1>24.05.2",
		"removed old-tool 1.0>",
		"version openssl 3.0.14>3.0.15",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("changes:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, c := range d.Changes {
		if c.Name == "openssl" && c.NarSizeDelta != 1000 {
			t.Errorf("openssl size delta %d (its two outputs together)", c.NarSizeDelta)
		}
	}
	// The kernel: one name "linux" for the kernel and its modules, as
	// diff-closures groups them.
	bump := closureOf(map[string]uint64{sp("c", "linux-6.6.1"): 9000, sp("c", "linux-6.6.1-modules"): 3000})
	d = plan.Compare(closureOf(map[string]uint64{kernel: 9000, sp("a", "linux-6.1.0-modules"): 3000}), bump)
	if len(d.Changes) != 1 || d.Changes[0].Name != "linux" || d.Changes[0].Kind != plan.KindVersion ||
		strings.Join(d.Changes[0].Before, ",") != "6.1.0" || strings.Join(d.Changes[0].After, ",") != "6.6.1" {
		t.Errorf("kernel bump: %+v", d.Changes)
	}
	// The same closure: nothing.
	if d := plan.Compare(cur, cur); d.PathsAdded != 0 || d.PathsRemoved != 0 || len(d.Changes) != 0 || d.DownloadBytes != 0 {
		t.Errorf("same closure: %+v", d)
	}
}

func TestBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536: "1.5 KiB", 5 << 20: "5.0 MiB", 3 << 30: "3.0 GiB"} {
		if got := plan.Bytes(n); got != want {
			t.Errorf("Bytes(%d) = %q, want %q", n, got, want)
		}
	}
}
