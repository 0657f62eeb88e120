package host

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/bos55/concordia/internal/durable"
	"github.com/bos55/concordia/internal/hostverb"
)

func deploysDir(o Options) string            { return filepath.Join(o.StateDir, "deploys") }
func recordPath(o Options, id string) string { return filepath.Join(deploysDir(o), id+".json") }

// LogPath is where the activation output of deploy id goes.
func LogPath(o Options, id string) string {
	return filepath.Join(deploysDir(o.withDefaults()), id+".log")
}

// Load reads the record of deploy id (<state dir>/deploys/<id>.json).
func Load(o Options, id string) (*hostverb.Record, error) {
	o = o.withDefaults()
	if err := hostverb.ValidID(id); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(recordPath(o, id))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", hostverb.ErrNotFound, id)
	}
	if err != nil {
		return nil, fmt.Errorf("read deploy %s: %w", id, err)
	}
	var r hostverb.Record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("parse deploy %s: %w", id, err)
	}
	return &r, nil
}

// update changes the record of deploy id under its own flock, so confirm and
// the watchdog's timeout can never both win.
func update(o Options, id string, fn func(r *hostverb.Record) error) (*hostverb.Record, error) {
	lf, err := os.OpenFile(filepath.Join(deploysDir(o), id+".lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock deploy %s: %w", id, err)
	}
	defer lf.Close()
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX); err != nil {
		return nil, fmt.Errorf("lock deploy %s: %w", id, err)
	}
	r, err := Load(o, id)
	if err != nil {
		return nil, err
	}
	if err := fn(r); err != nil {
		return r, err
	}
	if err := writeJSON(recordPath(o, id), r); err != nil {
		return nil, err
	}
	return r, nil
}

// create writes the first record of a deploy; the id must be new.
func create(o Options, r *hostverb.Record) error {
	if err := os.MkdirAll(deploysDir(o), 0o700); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	if _, err := os.Lstat(recordPath(o, r.ID)); err == nil {
		return fmt.Errorf("%w: deploy id %s was already used on this host", hostverb.ErrInvalid, r.ID)
	}
	return writeJSON(recordPath(o, r.ID), r)
}

// writeJSON publishes v atomically and durably.
func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return durable.WriteFile(path, append(b, '\n'), 0o600)
}
