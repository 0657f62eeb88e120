// Package hostverb is the contract between the deployer's push side and its
// host side: the verbs a deploy key may ask a host for, each verb's
// parameters and their validation, the wire form of a request (the SSH
// command line) in every contract version, the results and states a host
// answers with, and the exit codes.
//
// It is a leaf package: the gate (the deploy key's forced command), the
// root agent, the host logic and the push side all import it, and nothing
// in it runs a program or touches the host. A rule about what a host verb
// accepts lives here and nowhere else.
//
// # Versions
//
// Contract 1 is what deployers up to the introduction of this package
// speak: root verbs as `sudo -n <deployer> VERB ...` run through sudo
// rules, `status --local` and `rollback --local` for the host-side forms.
// Contract 2 is `deployer VERB ...` for every verb, answered by a root
// agent behind the gate, so the deploy user needs no sudo; it adds the
// `health` verb. Contract 3 is switch-to-configuration-ng's world: a kernel
// change switches by default (reboot required, reported), activate takes
// --kernel-change switch|boot|refuse, --no-check (NIXOS_NO_CHECK=1, past
// switch inhibitors) and --install-bootloader (NIXOS_INSTALL_BOOTLOADER=1),
// and exit 7 is a refusal by pre-switch checks. Contract 4 is reboots the
// deployer finishes itself: the `reboot --id ID` verb answers the boot id
// (/proc/sys/kernel/random/boot_id) and then reboots the host as NixOS
// does (systemctl reboot, a moment later, so the answer gets out first);
// status carries the boot id; `rollback --boot --generation N` sets the
// boot default back to an existing generation no newer than the profile's
// (the profile and that generation's switch-to-configuration boot, under
// the host lock) without activating it; `health --booted` runs the checks
// of the booted, running system, as after a reboot no deploy awaits
// confirmation. A push side asks a contract 4 host for these and a host
// of an older contract gets none of them: Encode refuses with
// ErrUnsupported and the push side says to update the host's deployer.
// A host of contract 2 accepts the contract 1 forms too (an
// older push side keeps working), and every answer it prints carries
// "contract": 2. A push side that gets exit 126 without that marker is
// talking to an older gate, which refuses unknown forms before running
// anything: it may send the request again in the older form.
package hostverb

import (
	"errors"
	"fmt"
)

// Contract is the version this package speaks; MinContract the oldest it
// can still encode requests for.
const (
	Contract    = 4
	MinContract = 1
)

// Exit codes of the host verbs.
const (
	ExitOK             = 0
	ExitFailed         = 1
	ExitLocked         = 3
	ExitInvalid        = 4
	ExitKernelChange   = 5
	ExitRolledBack     = 6
	ExitPreSwitch      = 7 // pre-switch checks (switch inhibitors) refused it: nothing changed
	ExitTimeout        = 8
	ExitRebootRequired = 100
	// ExitRefused: the gate (or the agent) refused the request before
	// anything ran, as a shell's "cannot execute".
	ExitRefused = 126
	// ExitLost: the root agent took the request and went away before it
	// answered. It is ssh's own code for a lost connection on purpose: the
	// push side must treat both alike and ask the host again (wait).
	ExitLost = 255
)

// Sentinel errors; ExitCode maps them to exit codes, ErrorFor back.
var (
	ErrRefused      = errors.New("refused by the deployer gate")
	ErrInvalid      = errors.New("invalid input")
	ErrLocked       = errors.New("host is locked by another deploy")
	ErrKernelChange = errors.New("reboot required: kernel, initrd or kernel modules change")
	ErrPreSwitch    = errors.New("pre-switch checks failed")
	ErrFailed       = errors.New("activation failed")
	ErrRolledBack   = errors.New("deploy was rolled back")
	ErrTimeout      = errors.New("timed out waiting for the deploy")
	ErrNotFound     = errors.New("no such deploy")
	// ErrUnhealthy: a health check of the new system failed (exit 1).
	ErrUnhealthy = errors.New("health check failed")
	// ErrUnsupported: the host's contract version lacks the verb.
	ErrUnsupported = errors.New("not supported by the host's deployer")
)

// ExitCode maps an error of the contract to its exit code.
func ExitCode(err error) int {
	switch {
	case err == nil:
		return ExitOK
	case errors.Is(err, ErrRefused):
		return ExitRefused
	case errors.Is(err, ErrLocked):
		return ExitLocked
	case errors.Is(err, ErrInvalid), errors.Is(err, ErrNotFound):
		return ExitInvalid
	case errors.Is(err, ErrKernelChange):
		return ExitKernelChange
	case errors.Is(err, ErrPreSwitch):
		return ExitPreSwitch
	case errors.Is(err, ErrRolledBack):
		return ExitRolledBack
	case errors.Is(err, ErrTimeout):
		return ExitTimeout
	default:
		return ExitFailed
	}
}

// ErrorFor turns an exit code and the host's message back into an error
// that matches the sentinel of that code (nil for ExitOK), so the push side
// tells outcomes apart with errors.Is, not by matching text. The message is
// kept as the host wrote it.
func ErrorFor(code int, msg string) error {
	var base error
	switch code {
	case ExitOK:
		return nil
	case ExitRefused:
		base = ErrRefused
	case ExitLocked:
		base = ErrLocked
	case ExitInvalid:
		base = ErrInvalid
	case ExitKernelChange:
		base = ErrKernelChange
	case ExitPreSwitch:
		base = ErrPreSwitch
	case ExitRolledBack:
		base = ErrRolledBack
	case ExitTimeout:
		base = ErrTimeout
	default:
		base = ErrFailed
	}
	if msg == "" {
		msg = fmt.Sprintf("%v (exit %d)", base, code)
	}
	return &hostError{base: base, msg: msg}
}

// hostError is an error a host reported: its text, its sentinel.
type hostError struct {
	base error
	msg  string
}

func (e *hostError) Error() string { return e.msg }
func (e *hostError) Unwrap() error { return e.base }
