package upload

import (
	"io"
	"os"

	"github.com/bos55/concordia/internal/kv"

	"github.com/bos55/concordia/internal/blob/diskblob"
)

// SetSyncFile replaces the fsync of uploaded NAR files for a test and
// returns a function restoring it.
func SetSyncFile(f func(*os.File) error) (restore func()) {
	old := diskblob.SyncFile
	diskblob.SyncFile = f
	return func() { diskblob.SyncFile = old }
}

// WaitDurable waits until the pending NAR file name (canonical form) is
// on disk or failed to get there; it returns at once for any other name.
func (s *Store) WaitDurable(name string) {
	s.pendMu.Lock()
	p := s.pending[name]
	s.pendMu.Unlock()
	if p != nil {
		<-p.durable
	}
}

// InlineBlob is the NAR file name as kept in the index (small.go), if it
// is kept there.
func (s *Store) InlineBlob(name string) ([]byte, bool) {
	if s.inline == nil {
		return nil, false
	}
	var data []byte
	var ok bool
	s.db.View(func(tx kv.Tx) error {
		if ok = s.inline.Has(tx, name); ok {
			r, _ := s.inline.Open(bg, name)
			data, _ = io.ReadAll(r)
		}
		return nil
	})
	return data, ok
}

// SetInlineBlob overwrites the inline NAR file name, as damage on disk
// would.
func (s *Store) SetInlineBlob(name string, data []byte) error {
	return s.db.Update(func(tx kv.Tx) error { return s.inline.Put(tx, name, data, s.now()) })
}

// SetMaxInlineMemory replaces the bound of small NARs held in memory and
// returns a function restoring it.
func SetMaxInlineMemory(n int64) (restore func()) {
	old := maxInlineMemory
	maxInlineMemory = n
	return func() { maxInlineMemory = old }
}
