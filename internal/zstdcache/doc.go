// Package zstdcache compresses each NAR once and serves the result to
// every later, or concurrent, reader: ten hosts pulling the same closure
// should cost one compression. Blobs are kept on disk, bounded in size,
// with a bbolt index of their sizes and access times (Cache).
//
// It is apart from package compress, which holds the codecs, because it
// is the one part of compression with state: files, an index, background
// productions and eviction. The codecs are used by every package that
// reads or writes a NAR; the cache only by the server.
package zstdcache
