package narinfo

import (
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"strings"

	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// ContentAddressed reports whether CA, together with References, yields
// exactly StorePath, following Nix 2.8's ValidPathInfo::isContentAddressed.
// Nix trusts such a path without any signature, even with require-sigs: the
// store path itself commits to the content, which Nix checks on import. So
// a cache or deployer asking "would a client accept this path?" must treat
// a true result like a valid signature.
func (n *NarInfo) ContentAddressed() bool {
	if n.CA == "" {
		return false
	}
	storeDir, _, name, err := ParseStorePath(n.StorePath)
	if err != nil {
		return false
	}
	method, rest, _ := strings.Cut(n.CA, ":")
	h, err := ParseHash(strings.TrimPrefix(rest, "r:"))
	if err != nil {
		return false
	}
	var refs []string
	self := false
	for _, r := range n.References {
		p := storeDir + "/" + r
		if p == n.StorePath && method == "fixed" {
			self = true
			continue
		}
		refs = append(refs, p)
	}
	slices.Sort(refs)
	var want string
	switch {
	case method == "text" && h.Algo == "sha256":
		want = makeStorePath(storeDir, makeType("text", refs, false), h.Base16(), name)
	case method == "fixed" && strings.HasPrefix(rest, "r:") && h.Algo == "sha256":
		want = makeStorePath(storeDir, makeType("source", refs, self), h.Base16(), name)
	case method == "fixed" && len(refs) == 0:
		prefix := ""
		if strings.HasPrefix(rest, "r:") {
			prefix = "r:"
		}
		inner := sha256.Sum256([]byte("fixed:out:" + prefix + h.Base16() + ":"))
		want = makeStorePath(storeDir, "output:out", "sha256:"+hex.EncodeToString(inner[:]), name)
	default:
		return false
	}
	return want == n.StorePath
}

// makeType is Nix's makeType: the type string with the sorted reference
// paths and ":self" appended.
func makeType(typ string, refs []string, self bool) string {
	for _, r := range refs {
		typ += ":" + r
	}
	if self {
		typ += ":self"
	}
	return typ
}

// makeStorePath is Nix's makeStorePath: sha256 over
// "<type>:<algo>:<base16 hash>:<store dir>:<name>", folded to 20 bytes.
func makeStorePath(storeDir, typ, hash16, name string) string {
	sum := sha256.Sum256([]byte(typ + ":" + hash16 + ":" + storeDir + ":" + name))
	var folded [20]byte
	for i, b := range sum {
		folded[i%20] ^= b
	}
	return storeDir + "/" + nixbase32.EncodeToString(folded[:]) + "-" + name
}
