// Package host is the deployer's host side: it activates a NixOS system with
// a lock, a detached activation that survives a dropped SSH session, an
// immediate rollback when activation fails and a watchdog that rolls back
// unless the deployer confirms in time (magic rollback). It also reports the
// host's generations (Inspect) and rolls back by hand (Rollback).
//
// Every path it touches is in Options so unit tests run it on a temporary
// directory with a fake nixcli.Runner; the defaults are the real NixOS ones.
package host

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/bos55/concordia/internal/nixcli"
)

// Options says where the host's state lives and how Nix and the activation
// are run. The zero value means the real NixOS locations.
type Options struct {
	StateDir      string // lock, holder record and per-deploy state; default /run/concordia
	StoreDir      string // default /nix/store
	Profile       string // default /nix/var/nix/profiles/system
	CurrentSystem string // default /run/current-system
	BootedSystem  string // default /run/booted-system

	Nix      nixcli.Runner // default &nixcli.Exec{}
	Switcher Switcher      // default Detached{}
	Spawner  Spawner       // default Reexec{} (the running binary's hidden watchdog verb)
	Log      *slog.Logger  // default discards
	Poll     time.Duration // how often waiters look at the state; default 100ms

	// ID names the holder of the lock for Rollback; default "rollback".
	ID string
}

func (o Options) withDefaults() Options {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&o.StateDir, "/run/concordia")
	def(&o.StoreDir, "/nix/store")
	def(&o.Profile, "/nix/var/nix/profiles/system")
	def(&o.CurrentSystem, "/run/current-system")
	def(&o.BootedSystem, "/run/booted-system")
	def(&o.ID, "rollback")
	if o.Nix == nil {
		o.Nix = &nixcli.Exec{}
	}
	if o.Switcher == nil {
		o.Switcher = Detached{}
	}
	if o.Spawner == nil {
		o.Spawner = Reexec{}
	}
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.Poll <= 0 {
		o.Poll = 100 * time.Millisecond
	}
	return o
}

// Mode is what switch-to-configuration is asked to do.
type Mode string

// The modes of switch-to-configuration.
const (
	Switch      Mode = "switch"
	Test        Mode = "test"
	Boot        Mode = "boot"
	DryActivate Mode = "dry-activate"
)

// Exit codes of the host verbs (the contract with the push side).
const (
	ExitOK             = 0
	ExitFailed         = 1
	ExitLocked         = 3
	ExitInvalid        = 4
	ExitKernelChange   = 5
	ExitRolledBack     = 6
	ExitTimeout        = 8
	ExitRebootRequired = 100
)

// Sentinel errors; ExitCode maps them to the verbs' exit codes.
var (
	ErrInvalid      = errors.New("invalid input")
	ErrLocked       = errors.New("host is locked by another deploy")
	ErrKernelChange = errors.New("reboot required: kernel, initrd or kernel modules change")
	ErrFailed       = errors.New("activation failed")
	ErrRolledBack   = errors.New("deploy was rolled back")
	ErrTimeout      = errors.New("timed out waiting for the deploy")
	ErrNotFound     = errors.New("no such deploy")
)

// ExitCode maps an error from this package to the verb's exit code.
func ExitCode(err error) int {
	switch {
	case err == nil:
		return ExitOK
	case errors.Is(err, ErrLocked):
		return ExitLocked
	case errors.Is(err, ErrInvalid), errors.Is(err, ErrNotFound):
		return ExitInvalid
	case errors.Is(err, ErrKernelChange):
		return ExitKernelChange
	case errors.Is(err, ErrRolledBack):
		return ExitRolledBack
	case errors.Is(err, ErrTimeout):
		return ExitTimeout
	default:
		return ExitFailed
	}
}

var (
	idRE = regexp.MustCompile(`^[A-Za-z0-9-]{1,64}$`)
	// A store path name: Nix's allowed characters, not starting with a dot.
	storeNameRE = regexp.MustCompile(`^[0-9a-df-np-sv-z]{32}-[A-Za-z0-9+\-_?=][A-Za-z0-9+\-._?=]{0,210}$`)
)

// ValidID checks a deploy id: [A-Za-z0-9-]{1,64}.
func ValidID(id string) error {
	if !idRE.MatchString(id) {
		return fmt.Errorf("%w: deploy id %q must match [A-Za-z0-9-]{1,64}", ErrInvalid, id)
	}
	return nil
}

// ValidMode checks a mode against the fixed list.
func ValidMode(m string) error {
	switch Mode(m) {
	case Switch, Test, Boot, DryActivate:
		return nil
	}
	return fmt.Errorf("%w: mode %q is not one of switch, test, boot, dry-activate", ErrInvalid, m)
}

// ValidStorePath checks that p is exactly storeDir/<32 nix32 chars>-<name>:
// no subpath, no "..", nothing a shell or a path walk could abuse.
func ValidStorePath(storeDir, p string) error {
	if storeDir == "" {
		storeDir = "/nix/store"
	}
	dir, name := filepath.Split(p)
	if filepath.Clean(dir) != storeDir || dir != storeDir+"/" || !storeNameRE.MatchString(name) || name == ".." {
		return fmt.Errorf("%w: %q is not a store path under %s", ErrInvalid, p, storeDir)
	}
	return nil
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}
