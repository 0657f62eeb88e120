// Package host is the deployer's host side, what the root agent runs: it
// activates a NixOS system with a lock, a detached activation that survives
// a dropped SSH session, an immediate rollback when activation fails and a
// watchdog that rolls back unless the deployer confirms in time (magic
// rollback). It also reports the host's generations (Inspect), rolls back
// by hand (Rollback) and runs the health checks a system ships (Health).
//
// Before anything changes, Activate makes sure the system is one a trusted
// key signed (Trust): the deploy key can choose which signed system runs,
// never what a system is.
//
// Every path it touches is in Options so unit tests run it on a temporary
// directory with fakes; the defaults are the real NixOS ones. The verbs'
// requests, results and exit codes are the contract in internal/hostverb.
package host

import (
	"io"
	"log/slog"
	"os"
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
	NixOSRunDir   string // switch-to-configuration's run directory (its lock); default /run/nixos
	BootDir       string // where the boot loader's files are; default /boot
	BootIDFile    string // the running boot's id; default /proc/sys/kernel/random/boot_id

	Nix      nixcli.Runner // default &nixcli.Exec{}
	Trust    Trust         // default NixTrust{} (the store's database, nix's trusted-public-keys)
	Units    Units         // default Systemctl{}
	Switcher Switcher      // default Detached{}
	Spawner  Spawner       // default Reexec{} (the running binary's hidden watchdog verb)
	Logger   *slog.Logger  // nil discards
	Poll     time.Duration // how often waiters look at the state; default 100ms
	Rebooter Rebooter      // default SystemdReboot{}
	// RebootDelay is how long after answering the reboot verb reboots;
	// default DefaultRebootDelay.
	RebootDelay time.Duration

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
	def(&o.NixOSRunDir, "/run/nixos")
	def(&o.BootDir, "/boot")
	def(&o.ID, "rollback")
	def(&o.BootIDFile, DefaultBootIDFile)
	if o.Rebooter == nil {
		o.Rebooter = SystemdReboot{}
	}
	if o.RebootDelay <= 0 {
		o.RebootDelay = DefaultRebootDelay
	}
	if o.Nix == nil {
		o.Nix = &nixcli.Exec{}
	}
	if o.Trust == nil {
		o.Trust = &NixTrust{StoreDir: o.StoreDir}
	}
	if o.Units == nil {
		o.Units = Systemctl{}
	}
	if o.Switcher == nil {
		o.Switcher = Detached{}
	}
	if o.Spawner == nil {
		o.Spawner = Reexec{}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.Poll <= 0 {
		o.Poll = 100 * time.Millisecond
	}
	return o
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}
