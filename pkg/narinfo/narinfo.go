package narinfo

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
)

// ErrInvalid is wrapped by every error Parse returns for a malformed
// document (Nix calls these "corrupt").
var ErrInvalid = errors.New("invalid narinfo")

const (
	// MaxSize caps the bytes Parse reads: real narinfos are a few hundred
	// bytes, and the reader must not be an unbounded allocation for a peer.
	MaxSize = 1 << 20
	// MaxReferences caps the References line.
	MaxReferences = 100_000
	// DefaultCompression is what a narinfo without a Compression line
	// means to Nix.
	DefaultCompression = "bzip2"
	// ContentType is what Nix sends and expects for narinfo documents.
	ContentType = "text/x-nix-narinfo"
)

// NarInfo is one .narinfo document.
type NarInfo struct {
	StorePath   string // full path, e.g. /nix/store/<hash>-<name>
	URL         string // relative to the cache root, e.g. nar/<filehash>.nar.zst
	Compression string // "none", "xz", "zstd", ...; Parse fills in "bzip2" when absent
	FileHash    *Hash  // of the compressed file; optional, Nix never checks it
	FileSize    uint64
	NarHash     Hash
	NarSize     uint64
	References  []string // base names, sorted, no duplicates (Nix keeps a set)
	Deriver     string   // base name or ""
	System      string   // only kept so a document that had it renders back
	Sigs        []string // "name:base64", sorted, no duplicates
	CA          string   // content address, e.g. "fixed:r:sha256:<nix32>", or ""
}

// Parse reads one narinfo. See the package comment for what it accepts.
func Parse(r io.Reader) (*NarInfo, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("read narinfo: %w", err)
	}
	if len(data) > MaxSize {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrInvalid, MaxSize)
	}
	return parse(data)
}

func parse(data []byte) (*NarInfo, error) {
	if len(data) > 0 && data[len(data)-1] != '\n' {
		return nil, fmt.Errorf("%w: last line does not end in a newline", ErrInvalid)
	}
	n := &NarInfo{}
	var seen uint32      // bit per known key, see keyBit
	rest := string(data) // one copy; lines and values are slices of it
	for lineNo := 1; rest != ""; lineNo++ {
		eol := strings.IndexByte(rest, '\n')
		line := rest[:eol]
		rest = rest[eol+1:]
		if strings.ContainsAny(line, "\r\x00") {
			return nil, lineErr(lineNo, "contains CR or NUL")
		}
		colon := strings.IndexByte(line, ':')
		if colon <= 0 || colon+1 >= len(line) || line[colon+1] != ' ' {
			if colon > 0 && colon == len(line)-1 {
				return nil, lineErr(lineNo, "want \"Key: value\", found no space after the colon")
			}
			return nil, lineErr(lineNo, "want \"Key: value\"")
		}
		key, value := line[:colon], line[colon+2:]
		if bit := keyBit(key); bit != 0 && key != "Sig" {
			if seen&bit != 0 {
				return nil, lineErr(lineNo, key+" appears twice")
			}
			seen |= bit
		}
		if err := n.set(key, value); err != nil {
			return nil, lineErr(lineNo, key+": "+err.Error())
		}
	}
	if n.Compression == "" {
		n.Compression = DefaultCompression
	}
	slices.Sort(n.Sigs)
	n.Sigs = slices.Compact(n.Sigs)
	switch {
	case seen&keyBit("StorePath") == 0:
		return nil, missing("StorePath")
	case seen&keyBit("NarHash") == 0:
		return nil, missing("NarHash")
	case n.URL == "":
		return nil, missing("URL")
	case n.NarSize == 0:
		return nil, missing("NarSize")
	}
	return n, nil
}

func lineErr(lineNo int, msg string) error {
	return fmt.Errorf("%w: line %d: %s", ErrInvalid, lineNo, msg)
}

func missing(key string) error {
	return fmt.Errorf("%w: %s is missing or empty", ErrInvalid, key)
}

// keyBit numbers the keys Nix knows, for duplicate detection; 0 means an
// unknown key.
func keyBit(key string) uint32 {
	switch key {
	case "StorePath":
		return 1 << 0
	case "URL":
		return 1 << 1
	case "Compression":
		return 1 << 2
	case "FileHash":
		return 1 << 3
	case "FileSize":
		return 1 << 4
	case "NarHash":
		return 1 << 5
	case "NarSize":
		return 1 << 6
	case "References":
		return 1 << 7
	case "Deriver":
		return 1 << 8
	case "System":
		return 1 << 9
	case "Sig":
		return 1 << 10
	case "CA":
		return 1 << 11
	}
	return 0
}

// set stores one field; unknown keys are ignored, as Nix does.
func (n *NarInfo) set(key, value string) error {
	var err error
	switch key {
	case "StorePath":
		_, _, _, err = ParseStorePath(value)
		n.StorePath = value
	case "URL":
		n.URL = value
	case "Compression":
		n.Compression = value
	case "FileHash":
		var h Hash
		if h, err = parseSHA256(value); err == nil {
			n.FileHash = &h
		}
	case "FileSize":
		n.FileSize, err = parseSize(value)
	case "NarHash":
		n.NarHash, err = parseSHA256(value)
	case "NarSize":
		n.NarSize, err = parseSize(value)
	case "References":
		n.References, err = parseReferences(value)
	case "Deriver":
		if value != "unknown-deriver" { // what very old Nix wrote for "none"
			_, _, err = ParseBaseName(value)
			n.Deriver = value
		}
	case "System":
		n.System = value
	case "Sig":
		if err = checkSig(value); err == nil {
			n.Sigs = append(n.Sigs, value)
		}
	case "CA":
		n.CA, err = normalizeCA(value)
	}
	return err
}

// parseSHA256 accepts any encoding but only sha256: Nix 2.8 asserts sha256
// when it writes NarHash and FileHash, and fingerprints depend on it.
func parseSHA256(s string) (Hash, error) {
	h, err := ParseHash(s)
	if err == nil && h.Algo != "sha256" {
		err = fmt.Errorf("%w %q: want sha256", ErrHash, s)
	}
	return h, err
}

func parseSize(s string) (uint64, error) {
	// Plain decimal digits only, no sign or spaces; ParseUint checks range.
	if s == "" || strings.Trim(s, "0123456789") != "" {
		return 0, fmt.Errorf("%q is not a decimal number", s)
	}
	return strconv.ParseUint(s, 10, 64)
}

func parseReferences(value string) ([]string, error) {
	var refs []string
	// Walk the line instead of splitting it, so a line of a million spaces
	// costs no allocation.
	for rest := value; rest != ""; {
		var r string
		r, rest, _ = strings.Cut(rest, " ")
		if r == "" { // Nix tokenizes on runs of spaces
			continue
		}
		if len(refs) == MaxReferences {
			return nil, fmt.Errorf("more than %d references", MaxReferences)
		}
		if _, _, err := ParseBaseName(r); err != nil {
			return nil, err
		}
		refs = append(refs, r)
	}
	slices.Sort(refs)
	return slices.Compact(refs), nil
}

func checkSig(s string) error {
	name, sig, ok := strings.Cut(s, ":")
	if !ok || name == "" || sig == "" {
		return fmt.Errorf("%q is not <key name>:<base64 signature>", s)
	}
	return nil
}

// normalizeCA checks a content address the way Nix 2.8's
// parseContentAddress does ("text:sha256:<hash>", "fixed:[r:]<algo>:<hash>",
// hash in any non-SRI encoding) and renders it as Nix does, hash in nix32.
func normalizeCA(s string) (string, error) {
	if s == "" { // Nix reads an empty CA as none
		return "", nil
	}
	prefix, rest, _ := strings.Cut(s, ":")
	switch prefix {
	case "text":
		if !strings.HasPrefix(rest, "sha256:") {
			return "", fmt.Errorf("%q: text content addresses use sha256", s)
		}
	case "fixed":
		if r, ok := strings.CutPrefix(rest, "r:"); ok {
			rest, prefix = r, "fixed:r"
		}
	default:
		return "", fmt.Errorf("%q: want text: or fixed: content address", s)
	}
	if !strings.Contains(rest, ":") {
		return "", fmt.Errorf("%q: want <algo>:<hash> content address", s)
	}
	h, err := ParseHash(rest)
	if err != nil {
		return "", err
	}
	return prefix + ":" + h.String(), nil
}

// StoreDir returns the store directory of StorePath, e.g. "/nix/store".
func (n *NarInfo) StoreDir() string {
	i := strings.LastIndexByte(n.StorePath, '/')
	if i < 0 {
		return ""
	}
	return n.StorePath[:i]
}

// HashPart returns the 32-character hash part of StorePath, the name a cache
// serves the narinfo under ("<hash part>.narinfo"), or "" if StorePath is
// not a store path.
func (n *NarInfo) HashPart() string {
	_, h, _, err := ParseStorePath(n.StorePath)
	if err != nil {
		return ""
	}
	return h
}

// String renders the narinfo as Nix 2.8 writes it. References and Sigs are
// written sorted and de-duplicated, whatever order the slices are in. An
// empty Compression is written as "bzip2", which is what its absence means.
// FileHash is omitted when nil, FileSize when zero and FileHash is nil.
func (n *NarInfo) String() string {
	var b strings.Builder
	b.Grow(512 + 40*len(n.References) + 110*len(n.Sigs))
	line := func(k, v string) {
		b.WriteString(k)
		b.WriteString(": ")
		b.WriteString(v)
		b.WriteByte('\n')
	}
	line("StorePath", n.StorePath)
	line("URL", n.URL)
	comp := n.Compression
	if comp == "" {
		comp = DefaultCompression
	}
	line("Compression", comp)
	if n.FileHash != nil {
		line("FileHash", n.FileHash.String())
	}
	if n.FileHash != nil || n.FileSize != 0 {
		line("FileSize", strconv.FormatUint(n.FileSize, 10))
	}
	line("NarHash", n.NarHash.String())
	line("NarSize", strconv.FormatUint(n.NarSize, 10))
	// Always with the space: a bare "References:" makes Nix take the next
	// line as the value.
	line("References", strings.Join(sortedSet(n.References), " "))
	if n.Deriver != "" {
		line("Deriver", n.Deriver)
	}
	if n.System != "" {
		line("System", n.System)
	}
	for _, s := range sortedSet(n.Sigs) {
		line("Sig", s)
	}
	if n.CA != "" {
		line("CA", n.CA)
	}
	return b.String()
}

// Validate reports whether String would produce a document Parse (and Nix)
// accepts with the same meaning, so a server can check a narinfo it
// assembled before publishing it.
func (n *NarInfo) Validate() error {
	fields := append([]string{n.StorePath, n.URL, n.Compression, n.Deriver, n.System, n.CA}, n.References...)
	for _, f := range append(fields, n.Sigs...) {
		if strings.ContainsAny(f, "\n\r\x00") {
			return fmt.Errorf("%w: field %q contains a line break or NUL", ErrInvalid, f)
		}
	}
	if !n.NarHash.valid() || n.NarHash.Algo != "sha256" {
		return fmt.Errorf("%w: NarHash must be a sha256 digest", ErrInvalid)
	}
	if n.FileHash != nil && (!n.FileHash.valid() || n.FileHash.Algo != "sha256") {
		return fmt.Errorf("%w: FileHash must be a sha256 digest", ErrInvalid)
	}
	_, err := parse([]byte(n.String()))
	return err
}

// sortedSet returns s sorted without duplicates, copying only if needed.
func sortedSet(s []string) []string {
	for i := 1; i < len(s); i++ {
		if s[i-1] >= s[i] {
			c := slices.Clone(s)
			slices.Sort(c)
			return slices.Compact(c)
		}
	}
	return s
}
