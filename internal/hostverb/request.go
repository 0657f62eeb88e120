package hostverb

import (
	"fmt"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/bos55/concordia/pkg/narinfo"
)

// Verb names one host verb.
type Verb string

// The verbs. User verbs run as the deploy user in the gate itself; root
// verbs are handed to the root agent.
const (
	VerbVersion  Verb = "version"  // user: contract and program version
	VerbFetch    Verb = "fetch"    // user: substitute store paths through the host's daemon
	VerbActivate Verb = "activate" // root: lock, profile, switch-to-configuration, watchdog
	VerbConfirm  Verb = "confirm"  // root: stop a deploy's magic rollback (or --reject it)
	VerbWait     Verb = "wait"     // root: wait until a deploy has finished activating
	VerbStatus   Verb = "status"   // root: generations, test deploy, pending reboot, lock
	VerbRollback Verb = "rollback" // root: back to the previous generation now
	VerbHealth   Verb = "health"   // root: run the new system's own health checks (contract 2)
	VerbReboot   Verb = "reboot"   // root: answer the boot id, then reboot the host (contract 4)
)

// Request is one host verb with its parameters, as parsed from the wire
// and as handed to the root agent (JSON). Each verb uses only some fields;
// Validate refuses values in the others.
type Request struct {
	Verb           Verb          `json:"verb"`
	ID             string        `json:"id,omitempty"`                // activate, confirm, wait, health, rollback
	Mode           Mode          `json:"mode,omitempty"`              // activate
	Path           string        `json:"path,omitempty"`              // activate: the toplevel
	Paths          []string      `json:"paths,omitempty"`             // fetch
	ConfirmTimeout time.Duration `json:"confirmTimeout,omitempty"`    // activate
	Timeout        time.Duration `json:"timeout,omitempty"`           // wait, health
	MagicRollback  bool          `json:"magicRollback,omitempty"`     // activate
	AutoRollback   bool          `json:"autoRollback,omitempty"`      // activate
	KernelChange   string        `json:"kernelChange,omitempty"`      // activate: switch, boot, refuse (report: refuse, contract 1-2)
	NoCheck        bool          `json:"noCheck,omitempty"`           // activate: NIXOS_NO_CHECK=1 (contract 3)
	Install        bool          `json:"installBootloader,omitempty"` // activate: NIXOS_INSTALL_BOOTLOADER=1 (contract 3)
	Reject         bool          `json:"reject,omitempty"`            // confirm
	// Boot makes rollback set the boot default to Generation without
	// activating it (contract 4); Booted makes health run the checks of
	// the booted, running system instead of a deploy's (contract 4).
	Boot       bool `json:"boot,omitempty"`       // rollback
	Generation int  `json:"generation,omitempty"` // rollback --boot
	Booted     bool `json:"booted,omitempty"`     // health
}

// Kernel change policies of activate.
const (
	KernelSwitch = "switch" // switch anyway; reboot required, reported (contract 3 default)
	KernelBoot   = "boot"   // a switch becomes boot
	KernelRefuse = "refuse" // refuse, nothing changed (exit 5)
	KernelReport = "report" // contract 1-2's name and default: refuse
)

// Limits of the wire form.
const (
	MaxLine       = 8192 // bytes of one SSH command line
	MaxFetchPaths = 64
	maxValue      = 256
	// MaxGeneration bounds a generation number on the wire (nix-env's are
	// small counters; nine digits cannot overflow an int anywhere).
	MaxGeneration = 999999999
)

// flag is one flag of a verb: how it is written and where it goes.
type flag struct {
	name   string
	since  int // contract version that introduced the flag (0: the verb's)
	isBool bool
	// legacy flags are contract 1 forms (status --local --json): accepted
	// and ignored.
	legacy bool
	set    func(r *Request, v string) error
}

// spec says what one verb takes.
type spec struct {
	root bool
	// v1User: contract 1 push sides sent the verb without sudo (status
	// --local ran as the deploy user).
	v1User   bool
	since    int // contract version that introduced the verb
	flags    []flag
	minPaths int // positional store paths
	maxPaths int
	// fields are the Request fields the verb uses (besides Verb).
	fields []string
	// defaults fills what the verb defaults when a flag is absent.
	defaults func(r *Request)
}

var (
	fID = flag{name: "id", set: func(r *Request, v string) error { r.ID = v; return ValidID(v) }}
	// The duration flags check their bounds in Validate, which also sees
	// requests that come as JSON.
	fConfirmTimeout = flag{name: "confirm-timeout", set: func(r *Request, v string) (err error) {
		r.ConfirmTimeout, err = parseDuration(v)
		return err
	}}
	fTimeout = flag{name: "timeout", set: func(r *Request, v string) (err error) {
		r.Timeout, err = parseDuration(v)
		return err
	}}
	fMode         = flag{name: "mode", set: func(r *Request, v string) error { r.Mode = Mode(v); return ValidMode(v) }}
	fMagic        = flag{name: "magic-rollback", isBool: true, set: func(r *Request, v string) error { r.MagicRollback = v == "true"; return nil }}
	fAuto         = flag{name: "auto-rollback", isBool: true, set: func(r *Request, v string) error { r.AutoRollback = v == "true"; return nil }}
	fKernelChange = flag{name: "kernel-change", set: func(r *Request, v string) error { r.KernelChange = v; return validKernelChange(v) }}
	fNoCheck      = flag{name: "no-check", since: 3, isBool: true, set: func(r *Request, v string) error { r.NoCheck = v == "true"; return nil }}
	fInstall      = flag{name: "install-bootloader", since: 3, isBool: true, set: func(r *Request, v string) error { r.Install = v == "true"; return nil }}
	fReject       = flag{name: "reject", isBool: true, set: func(r *Request, v string) error { r.Reject = v == "true"; return nil }}
	fBoot         = flag{name: "boot", since: 4, isBool: true, set: func(r *Request, v string) error { r.Boot = v == "true"; return nil }}
	fBooted       = flag{name: "booted", since: 4, isBool: true, set: func(r *Request, v string) error { r.Booted = v == "true"; return nil }}
	fGeneration   = flag{name: "generation", since: 4, set: func(r *Request, v string) (err error) {
		r.Generation, err = parseGeneration(v)
		return err
	}}
	fLocal = flag{name: "local", isBool: true, legacy: true, set: func(*Request, string) error { return nil }}
	fJSON  = flag{name: "json", isBool: true, legacy: true, set: func(*Request, string) error { return nil }}
)

var specs = map[Verb]spec{
	VerbVersion: {since: 1},
	VerbFetch:   {since: 1, minPaths: 1, maxPaths: MaxFetchPaths, fields: []string{"paths"}},
	VerbActivate: {root: true, since: 1, minPaths: 1, maxPaths: 1,
		flags:  []flag{fMode, fID, fConfirmTimeout, fMagic, fAuto, fKernelChange, fNoCheck, fInstall},
		fields: []string{"id", "mode", "path", "confirmTimeout", "magicRollback", "autoRollback", "kernelChange", "noCheck", "installBootloader"},
		defaults: func(r *Request) {
			r.Mode, r.ConfirmTimeout, r.MagicRollback, r.AutoRollback, r.KernelChange = Switch, 30*time.Second, true, true, KernelSwitch
		}},
	VerbConfirm:  {root: true, since: 1, flags: []flag{fID, fReject}, fields: []string{"id", "reject"}},
	VerbWait:     {root: true, since: 1, flags: []flag{fID, fTimeout}, fields: []string{"id", "timeout"}, defaults: func(r *Request) { r.Timeout = 10 * time.Minute }},
	VerbStatus:   {root: true, v1User: true, since: 1, flags: []flag{fLocal, fJSON}},
	VerbRollback: {root: true, since: 1, flags: []flag{fLocal, fID, fBoot, fGeneration}, fields: []string{"id", "boot", "generation"}, defaults: func(r *Request) { r.ID = "rollback" }},
	VerbHealth:   {root: true, since: 2, flags: []flag{fID, fTimeout, fBooted}, fields: []string{"id", "timeout", "booted"}, defaults: func(r *Request) { r.Timeout = 30 * time.Second }},
	VerbReboot:   {root: true, since: 4, flags: []flag{fID}, fields: []string{"id"}},
}

// Root reports whether v runs as root (through the agent).
func (v Verb) Root() bool { return specs[v].root }

// Known reports whether v is a verb of this contract.
func (v Verb) Known() bool { _, ok := specs[v]; return ok }

// Verbs lists the verbs of this contract, sorted.
func Verbs() []Verb {
	var out []Verb
	for v := range specs {
		out = append(out, v)
	}
	slices.Sort(out)
	return out
}

func refusef(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrRefused, fmt.Sprintf(format, a...))
}

// SafeWord reports whether w may appear in a command line: letters, digits
// and "/._=:,@+-", nothing a shell would split or expand. The push side
// checks its arguments with it before sending, the gate refuses lines with
// anything else.
func SafeWord(w string) bool {
	if w == "" {
		return false
	}
	for i := 0; i < len(w); i++ {
		c := w[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("/._=:,@+-", c) >= 0) {
			return false
		}
	}
	return true
}

// ProgramWord reports whether w may name the deployer at the start of a
// command line: "deployer" or a clean absolute path ending in /deployer.
// Which one does not matter: the gate always runs itself, so a push side
// naming a newer deployer store path than the host runs still works.
func ProgramWord(w string) bool {
	if w == "deployer" {
		return true
	}
	return SafeWord(w) && path.IsAbs(w) && path.Clean(w) == w && path.Base(w) == "deployer"
}

// ParseCommand parses an SSH command line (SSH_ORIGINAL_COMMAND): words
// separated by spaces, `[sudo -n] PROGRAM VERB [FLAGS] [PATHS]`. It
// returns the request and the form the line used (1: the sudo form of
// contract 1; 2: the form of every later contract), or an error wrapping
// ErrRefused that says why.
func ParseCommand(line string) (Request, int, error) {
	switch {
	case line == "":
		return Request{}, 0, refusef("no command (interactive logins are not allowed)")
	case len(line) > MaxLine:
		return Request{}, 0, refusef("command longer than %d bytes", MaxLine)
	}
	for i := 0; i < len(line); i++ {
		if c := line[i]; c != ' ' && !SafeWord(string(c)) {
			return Request{}, 0, refusef("character %q at byte %d is not allowed", c, i)
		}
	}
	// Only spaces separate words (the charset above has no tab or
	// newline); runs of them are one separator, as for a shell.
	var words []string
	for _, w := range strings.Split(line, " ") {
		if w != "" {
			words = append(words, w)
		}
	}
	if len(words) == 0 {
		return Request{}, 0, refusef("no command (interactive logins are not allowed)")
	}
	form := 2 // every contract since 2 shares the sudo-less form
	if words[0] == "sudo" {
		if len(words) < 2 || words[1] != "-n" {
			return Request{}, 0, refusef("sudo is accepted only as `sudo -n deployer VERB` (contract 1)")
		}
		words, form = words[2:], 1
	}
	if len(words) == 0 || !ProgramWord(words[0]) {
		return Request{}, 0, refusef("%q is not a deployer host verb", line)
	}
	if len(words) < 2 {
		return Request{}, 0, refusef("no verb after %s", words[0])
	}
	r, err := Parse(words[1:])
	if err != nil {
		return Request{}, 0, err
	}
	if form == 1 && !r.Verb.Root() {
		return Request{}, 0, refusef("%s runs as the deploy user: drop sudo -n", r.Verb)
	}
	return r, form, nil
}

// Parse parses the words after the program name: a verb, its flags (each
// at most once; value flags as `--name VALUE`, bool flags as `--name` or
// `--name=true|false`) and then its store paths. Defaults are filled in and
// the result is validated against /nix/store.
func Parse(words []string) (Request, error) {
	if len(words) == 0 {
		return Request{}, refusef("no verb")
	}
	v := Verb(words[0])
	sp, ok := specs[v]
	if !ok {
		return Request{}, refusef("%q is not a host verb (verbs: %s)", words[0], verbList())
	}
	r := Request{Verb: v}
	if sp.defaults != nil {
		sp.defaults(&r)
	}
	rest, err := parseFlags(v, sp, &r, words[1:])
	if err != nil {
		return Request{}, err
	}
	for _, p := range rest {
		if strings.HasPrefix(p, "-") {
			return Request{}, refusef("%s: flags go before the store paths: %q", v, p)
		}
	}
	if len(rest) < sp.minPaths || len(rest) > sp.maxPaths {
		return Request{}, refusef("%s takes %s, got %d argument(s)", v, pathCount(sp), len(rest))
	}
	if v == VerbActivate {
		r.Path = rest[0]
	} else if len(rest) > 0 {
		r.Paths = rest
	}
	if err := r.Validate(DefaultStoreDir); err != nil {
		return Request{}, fmt.Errorf("%w: %w", ErrRefused, err)
	}
	return r, nil
}

func findFlag(fs []flag, name string) (flag, bool) {
	for _, f := range fs {
		if f.name == name {
			return f, true
		}
	}
	return flag{}, false
}

func verbList() string {
	var s []string
	for _, v := range Verbs() {
		s = append(s, string(v))
	}
	return strings.Join(s, ", ")
}

func pathCount(sp spec) string {
	switch {
	case sp.maxPaths == 0:
		return "no arguments"
	case sp.minPaths == sp.maxPaths:
		return fmt.Sprintf("exactly %d store path", sp.minPaths)
	}
	return fmt.Sprintf("%d to %d store paths", sp.minPaths, sp.maxPaths)
}

// DefaultStoreDir is where the store paths of requests must be.
const DefaultStoreDir = "/nix/store"

// Bounds of the durations a request may carry.
const (
	MinConfirmTimeout = time.Second
	MaxConfirmTimeout = 24 * time.Hour
	MaxWait           = 24 * time.Hour
	MaxHealth         = time.Hour
)

// Validate checks every field the verb uses and that the others are empty;
// errors wrap ErrInvalid. storeDir is the store the paths must be in.
func (r *Request) Validate(storeDir string) error {
	sp, ok := specs[r.Verb]
	if !ok {
		return fmt.Errorf("%w: %q is not a host verb", ErrInvalid, r.Verb)
	}
	for _, f := range r.setFields() {
		if !slices.Contains(sp.fields, f) {
			return fmt.Errorf("%w: %s takes no %s", ErrInvalid, r.Verb, f)
		}
	}
	if slices.Contains(sp.fields, "id") {
		if err := ValidID(r.ID); err != nil {
			return err
		}
	}
	switch r.Verb {
	case VerbFetch:
		if len(r.Paths) < 1 || len(r.Paths) > MaxFetchPaths {
			return fmt.Errorf("%w: fetch takes 1 to %d store paths", ErrInvalid, MaxFetchPaths)
		}
		for _, p := range r.Paths {
			if err := ValidStorePath(storeDir, p); err != nil {
				return err
			}
		}
	case VerbActivate:
		if err := ValidMode(string(r.Mode)); err != nil {
			return err
		}
		if err := ValidStorePath(storeDir, r.Path); err != nil {
			return err
		}
		if r.ConfirmTimeout < MinConfirmTimeout || r.ConfirmTimeout > MaxConfirmTimeout {
			return fmt.Errorf("%w: confirm timeout %s must be between %s and %s", ErrInvalid, r.ConfirmTimeout, MinConfirmTimeout, MaxConfirmTimeout)
		}
		if err := validKernelChange(r.KernelChange); err != nil {
			return err
		}
	case VerbWait:
		if r.Timeout < time.Second || r.Timeout > MaxWait {
			return fmt.Errorf("%w: wait timeout %s must be between 1s and %s", ErrInvalid, r.Timeout, MaxWait)
		}
	case VerbHealth:
		if r.Timeout < time.Second || r.Timeout > MaxHealth {
			return fmt.Errorf("%w: health timeout %s must be between 1s and %s", ErrInvalid, r.Timeout, MaxHealth)
		}
	case VerbRollback:
		// A boot default is set to a named generation, and only so: a
		// switch rollback goes to the previous one, as it always did.
		switch {
		case r.Boot && r.Generation == 0:
			return fmt.Errorf("%w: rollback --boot needs --generation N", ErrInvalid)
		case !r.Boot && r.Generation != 0:
			return fmt.Errorf("%w: rollback --generation goes with --boot", ErrInvalid)
		case r.Generation < 0 || r.Generation > MaxGeneration:
			return fmt.Errorf("%w: generation %d must be between 1 and %d", ErrInvalid, r.Generation, MaxGeneration)
		}
	}
	return nil
}

// setFields names the fields of r that are not zero.
func (r *Request) setFields() []string {
	var out []string
	add := func(set bool, name string) {
		if set {
			out = append(out, name)
		}
	}
	add(r.ID != "", "id")
	add(r.Mode != "", "mode")
	add(r.Path != "", "path")
	add(len(r.Paths) > 0, "paths")
	add(r.ConfirmTimeout != 0, "confirmTimeout")
	add(r.Timeout != 0, "timeout")
	add(r.MagicRollback, "magicRollback")
	add(r.AutoRollback, "autoRollback")
	add(r.KernelChange != "", "kernelChange")
	add(r.NoCheck, "noCheck")
	add(r.Install, "installBootloader")
	add(r.Reject, "reject")
	add(r.Boot, "boot")
	add(r.Generation != 0, "generation")
	add(r.Booted, "booted")
	return out
}

// Encode returns the command line words of r in the form of contract
// version v, starting with the program name. A verb the version lacks is
// ErrUnsupported.
func (r *Request) Encode(v int) ([]string, error) {
	sp, ok := specs[r.Verb]
	switch {
	case !ok:
		return nil, fmt.Errorf("%w: %q is not a host verb", ErrInvalid, r.Verb)
	case v < MinContract || v > Contract:
		return nil, fmt.Errorf("%w: contract %d (this deployer speaks %d to %d)", ErrUnsupported, v, MinContract, Contract)
	case sp.since > v:
		return nil, fmt.Errorf("%w: %s needs contract %d, the host speaks %d", ErrUnsupported, r.Verb, sp.since, v)
	}
	w := []string{"deployer", string(r.Verb)}
	if v == 1 && sp.root && !sp.v1User {
		w = append([]string{"sudo", "-n"}, w...)
	}
	val := func(name, value string) { w = append(w, "--"+name, value) }
	switch r.Verb {
	case VerbActivate:
		val("mode", string(r.Mode))
		val("id", r.ID)
		val("confirm-timeout", r.ConfirmTimeout.String())
		w = append(w, fmt.Sprintf("--magic-rollback=%t", r.MagicRollback), fmt.Sprintf("--auto-rollback=%t", r.AutoRollback))
		kc, err := kernelChangeFor(r.KernelChange, v)
		if err != nil {
			return nil, err
		}
		if kc != "" {
			val("kernel-change", kc)
		}
		if r.NoCheck || r.Install {
			if v < 3 {
				return nil, fmt.Errorf("%w: --no-check and --install-bootloader need contract 3, the host speaks %d", ErrUnsupported, v)
			}
			if r.NoCheck {
				w = append(w, "--no-check")
			}
			if r.Install {
				w = append(w, "--install-bootloader")
			}
		}
		w = append(w, r.Path)
	case VerbConfirm:
		val("id", r.ID)
		if r.Reject {
			w = append(w, "--reject")
		}
	case VerbWait, VerbHealth:
		val("id", r.ID)
		val("timeout", r.Timeout.String())
		if r.Booted {
			if v < 4 {
				return nil, fmt.Errorf("%w: health --booted needs contract 4, the host speaks %d", ErrUnsupported, v)
			}
			w = append(w, "--booted")
		}
	case VerbReboot:
		val("id", r.ID)
	case VerbStatus:
		if v == 1 {
			w = append(w, "--local", "--json")
		}
	case VerbRollback:
		if v == 1 {
			w = append(w, "--local")
		}
		if r.ID != "" {
			val("id", r.ID)
		}
		if r.Boot {
			if v < 4 {
				return nil, fmt.Errorf("%w: rollback --boot --generation needs contract 4, the host speaks %d", ErrUnsupported, v)
			}
			w = append(w, "--boot")
			val("generation", strconv.Itoa(r.Generation))
		}
	case VerbFetch:
		w = append(w, r.Paths...)
	}
	for _, x := range w {
		if !SafeWord(x) {
			return nil, fmt.Errorf("%w: %q cannot be sent (letters, digits and /._=:,@+- only)", ErrInvalid, x)
		}
	}
	return w, nil
}

var idRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9-]{0,63}$`)

// ValidID checks a deploy id: [A-Za-z0-9][A-Za-z0-9-]{0,63}.
func ValidID(id string) error {
	if !idRE.MatchString(id) {
		return fmt.Errorf("%w: deploy id %q must match [A-Za-z0-9][A-Za-z0-9-]{0,63}", ErrInvalid, id)
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

func validKernelChange(k string) error {
	switch k {
	case KernelSwitch, KernelBoot, KernelRefuse, KernelReport:
		return nil
	}
	return fmt.Errorf("%w: kernel-change %q must be switch, boot or refuse", ErrInvalid, k)
}

// kernelChangeFor is the --kernel-change value to send a host of contract
// v ("" for its default). Contract 1-2 hosts know report (their default:
// refuse) and boot; they cannot switch into a new kernel.
func kernelChangeFor(k string, v int) (string, error) {
	if v >= 3 {
		if k == KernelSwitch || k == "" {
			return "", nil // the default
		}
		if k == KernelReport {
			return KernelRefuse, nil
		}
		return k, nil
	}
	switch k {
	case KernelBoot:
		return KernelBoot, nil
	case KernelRefuse, KernelReport:
		return KernelReport, nil
	}
	return "", nil // the host's default: it refuses a kernel change
}

// ValidStorePath checks that p is exactly storeDir/<32 nix32 chars>-<name>
// with a name Nix accepts (narinfo.ParseStorePath): no subpath, no "..",
// nothing a shell or a path walk could abuse.
func ValidStorePath(storeDir, p string) error {
	if storeDir == "" {
		storeDir = DefaultStoreDir
	}
	dir, _, _, err := narinfo.ParseStorePath(p)
	if err != nil || dir != storeDir {
		return fmt.Errorf("%w: %q is not a store path under %s", ErrInvalid, p, storeDir)
	}
	return nil
}

var generationRE = regexp.MustCompile(`^[1-9][0-9]{0,8}$`)

// parseGeneration accepts a profile generation number: 1 to
// MaxGeneration, decimal, no sign, no leading zero.
func parseGeneration(s string) (int, error) {
	if !generationRE.MatchString(s) {
		return 0, fmt.Errorf("%w: generation %q must be a number from 1 to %d", ErrInvalid, s, MaxGeneration)
	}
	return strconv.Atoi(s)
}

var durationRE = regexp.MustCompile(`^([0-9]{1,9}(\.[0-9]{1,9})?(h|m|s|ms))+$`)

// parseDuration accepts what time.Duration.String writes for the bounds
// of a request (e.g. 30s, 1m30s, 1.5s), and nothing exotic.
func parseDuration(s string) (time.Duration, error) {
	if len(s) > 32 || !durationRE.MatchString(s) {
		return 0, fmt.Errorf("%w: duration %q (write e.g. 30s or 1m30s)", ErrInvalid, s)
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%w: duration %q: %v", ErrInvalid, s, err)
	}
	return d, nil
}

// parseFlags sets r from the flags at the start of words and returns the
// words after them (the store paths).
func parseFlags(v Verb, sp spec, r *Request, words []string) ([]string, error) {
	seen := map[string]bool{}
	rest := words
	for len(rest) > 0 && strings.HasPrefix(rest[0], "-") {
		w := rest[0]
		rest = rest[1:]
		name, val, hasVal := strings.Cut(strings.TrimPrefix(w, "--"), "=")
		if !strings.HasPrefix(w, "--") || name == "" {
			return nil, refusef("%s: %q: flags are written --name", v, w)
		}
		f, ok := findFlag(sp.flags, name)
		if !ok {
			return nil, refusef("%s takes no flag --%s", v, name)
		}
		if seen[name] {
			return nil, refusef("%s: --%s given twice", v, name)
		}
		seen[name] = true
		switch {
		case f.legacy && hasVal:
			return nil, refusef("%s: --%s takes no value", v, name)
		case f.isBool && !hasVal:
			val = "true"
		case f.isBool && val != "true" && val != "false":
			return nil, refusef("%s: --%s takes no value but =true or =false", v, name)
		case !f.isBool && hasVal:
			return nil, refusef("%s: write --%s VALUE, not --%s=VALUE", v, name, name)
		case !f.isBool:
			if len(rest) == 0 || strings.HasPrefix(rest[0], "-") {
				return nil, refusef("%s: --%s needs a value", v, name)
			}
			val, rest = rest[0], rest[1:]
			if len(val) > maxValue {
				return nil, refusef("%s: --%s value longer than %d bytes", v, name, maxValue)
			}
		}
		if err := f.set(r, val); err != nil {
			return nil, refusef("%s: --%s: %v", v, name, err)
		}
	}
	return rest, nil
}
