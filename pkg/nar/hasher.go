package nar

import (
	"crypto/sha256"
	"hash"
)

// Hasher computes a NAR's NarHash (SHA-256) and NarSize while it streams
// past, so the upload path can check a client's claims without a second
// read. The zero value is not usable; call NewHasher.
type Hasher struct {
	h hash.Hash
	n uint64
}

// NewHasher returns an empty Hasher.
func NewHasher() *Hasher { return &Hasher{h: sha256.New()} }

// Write never fails.
func (h *Hasher) Write(p []byte) (int, error) {
	h.h.Write(p)
	h.n += uint64(len(p))
	return len(p), nil
}

// Sum returns the SHA-256 digest (32 bytes) and the byte count of what was
// written so far. Writing may continue afterwards.
func (h *Hasher) Sum() (digest []byte, size uint64) {
	return h.h.Sum(nil), h.n
}

// Reset empties the Hasher for another NAR.
func (h *Hasher) Reset() {
	h.h.Reset()
	h.n = 0
}
