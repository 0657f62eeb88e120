package narinfo

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
)

// ErrKey is wrapped by every key parsing error.
var ErrKey = errors.New("invalid key")

// maxKeyFile caps what LoadSecretKeyFile and LoadPublicKeyFile read; a key
// line is under 200 bytes.
const maxKeyFile = 64 << 10

// SecretKey is a named ed25519 signing key.
type SecretKey struct {
	name string
	key  ed25519.PrivateKey
}

// PublicKey is a named ed25519 verification key.
type PublicKey struct {
	name string
	key  ed25519.PublicKey
}

// GenerateKey makes a new key pair from crypto/rand, the equivalent of
// nix-store --generate-binary-cache-key. name conventionally looks like
// "cache.example.org-1", so a key can be rotated under a new name.
func GenerateKey(name string) (SecretKey, PublicKey, error) {
	if err := checkKeyName(name); err != nil {
		return SecretKey{}, PublicKey{}, err
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return SecretKey{}, PublicKey{}, fmt.Errorf("generate key %s: %w", name, err)
	}
	return SecretKey{name, priv}, PublicKey{name, pub}, nil
}

// checkKeyName rejects names Nix would misparse (empty, or with the ':' that
// separates name and key) and names that could not survive a "Sig:" line or
// a space-separated trusted-public-keys list.
func checkKeyName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: empty key name", ErrKey)
	}
	for _, c := range []byte(name) {
		if c == ':' || c <= ' ' || c == 0x7f {
			return fmt.Errorf("%w: key name %q contains %q", ErrKey, name, c)
		}
	}
	return nil
}

// parseKey splits "name:base64" and decodes the key bytes. Surrounding
// whitespace (a trailing newline in a file) is ignored.
func parseKey(s string, size int, what string) (string, []byte, error) {
	s = strings.TrimSpace(s)
	name, b64, ok := strings.Cut(s, ":")
	if !ok {
		return "", nil, fmt.Errorf("%w: %s key is not <name>:<base64>", ErrKey, what)
	}
	if err := checkKeyName(name); err != nil {
		return "", nil, err
	}
	key, err := base64.StdEncoding.Strict().DecodeString(b64)
	if err != nil {
		return "", nil, fmt.Errorf("%w: %s key %s: bad base64: %v", ErrKey, what, name, err)
	}
	if len(key) != size {
		return "", nil, fmt.Errorf("%w: %s key %s has %d bytes, want %d", ErrKey, what, name, len(key), size)
	}
	return name, key, nil
}

// ParseSecretKey reads Nix's secret key format "name:base64(seed||public)".
// Unlike Nix it also checks that the public half belongs to the seed: a key
// that fails this would only ever make signatures nobody can verify.
func ParseSecretKey(s string) (SecretKey, error) {
	name, key, err := parseKey(s, ed25519.PrivateKeySize, "secret")
	if err != nil {
		return SecretKey{}, err
	}
	priv := ed25519.PrivateKey(key)
	derived := ed25519.NewKeyFromSeed(priv.Seed())
	if !bytes.Equal(derived[ed25519.SeedSize:], key[ed25519.SeedSize:]) {
		return SecretKey{}, fmt.Errorf("%w: secret key %s: public half does not match the seed", ErrKey, name)
	}
	return SecretKey{name, priv}, nil
}

// ParsePublicKey reads Nix's public key format "name:base64(public)".
func ParsePublicKey(s string) (PublicKey, error) {
	name, key, err := parseKey(s, ed25519.PublicKeySize, "public")
	if err != nil {
		return PublicKey{}, err
	}
	return PublicKey{name, ed25519.PublicKey(key)}, nil
}

// ParsePublicKeys reads a whitespace-separated list of public keys, the shape
// of Nix's trusted-public-keys setting.
func ParsePublicKeys(s string) ([]PublicKey, error) {
	var keys []PublicKey
	for _, f := range strings.Fields(s) {
		k, err := ParsePublicKey(f)
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// LoadSecretKeyFile reads a secret key file such as one written by
// nix-store --generate-binary-cache-key or "cache keygen".
func LoadSecretKeyFile(path string) (SecretKey, error) {
	s, err := readKeyFile(path)
	if err != nil {
		return SecretKey{}, err
	}
	k, err := ParseSecretKey(s)
	if err != nil {
		return SecretKey{}, fmt.Errorf("load %s: %w", path, err)
	}
	return k, nil
}

// LoadPublicKeyFile reads a public key file.
func LoadPublicKeyFile(path string) (PublicKey, error) {
	s, err := readKeyFile(path)
	if err != nil {
		return PublicKey{}, err
	}
	k, err := ParsePublicKey(s)
	if err != nil {
		return PublicKey{}, fmt.Errorf("load %s: %w", path, err)
	}
	return k, nil
}

func readKeyFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("load key: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return "", fmt.Errorf("load key %s: %w", path, err)
	}
	if len(b) > maxKeyFile {
		return "", fmt.Errorf("load %s: %w: file larger than %d bytes", path, ErrKey, maxKeyFile)
	}
	return string(b), nil
}

// Name returns the key's name.
func (k SecretKey) Name() string { return k.name }

// Public returns the matching public key.
func (k SecretKey) Public() PublicKey {
	return PublicKey{k.name, k.key.Public().(ed25519.PublicKey)}
}

// String renders the key in Nix's file format, without a trailing newline
// (nix-store --generate-binary-cache-key writes none either). It is the
// secret itself: never log it.
func (k SecretKey) String() string {
	return k.name + ":" + base64.StdEncoding.EncodeToString(k.key)
}

// Name returns the key's name.
func (k PublicKey) Name() string { return k.name }

// String renders the key as Nix's trusted-public-keys expects it.
func (k PublicKey) String() string {
	return k.name + ":" + base64.StdEncoding.EncodeToString(k.key)
}

// Sign signs a fingerprint and returns "name:base64(signature)". ed25519 is
// deterministic, so this equals what Nix produces with the same key. Like
// ed25519.Sign it panics on the zero SecretKey: keys come from GenerateKey or
// the parsers.
func (k SecretKey) Sign(fingerprint string) string {
	return k.name + ":" + base64.StdEncoding.EncodeToString(ed25519.Sign(k.key, []byte(fingerprint)))
}

// Verify reports whether sig ("name:base64") is this key's valid signature
// of fingerprint. A signature under another key name is not.
func (k PublicKey) Verify(fingerprint, sig string) bool {
	name, b64, ok := strings.Cut(sig, ":")
	if !ok || name != k.name || len(k.key) != ed25519.PublicKeySize {
		return false
	}
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(raw) != ed25519.SignatureSize {
		return false
	}
	return ed25519.Verify(k.key, []byte(fingerprint), raw)
}

// Fingerprint is the string Nix signs for a store path:
// "1;<store path>;<nar hash as algo:nix32>;<nar size>;<references>", the
// references being full paths, sorted and joined by ",". It does not check
// its inputs.
func Fingerprint(storePath string, narHash Hash, narSize uint64, refs []string) string {
	refs = slices.Clone(refs)
	slices.Sort(refs)
	refs = slices.Compact(refs)
	var b strings.Builder
	b.Grow(len(storePath) + 80 + len(refs)*(len(storePath)+1))
	b.WriteString("1;")
	b.WriteString(storePath)
	b.WriteByte(';')
	b.WriteString(narHash.String())
	b.WriteByte(';')
	b.WriteString(strconv.FormatUint(narSize, 10))
	b.WriteByte(';')
	b.WriteString(strings.Join(refs, ","))
	return b.String()
}

// Fingerprint returns the narinfo's fingerprint, the references expanded
// with StorePath's store directory.
func (n *NarInfo) Fingerprint() string {
	dir := n.StoreDir()
	refs := make([]string, len(n.References))
	for i, r := range n.References {
		refs[i] = dir + "/" + r
	}
	return Fingerprint(n.StorePath, n.NarHash, n.NarSize, refs)
}

// Sign adds one signature per key, replacing any signature already made under
// the same key name (a key name maps to one key, so an older signature under
// it is stale). Sigs stays sorted.
func (n *NarInfo) Sign(keys ...SecretKey) {
	if len(keys) == 0 {
		return
	}
	fp := n.Fingerprint()
	for _, k := range keys {
		prefix := k.name + ":"
		n.Sigs = slices.DeleteFunc(n.Sigs, func(s string) bool { return strings.HasPrefix(s, prefix) })
		n.Sigs = append(n.Sigs, k.Sign(fp))
	}
	slices.Sort(n.Sigs)
	n.Sigs = slices.Compact(n.Sigs)
}

// Verify reports whether any Sig is a valid signature by one of the trusted
// keys, looked up by key name as Nix does, and which key made it.
func (n *NarInfo) Verify(trusted []PublicKey) (keyName string, ok bool) {
	if len(trusted) == 0 || len(n.Sigs) == 0 {
		return "", false
	}
	fp := n.Fingerprint()
	for _, sig := range n.Sigs {
		name, _, _ := strings.Cut(sig, ":")
		for _, k := range trusted {
			if k.name == name && k.Verify(fp, sig) {
				return name, true
			}
		}
	}
	return "", false
}
