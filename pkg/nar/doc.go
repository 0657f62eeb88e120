// Package nar reads and writes Nix ARchives (NAR), the canonical
// serialisation of a store path whose SHA-256 is the path's NarHash, and
// renders the .ls listings binary caches serve beside them.
//
// Everything here is checked byte for byte against Nix 2.8 in the tests:
// DumpPath against `nix-store --dump`, Hasher against the hashes
// `nix-store --add` registers, Listing against the .ls files written by
// `nix copy --to 'file://...?write-nar-listing=1'`.
//
// Why not go-nix's nar package (already a dependency): its DumpPath runs the
// writer in a goroutine fed through channels and io.Pipe, stats every entry
// through os.ReadDir and allocates per file, which made it several times
// slower than `nix-store --dump` on the Go toolchain tree (see
// BenchmarkGoNixDumpGoroot). A cache server dumps whole closures on every
// cache miss, so this package has its own walk: on Linux it reads
// directories with getdents64, opens entries with openat relative to their
// parent, reads file contents straight into the single output buffer and
// keeps names in per-depth arenas, so a dump makes a constant number of
// allocations however many files it holds. Its reader is also stricter than
// go-nix's: it bounds every buffered token, so hostile uploads cannot make
// it allocate, and it says at which byte offset and path a NAR went wrong.
package nar
