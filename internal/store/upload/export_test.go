package upload

import "os"

// SetSyncFile replaces the fsync of uploaded NAR files for a test and
// returns a function restoring it.
func SetSyncFile(f func(*os.File) error) (restore func()) {
	old := syncFile
	syncFile = f
	return func() { syncFile = old }
}
