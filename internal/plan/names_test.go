package plan_test

import (
	"testing"

	"github.com/bos55/concordia/internal/plan"
)

func TestParseName(t *testing.T) {
	for _, tc := range []struct{ in, name, version string }{
		{"openssl-3.0.14", "openssl", "3.0.14"},
		{"hello-2.12", "hello", "2.12"},
		{"apache-httpd-2.0.48", "apache-httpd", "2.0.48"},
		{"python3.11-requests-2.31.0", "python3.11-requests", "2.31.0"},
		{"linux-6.6.1-modules", "linux", "6.6.1-modules"},
		{"nixos-system-web1-24.05.20240101.abcdef", "nixos-system-web1", "24.05.20240101.abcdef"},
		{"nixos-system-web1-24.05pre-git", "nixos-system-web1", "24.05pre-git"},
		{"initrd-linux-6.6.1", "initrd-linux", "6.6.1"},
		{"glibc", "glibc", ""},
		{"etc", "etc", ""},
		{"unit-script-foo-start", "unit-script-foo-start", ""},
		{"foo-", "foo-", ""},
		{"-1", "", "1"},
		{"x--1", "x", "-1"}, // a dash is no letter
		{"perl5.38.2-Config-IniFiles-3.000003", "perl5.38.2-Config-IniFiles", "3.000003"},
		{"source", "source", ""},
		{"font-ä-1", "font", "ä-1"}, // a byte that is no ASCII letter starts the version, as in Nix's C locale
	} {
		name, version := plan.ParseName(tc.in)
		if name != tc.name || version != tc.version {
			t.Errorf("ParseName(%q) = %q, %q; want %q, %q", tc.in, name, version, tc.name, tc.version)
		}
	}
}

func TestPackage(t *testing.T) {
	for _, tc := range []struct{ in, name, version, output string }{
		{"openssl-3.0.14", "openssl", "3.0.14", ""},
		{"openssl-3.0.14-bin", "openssl", "3.0.14", "bin"},
		{"openssl-3.0.14-dev", "openssl", "3.0.14", "dev"},
		{"linux-6.6.1-modules", "linux", "6.6.1", "modules"},
		{"gcc-13.2.0-lib", "gcc", "13.2.0", "lib"},
		{"glibc-2.39-52-lib64", "glibc", "2.39-52", "lib64"},
		{"python3.11-requests-2.31.0", "python3.11-requests", "2.31.0", ""},
		{"nixos-system-web1-24.05.20240101.abcdef", "nixos-system-web1", "24.05.20240101.abcdef", ""},
		// Ambiguous, as Nix says: a lower-case last part is an output.
		{"foo-1.0-unstable", "foo", "1.0", "unstable"},
		{"hello", "hello", "", ""},
		{"system-units", "system", "", "units"},
		{"x-Bin", "x-Bin", "", ""},
	} {
		base, output := plan.SplitOutput(tc.in)
		name, version := plan.Package(tc.in)
		if name != tc.name || version != tc.version || output != tc.output {
			t.Errorf("%q: package %q %q, output %q (base %q); want %q %q, %q", tc.in, name, version, output, base, tc.name, tc.version, tc.output)
		}
	}
}
