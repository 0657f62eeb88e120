package hostverb

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Mode is what switch-to-configuration is asked to do.
type Mode string

// The modes of switch-to-configuration.
const (
	Switch      Mode = "switch"
	Test        Mode = "test"
	Boot        Mode = "boot"
	DryActivate Mode = "dry-activate"
)

// NeedsConfirm reports whether a deploy in mode m runs the new system now,
// so magic rollback applies (switch and test).
func (m Mode) NeedsConfirm() bool { return m == Switch || m == Test }

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

// Record is the durable state of one deploy (the host keeps it in its state
// directory) and the answer of activate, confirm and wait.
type Record struct {
	ID            string `json:"id"`
	Mode          Mode   `json:"mode"`          // what was run (a switch may become boot)
	RequestedMode Mode   `json:"requestedMode"` // what was asked
	Path          string `json:"path"`
	State         State  `json:"state"`
	Reason        string `json:"reason,omitempty"`
	ExitCode      int    `json:"exitCode"` // the verb's exit code for this state

	ActivationExit int `json:"activationExit"` // switch-to-configuration's exit status (-1: not run)
	// RebootRequired: the kernel or its modules differ from the booted
	// ones (switched live, or installed as the boot default), or the new
	// init interface waits for a reboot (exit 100).
	RebootRequired bool `json:"rebootRequired"`
	// RebootRecommended: only the initrd differs from the booted one.
	RebootRecommended bool `json:"rebootRecommended,omitempty"`
	KernelChanged     bool `json:"kernelChanged"`
	RolledBack        bool `json:"rolledBack"`

	// FailedBefore are the units that were failed before the deploy;
	// FailedUnits those failed after it that were failed before too (the
	// deploy stands, they are reported); NewFailedUnits those that failed
	// because of it (the deploy failed).
	FailedBefore   []string `json:"failedBefore,omitempty"`
	FailedUnits    []string `json:"failedUnits,omitempty"`
	NewFailedUnits []string `json:"newFailedUnits,omitempty"`
	// Refused says why switch-to-configuration activated nothing:
	// RefusedLocked (another switch held its lock), RefusedChecks (its
	// pre-switch checks), RefusedInit (a new init interface, exit 100).
	Refused string `json:"refused,omitempty"`
	// NoCheck and InstallBootloader are what the deploy asked
	// switch-to-configuration (NIXOS_NO_CHECK, NIXOS_INSTALL_BOOTLOADER).
	NoCheck           bool `json:"noCheck,omitempty"`
	InstallBootloader bool `json:"installBootloader,omitempty"`

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

// Why switch-to-configuration activated nothing (Record.Refused).
const (
	RefusedLocked = "locked"
	RefusedChecks = "pre-switch-checks"
	RefusedInit   = "init-interface"
)

// Set moves the record to state s, keeping the change in its history.
func (r *Record) Set(s State, reason string) {
	now := time.Now().UTC()
	r.State, r.Reason, r.Updated = s, reason, now
	r.History = append(r.History, Event{State: s, At: now, Reason: reason})
	r.ExitCode = r.exitCode()
}

func (r *Record) exitCode() int {
	switch r.State {
	case Failed:
		switch r.Refused {
		case RefusedLocked:
			return ExitLocked
		case RefusedChecks:
			return ExitPreSwitch
		case RefusedInit:
			return ExitKernelChange
		}
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
		return ErrorFor(r.exitCode(), r.Reason)
	case RolledBack, RollingBack:
		return fmt.Errorf("%w: %s", ErrRolledBack, r.Reason)
	}
	return nil
}

// Holder says who holds the host lock: the message of a refused second
// deploy names it.
type Holder struct {
	ID      string    `json:"id"`
	Mode    Mode      `json:"mode"`
	Path    string    `json:"path"`
	Started time.Time `json:"started"`
	PID     int       `json:"pid"`
}

// Generation is one numbered link of the system profile.
type Generation struct {
	Number int    `json:"number"`
	Link   string `json:"link,omitempty"` // e.g. /nix/var/nix/profiles/system-5-link
	Path   string `json:"path"`           // its target, the store path
}

// System is one system of the host, with its profile generation if it is
// one (0: not a generation of the system profile).
type System struct {
	Path       string `json:"path"`
	Generation int    `json:"generation"`
}

// Status is the answer of status.
type Status struct {
	Current     System       `json:"current"` // /run/current-system
	Booted      System       `json:"booted"`  // /run/booted-system
	Profile     System       `json:"profile"` // the boot default
	Generations []Generation `json:"generations"`
	// BootDefault is what the boot loader starts next, read from the
	// loader where it can be (BootDefaultSource "systemd-boot" or "grub"),
	// else the profile ("profile").
	BootDefault       System `json:"bootDefault"`
	BootDefaultSource string `json:"bootDefaultSource,omitempty"`
	TestActive        bool   `json:"testActive"`    // running system is not the boot default
	RebootPending     bool   `json:"rebootPending"` // boot default or running kernel/modules differ from booted
	// RebootSuggested: only the initrd differs (a reboot recommended).
	// The JSON names of a Status may not be a Record's: both are inline
	// in a Reply (TestReplyFieldsDistinct).
	RebootSuggested bool     `json:"rebootSuggested,omitempty"`
	RebootReasons   []string `json:"rebootReasons,omitempty"`
	UnitsFailed     []string `json:"unitsFailed,omitempty"` // systemd's failed units
	Lock            *Holder  `json:"lock,omitempty"`        // the deploy holding the host lock
	// BootID is the kernel's id of the running boot
	// (/proc/sys/kernel/random/boot_id, contract 4): another one means the
	// host rebooted.
	BootID string `json:"bootId,omitempty"`
}

// BeforePrevious returns the store path of the generation two before the
// one holding current (a newly deployed system), or "" when there is none
// or it is the same system as a newer generation or one the host runs or
// boots: the push side unpins it, keeping the previous one as the rollback
// target.
func (s *Status) BeforePrevious(current string) string {
	idx := -1
	for i, g := range s.Generations {
		if g.Path == current {
			idx = i
		}
	}
	if idx < 2 {
		return ""
	}
	old := s.Generations[idx-2].Path
	for _, g := range s.Generations[idx-1:] {
		if g.Path == old {
			return ""
		}
	}
	if old == s.Booted.Path || old == s.Current.Path || old == s.Profile.Path {
		return ""
	}
	return old
}

// Fetched is the answer of fetch.
type Fetched struct {
	Paths   []string `json:"fetched"`
	Seconds float64  `json:"seconds"`
}

// Health is the answer of health: one entry per check the new system
// declares (none declared: OK with no checks).
type Health struct {
	OK     bool          `json:"ok"`
	System string        `json:"system"`
	Checks []CheckResult `json:"checks"`
}

// CheckResult is one health check's outcome.
type CheckResult struct {
	Name     string  `json:"name"`
	OK       bool    `json:"ok"`
	Exit     int     `json:"exit"`     // last exit status (-1: did not run or timed out)
	Attempts int     `json:"attempts"` // runs until it passed or time ran out
	Seconds  float64 `json:"seconds"`
	Output   string  `json:"output,omitempty"` // the end of its last output
}

// Rebooting is the answer of reboot: the boot id the host had when it
// took the request (the push side waits for another one) and when the
// reboot is to start, a moment after the answer so that it reaches the
// push side.
type Rebooting struct {
	BootIDBefore string    `json:"rebootFromBootId"`
	RebootAt     time.Time `json:"rebootAt"`
}

// VersionInfo is the answer of version.
type VersionInfo struct {
	Version string `json:"version"`
}

// Reply is the one JSON line a host verb prints on stdout. Exactly one of
// the embedded results is set (their fields appear inline, as contract 1
// printed them), or Error for a failure. Contract is 0 in the answers of a
// contract 1 host, which did not print it.
type Reply struct {
	Contract int    `json:"contract"`
	ExitCode int    `json:"exitCode"`
	Error    string `json:"error,omitempty"`
	*Record
	*Status
	*Fetched
	*Health
	*VersionInfo
	*Rebooting
}

// Err is the reply's outcome as an error matching its exit code's sentinel.
func (r *Reply) Err() error {
	if r.ExitCode == ExitOK {
		return nil
	}
	msg := r.Error
	if msg == "" && r.Record != nil {
		msg = r.Record.Reason
	}
	return ErrorFor(r.ExitCode, msg)
}

// MarshalLine renders the reply as one line (with the newline).
func (r *Reply) MarshalLine() []byte {
	r.Contract = Contract
	b, err := json.Marshal(r)
	if err != nil { // only plain types inside: cannot happen
		b, _ = json.Marshal(Reply{Contract: Contract, ExitCode: ExitFailed, Error: err.Error()})
	}
	return append(b, '\n')
}

// ErrNoReply means a verb's output held no JSON line (not a deployer, or
// it died before answering).
var ErrNoReply = errors.New("no answer from the host's deployer")

// DecodeReply reads the last JSON object line of a verb's stdout. Lines
// that are not JSON objects (noise from a login shell) are skipped.
func DecodeReply(out []byte) (*Reply, error) {
	var last []byte
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64*1024), 4<<20)
	for sc.Scan() {
		if l := bytes.TrimSpace(sc.Bytes()); len(l) > 0 && l[0] == '{' {
			last = append(last[:0], l...)
		}
	}
	if last == nil {
		return nil, ErrNoReply
	}
	var r Reply
	if err := json.Unmarshal(last, &r); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoReply, err)
	}
	// A contract 1 host printed a record's exit code inside the record;
	// the embedded field is shadowed by Reply.ExitCode, which then holds it.
	if r.Record != nil {
		r.Record.ExitCode = r.ExitCode
	}
	return &r, nil
}
