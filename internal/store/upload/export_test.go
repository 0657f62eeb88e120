package upload

import (
	"os"

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
