// Package narinfo reads and writes Nix's .narinfo documents, the hash
// formats they carry, and the ed25519 keys and signatures that make a binary
// cache trustworthy.
//
// The parser is our own, not go-nix's: go-nix rejects unknown keys, while a
// Nix client ignores them, and a cache must accept what clients accept. It
// follows Nix 2.8's reader (src/libstore/nar-info.cc) where that matters for
// interop and is stricter where Nix is merely sloppy, because the input
// comes from the network:
//
//   - every line is "Key: value\n", the last one included (a missing space
//     after the colon is an error, where Nix would silently drop the value's
//     first character);
//   - StorePath, NarHash, a non-empty URL and NarSize > 0 are required;
//   - single-valued keys may appear once; Sig may repeat; unknown keys are
//     skipped and not rendered again (Nix drops them too);
//   - NarHash and FileHash must be sha256 (in any encoding: nix32, base16,
//     base64, SRI), since Nix 2.8 cannot write anything else; store paths,
//     references and the deriver must be valid store path names; a Sig must
//     look like "name:signature"; a CA must be "text:sha256:..." or
//     "fixed:[r:]<algo>:..." and is re-rendered with a nix32 hash, as Nix
//     does;
//   - CR, NUL, more than MaxSize bytes or more than MaxReferences
//     references are rejected, so a peer cannot make Parse allocate without
//     bound.
//
// References and Sigs are sets in Nix (std::set), so Parse and String keep
// them sorted and free of duplicates; a file written by Nix therefore renders
// back byte for byte. String writes the fields in the order Nix 2.8 does:
// StorePath, URL, Compression, FileHash, FileSize, NarHash, NarSize,
// References, Deriver, System, Sig..., CA. Nix 2.8 reads and writes a
// System line but never sets one itself, so it only appears when it was in
// the input.
//
// Signatures cover the fingerprint
//
//	1;<store path>;sha256:<nix32 nar hash>;<nar size>;<sorted full reference paths, comma separated>
//
// which this package computes itself: go-nix's Fingerprint neither sorts the
// references nor honours a store directory other than /nix/store.
// ContentAddressed mirrors Nix's rule that a path whose CA yields its store
// path needs no signature at all.
//
// Keys use Nix's text format, "name:base64(seed||public)" for secret keys and
// "name:base64(public)" for public ones, without a trailing newline, so key
// files are interchangeable with nix-store --generate-binary-cache-key.
package narinfo
