package host

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// State is where one deploy is.
type State string

// The states of a deploy. Final: confirmed, rolled-back, failed.
const (
	Activating      State = "activating"
	AwaitingConfirm State = "awaiting-confirm"
	Confirmed       State = "confirmed"
	RollingBack     State = "rolling-back"
	RolledBack      State = "rolled-back"
	Failed          State = "failed"
)

// Final reports whether nothing more will happen to a deploy in state s.
func (s State) Final() bool { return s == Confirmed || s == RolledBack || s == Failed }

// Event is one state change, kept so a person can read what happened when.
type Event struct {
	State  State     `json:"state"`
	At     time.Time `json:"at"`
	Reason string    `json:"reason,omitempty"`
}

// Record is the durable state of one deploy, in <state dir>/deploys/<id>.json.
// It is also the JSON result the host verbs print.
type Record struct {
	ID            string `json:"id"`
	Mode          Mode   `json:"mode"`          // what was run (a switch may become boot)
	RequestedMode Mode   `json:"requestedMode"` // what was asked
	Path          string `json:"path"`
	State         State  `json:"state"`
	Reason        string `json:"reason,omitempty"`
	ExitCode      int    `json:"exitCode"` // the verb's exit code for this state

	ActivationExit int  `json:"activationExit"` // switch-to-configuration's exit status (-1: not run)
	RebootRequired bool `json:"rebootRequired"` // it exited 100, or a kernel change became boot
	KernelChanged  bool `json:"kernelChanged"`
	RolledBack     bool `json:"rolledBack"`

	Previous           string `json:"previous"`           // /run/current-system before
	PreviousGeneration int    `json:"previousGeneration"` // profile generation before (0: none)
	PreviousProfile    string `json:"previousProfile"`    // its store path
	Generation         int    `json:"generation"`         // profile generation after (switch, boot)
	CreatedGeneration  bool   `json:"createdGeneration"`  // the deploy made Generation

	MagicRollback  bool      `json:"magicRollback"`
	AutoRollback   bool      `json:"autoRollback"`
	ConfirmTimeout string    `json:"confirmTimeout"`
	Deadline       time.Time `json:"deadline,omitzero"`
	Rejected       bool      `json:"rejected,omitempty"` // the deployer refused it (confirm --reject)
	WorkerPID      int       `json:"workerPid,omitempty"`
	Log            string    `json:"log"`

	Started time.Time `json:"started"`
	Updated time.Time `json:"updated"`
	History []Event   `json:"history"`
}

func (r *Record) set(s State, reason string) {
	now := time.Now().UTC()
	r.State, r.Reason, r.Updated = s, reason, now
	r.History = append(r.History, Event{State: s, At: now, Reason: reason})
	r.ExitCode = r.exitCode()
}

func (r *Record) exitCode() int {
	switch r.State {
	case Failed:
		return ExitFailed
	case RolledBack, RollingBack:
		return ExitRolledBack
	case Activating:
		return ExitTimeout
	}
	if r.RebootRequired && r.ActivationExit == ExitRebootRequired {
		return ExitRebootRequired
	}
	return ExitOK
}

// Err is the error matching the record's final or current state.
func (r *Record) Err() error {
	switch r.State {
	case Failed:
		return fmt.Errorf("%w: %s", ErrFailed, r.Reason)
	case RolledBack, RollingBack:
		return fmt.Errorf("%w: %s", ErrRolledBack, r.Reason)
	}
	return nil
}

func deploysDir(o Options) string            { return filepath.Join(o.StateDir, "deploys") }
func recordPath(o Options, id string) string { return filepath.Join(deploysDir(o), id+".json") }

// LogPath is where the activation output of deploy id goes.
func LogPath(o Options, id string) string {
	return filepath.Join(deploysDir(o.withDefaults()), id+".log")
}

// Load reads the record of deploy id.
func Load(o Options, id string) (*Record, error) {
	o = o.withDefaults()
	if err := ValidID(id); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(recordPath(o, id))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		return nil, fmt.Errorf("read deploy %s: %w", id, err)
	}
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("parse deploy %s: %w", id, err)
	}
	return &r, nil
}

// update changes the record of deploy id under its own flock, so confirm and
// the watchdog's timeout can never both win.
func update(o Options, id string, fn func(r *Record) error) (*Record, error) {
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
func create(o Options, r *Record) error {
	if err := os.MkdirAll(deploysDir(o), 0o700); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	if _, err := os.Lstat(recordPath(o, r.ID)); err == nil {
		return fmt.Errorf("%w: deploy id %s was already used on this host", ErrInvalid, r.ID)
	}
	return writeJSON(recordPath(o, r.ID), r)
}

// writeJSON publishes v atomically and durably: temp file, fsync, rename,
// fsync of the directory.
func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
