package plan

// ParseName splits a store path name (without its hash) into the package
// name and version as Nix's DrvName does (src/libstore/names.cc,
// DrvName::DrvName): the name is everything before the first '-' that is
// followed by a character other than an ASCII letter, the version the rest
// after that dash. "apache-httpd-2.0.48" is ("apache-httpd", "2.0.48");
// "python3.11-requests-2.31.0" is ("python3.11-requests", "2.31.0"); a
// name with no such dash has no version.
func ParseName(s string) (name, version string) {
	for i := 0; i+1 < len(s); i++ {
		if s[i] == '-' && !isAlpha(s[i+1]) {
			return s[:i], s[i+1:]
		}
	}
	return s, ""
}

// isAlpha is C's isalpha in the "C" locale Nix runs its parser in.
func isAlpha(c byte) bool { return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' }

// SplitOutput strips an output name the way `nix store diff-closures`
// does before parsing (src/nix/diff-closures.cc, getClosureInfo, the
// regex "(.*)-([a-z]+|lib32|lib64)"): a last dash-separated part of only
// lower-case letters, or lib32 or lib64, is the output ("openssl-3.0.14-bin"
// is ("openssl-3.0.14", "bin"), "linux-6.6.1-modules" is ("linux-6.6.1",
// "modules")). Nix says itself this is ambiguous (a version suffix such as
// "unstable" reads as an output); the diff groups as Nix does so its
// answers match.
func SplitOutput(s string) (base, output string) {
	i := -1
	for j := len(s) - 1; j >= 0; j-- {
		if s[j] == '-' {
			i = j
			break
		}
	}
	if i < 0 {
		return s, ""
	}
	suffix := s[i+1:]
	if suffix == "lib32" || suffix == "lib64" {
		return s[:i], suffix
	}
	if suffix == "" {
		return s, ""
	}
	for k := 0; k < len(suffix); k++ {
		if suffix[k] < 'a' || suffix[k] > 'z' {
			return s, ""
		}
	}
	return s[:i], suffix
}

// Package is the (name, version) a store path name is grouped under in a
// closure diff: SplitOutput, then ParseName.
func Package(storeName string) (name, version string) {
	base, _ := SplitOutput(storeName)
	return ParseName(base)
}
