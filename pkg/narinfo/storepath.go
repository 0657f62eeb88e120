package narinfo

import (
	"errors"
	"fmt"
	"path"
	"strings"

	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// ErrStorePath is wrapped by every store path validation error.
var ErrStorePath = errors.New("invalid store path")

const (
	// HashPartLen is the length of the nix32 hash that starts a store path
	// base name.
	HashPartLen = 32
	// MaxNameLen is the longest name Nix allows after "<hash>-".
	MaxNameLen = 211
)

// ParseStorePath splits a full store path such as
// "/nix/store/<hash>-<name>" into its store directory, hash part and name,
// with the checks Nix applies to base names. The store directory must be an
// absolute, clean path other than "/", since it is glued back with "/" in
// fingerprints.
func ParseStorePath(p string) (storeDir, hashPart, name string, err error) {
	i := strings.LastIndexByte(p, '/')
	if i <= 0 {
		return "", "", "", fmt.Errorf("%w %q: not an absolute path below a store directory", ErrStorePath, p)
	}
	storeDir = p[:i]
	if storeDir[0] != '/' || path.Clean(storeDir) != storeDir {
		return "", "", "", fmt.Errorf("%w %q: store directory is not a clean absolute path", ErrStorePath, p)
	}
	hashPart, name, err = ParseBaseName(p[i+1:])
	if err != nil {
		return "", "", "", err
	}
	return storeDir, hashPart, name, nil
}

// ParseBaseName checks a store path base name "<32 nix32 chars>-<name>", as
// found in References and Deriver lines, and splits it. The name follows
// Nix's checkName (libstore path.cc, as in Lix): 1 to 211 characters of
// [A-Za-z0-9+-._?=], and not ".", "..", nor starting with ".-" or "..-",
// which would name the store directory or its parent. (Leading periods are
// otherwise allowed, as Nix allows them since 2.4.)
func ParseBaseName(base string) (hashPart, name string, err error) {
	if len(base) < HashPartLen+2 || base[HashPartLen] != '-' {
		return "", "", fmt.Errorf("%w %q: want <32-char hash>-<name>", ErrStorePath, base)
	}
	hashPart, name = base[:HashPartLen], base[HashPartLen+1:]
	if !ValidHashPart(hashPart) {
		return "", "", fmt.Errorf("%w %q: hash part is not nix32", ErrStorePath, base)
	}
	if len(name) > MaxNameLen {
		return "", "", fmt.Errorf("%w %q: name longer than %d characters", ErrStorePath, base, MaxNameLen)
	}
	for i := 0; i < len(name); i++ {
		if !nameChar(name[i]) {
			return "", "", fmt.Errorf("%w %q: illegal character %q in name", ErrStorePath, base, name[i])
		}
	}
	if name == "." || name == ".." || strings.HasPrefix(name, ".-") || strings.HasPrefix(name, "..-") {
		return "", "", fmt.Errorf("%w %q: name %q would name the store directory or its parent", ErrStorePath, base, name)
	}
	return hashPart, name, nil
}

// ParseDerivation checks the base name of a derivation, "<hash>-<name>.drv"
// (build logs and realisations are keyed by it).
func ParseDerivation(base string) (hashPart, name string, err error) {
	hashPart, name, err = ParseBaseName(base)
	if err != nil {
		return "", "", err
	}
	if !strings.HasSuffix(name, ".drv") || name == ".drv" {
		return "", "", fmt.Errorf("%w %q: not a derivation (.drv)", ErrStorePath, base)
	}
	return hashPart, name, nil
}

// ValidHashPart reports whether s is a 32-character nix32 string, the shape
// of a store path's hash part and of a narinfo request "<hash>.narinfo".
func ValidHashPart(s string) bool {
	if len(s) != HashPartLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !nixbase32.Is(s[i]) {
			return false
		}
	}
	return true
}

func nameChar(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '+' || c == '-' || c == '.' || c == '_' || c == '?' || c == '='
}

// HashPartOf is the hash part of a store path or base name already known
// to be valid (a record's, a checked narinfo's): its first HashPartLen
// characters, or the whole base name when shorter. Unchecked input goes
// through ParseStorePath or ParseBaseName instead.
func HashPartOf(pathOrBase string) string {
	base := pathOrBase[strings.LastIndexByte(pathOrBase, '/')+1:]
	if len(base) < HashPartLen {
		return base
	}
	return base[:HashPartLen]
}
