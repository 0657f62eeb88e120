package host

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/bos55/concordia/internal/hostverb"
)

// LockedError is returned when another deploy holds the lock.
type LockedError struct{ Holder *hostverb.Holder }

func (e *LockedError) Error() string {
	h := e.Holder
	if h == nil {
		return hostverb.ErrLocked.Error() + " (holder unknown)"
	}
	return fmt.Sprintf("%v: deploy %s (mode %s, %s) started %s", hostverb.ErrLocked, h.ID, h.Mode, h.Path, h.Started.Format(time.RFC3339))
}

func (e *LockedError) Unwrap() error { return hostverb.ErrLocked }

// lockHost takes the host lock (a flock on <state dir>/lock) and records h as
// its holder. The lock lives as long as the returned file's open file
// description, so handing the file to the watchdog process keeps the host
// locked until the deploy ends, and a crash can never leave it locked.
func lockHost(o Options, h *hostverb.Holder) (*os.File, error) {
	if err := os.MkdirAll(o.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(o.StateDir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock: %w", err)
	}
	// A few tries: Inspect probes the lock for an instant.
	for i := 0; ; i++ {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) || i == 5 {
			f.Close()
			if errors.Is(err, syscall.EWOULDBLOCK) {
				return nil, &LockedError{Holder: readHolder(o)}
			}
			return nil, fmt.Errorf("lock: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := writeJSON(filepath.Join(o.StateDir, "holder.json"), h); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

func readHolder(o Options) *hostverb.Holder {
	b, err := os.ReadFile(filepath.Join(o.StateDir, "holder.json"))
	if err != nil {
		return nil
	}
	var h hostverb.Holder
	if json.Unmarshal(b, &h) != nil {
		return nil
	}
	return &h
}

// lockHolder returns the current holder, or nil when the host is not locked.
func lockHolder(o Options) *hostverb.Holder {
	f, err := os.Open(filepath.Join(o.StateDir, "lock"))
	if err != nil {
		return nil
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err == nil {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		return nil
	}
	if h := readHolder(o); h != nil {
		return h
	}
	return &hostverb.Holder{ID: "unknown"}
}
