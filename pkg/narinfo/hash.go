package narinfo

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// ErrHash is wrapped by every hash parsing error.
var ErrHash = errors.New("invalid hash")

// Hash is a digest with its algorithm name ("md5", "sha1", "sha256",
// "sha512"), the way Nix keeps them.
type Hash struct {
	Algo   string
	Digest []byte
}

// hashSizes are the digest sizes of the algorithms Nix knows.
var hashSizes = map[string]int{"md5": 16, "sha1": 20, "sha256": 32, "sha512": 64}

// ParseHash reads every prefixed form Nix accepts in a narinfo:
// "<algo>:<nix32>", "<algo>:<base16>" (either case), "<algo>:<base64>" and
// SRI "<algo>-<base64>". The encoding is told apart by length, as Nix does,
// so a digest of the wrong size is an error.
func ParseHash(s string) (Hash, error) {
	algo, rest, sri := s, "", false
	if i := strings.IndexByte(s, ':'); i >= 0 {
		algo, rest = s[:i], s[i+1:]
	} else if i := strings.IndexByte(s, '-'); i >= 0 {
		algo, rest, sri = s[:i], s[i+1:], true
	} else {
		return Hash{}, fmt.Errorf("%w %q: no algorithm prefix", ErrHash, s)
	}
	size, ok := hashSizes[algo]
	if !ok {
		return Hash{}, fmt.Errorf("%w %q: unknown algorithm %q", ErrHash, s, algo)
	}
	var d []byte
	var err error
	switch {
	case !sri && len(rest) == 2*size:
		d, err = hex.DecodeString(rest)
	case !sri && len(rest) == nixbase32.EncodedLen(size):
		d, err = nixbase32.DecodeString(rest)
	case !sri && len(rest) == base64.StdEncoding.EncodedLen(size):
		d, err = base64.StdEncoding.Strict().DecodeString(rest)
	case sri:
		enc := base64.StdEncoding
		if !strings.HasSuffix(rest, "=") {
			// Nix's decoder does not insist on padding in SRI strings.
			enc = base64.RawStdEncoding
		}
		d, err = enc.Strict().DecodeString(rest)
	default:
		return Hash{}, fmt.Errorf("%w %q: wrong length for %s", ErrHash, s, algo)
	}
	if err != nil {
		return Hash{}, fmt.Errorf("%w %q: %v", ErrHash, s, err)
	}
	if len(d) != size {
		return Hash{}, fmt.Errorf("%w %q: %d bytes, %s needs %d", ErrHash, s, len(d), algo, size)
	}
	return Hash{Algo: algo, Digest: d}, nil
}

// SHA256 wraps a sha256 digest, e.g. from sha256.Sum256 or nar.Hasher.
func SHA256(digest []byte) Hash {
	return Hash{Algo: "sha256", Digest: bytes.Clone(digest)}
}

// String renders "<algo>:<nix32>", the form Nix writes into narinfos and
// fingerprints.
func (h Hash) String() string {
	return h.Algo + ":" + nixbase32.EncodeToString(h.Digest)
}

// Base16 renders "<algo>:<hex>", the form the Nix database stores.
func (h Hash) Base16() string {
	return h.Algo + ":" + hex.EncodeToString(h.Digest)
}

// SRI renders "<algo>-<base64>", the form nix path-info --json prints.
func (h Hash) SRI() string {
	return h.Algo + "-" + base64.StdEncoding.EncodeToString(h.Digest)
}

// Equal reports whether both hashes have the same algorithm and digest.
func (h Hash) Equal(o Hash) bool {
	return h.Algo == o.Algo && bytes.Equal(h.Digest, o.Digest)
}

// IsZero reports whether h holds no digest.
func (h Hash) IsZero() bool { return h.Algo == "" && len(h.Digest) == 0 }

func (h Hash) valid() bool {
	size, ok := hashSizes[h.Algo]
	return ok && len(h.Digest) == size
}
