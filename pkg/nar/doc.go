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
// through os.ReadDir and allocates per file. Measured here on the Go
// toolchain tree (BenchmarkGoNixDumpGoroot): no faster than
// `nix-store --dump`, and 265,000 allocations (509 MB) per dump. A cache
// server dumps whole closures on cache misses, so this package has its own
// walk: on Linux it reads directories with getdents64, opens entries with
// openat relative to their parent, reads file contents straight into the
// single output buffer (one copy, and a tree of small files leaves in few
// large writes) and keeps names in per-depth arenas, so a dump makes a
// constant number of allocations however many files it holds. It runs two
// to five times as fast as `nix-store --dump` (BenchmarkDumpGoroot beside
// BenchmarkNixStoreDumpGoroot). Its reader is also stricter than go-nix's:
// it bounds every buffered token, so hostile uploads cannot make it
// allocate, and it says at which byte offset and path a NAR went wrong.
//
// The reader accepts only canonical NARs, the form nix-store --dump writes.
// Nix's own parser is looser (it takes "executable" after "contents", for
// one); a NAR that only Nix accepts is refused here, which keeps NarHash a
// function of the tree the reader returns.
package nar
