package durable

import "github.com/bos55/concordia/internal/coalesce"

// DirSyncer fsyncs one directory for concurrent callers, sharing the
// fsyncs between them. An fsync of a directory makes durable every name
// created or renamed in it before the fsync started, so a caller that
// arrives while one is running cannot count on it (its rename may have
// come after the start) but can share the next one with every other
// caller that arrived meanwhile: when Nix uploads paths in parallel, their
// blob files land in the same directory at once and each would otherwise
// wait for its own fsync behind the others'. A lone caller syncs at once.
type DirSyncer struct {
	dir   string
	sync  func(dir string) error
	calls *coalesce.Batcher[*error]
}

// NewDirSyncer returns a DirSyncer of directory dir.
func NewDirSyncer(dir string) *DirSyncer { return newDirSyncer(dir, SyncDir) }

func newDirSyncer(dir string, sync func(string) error) *DirSyncer {
	s := &DirSyncer{dir: dir, sync: sync}
	s.calls = coalesce.New(s.run)
	return s
}

// Sync returns once an fsync of the directory that started after Sync was
// called has finished, with that fsync's error (as SyncDir's).
func (s *DirSyncer) Sync() error {
	var err error
	s.calls.Do(&err)
	return err
}

// run is one fsync for the whole batch: each caller gets its error.
func (s *DirSyncer) run(batch []*error) {
	err := s.sync(s.dir)
	for _, e := range batch {
		*e = err
	}
}

// Stats returns how many calls of Sync there were and how many fsyncs ran
// them.
func (s *DirSyncer) Stats() (calls, syncs uint64) { return s.calls.Stats() }
