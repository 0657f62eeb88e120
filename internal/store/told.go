package store

// WriterTold is the capability of remembering which paths a writer was
// told exist. Nix keeps every narinfo it fetched or uploaded in its disk
// cache for narinfo-cache-positive-ttl (30 days): the answers of its
// lookups (Store::queryPathInfo in store-api.cc, diskCache->upsertNarInfo)
// and the narinfos it uploaded (BinaryCacheStore::writeNarInfo in
// binary-cache-store.cc, the same call right after the PUT). Uploading, it
// never sends a path it believes the cache has, so a path collected
// meanwhile would make its later upload of a referrer fail. A store that garbage-collects keeps
// such paths for that long (upload: gc.writer_ttl).
type WriterTold interface {
	// ToldWriter records that a request with a write token was answered
	// 200 for the narinfo of hashPart. It is called on the read path and
	// must not wait for a disk write.
	ToldWriter(hashPart string)
}
