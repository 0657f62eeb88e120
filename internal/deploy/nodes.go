// Package deploy is the push side of the deployer: it reads the fleet from
// a deploy-rs style `deploy` flake output, picks the hosts and mode for a
// run, and drives each host through check closure -> fetch -> activate ->
// health -> confirm -> pin, in parallel, reporting as it goes. It never
// execs anything itself: ssh goes through internal/remote and the cache is
// reached over HTTP, so the whole state machine runs against fakes in tests.
package deploy

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/bos55/concordia/pkg/narinfo"
)

// ErrSchema marks a deploy description that cannot be used.
var ErrSchema = errors.New("invalid deploy description")

// Defaults deploy-rs applies when a setting is absent at every level
// (src/deploy.rs, src/bin/activate.rs); Concordia keeps them so existing
// flakes behave the same.
const (
	DefaultConfirmTimeout    = 30 * time.Second
	DefaultActivationTimeout = 240 * time.Second
	DefaultTempPath          = "/tmp"
	DefaultDeployerPath      = "deployer"
)

// HealthCheck is one check run after activation and before the confirm;
// a failing check means no confirm, so the host rolls itself back.
// Exactly one of Command (run on the host over ssh, split on spaces, no
// shell) and URL (fetched by the deployer, any 2xx passes) is set. Behind
// the forced-command gate the deploy key runs only the deployer's verbs,
// so there a Command check is refused: use a URL.
type HealthCheck struct {
	Command string `json:"command,omitempty"`
	URL     string `json:"url,omitempty"`
}

// Settings are the deploy-rs "generic settings" plus Concordia's extras,
// after inheritance (profile > node > top) and defaults.
type Settings struct {
	SSHUser           string
	User              string
	SSHOpts           []string
	FastConnection    bool
	AutoRollback      bool
	MagicRollback     bool
	ConfirmTimeout    time.Duration
	ActivationTimeout time.Duration
	TempPath          string
	Sudo              string
	RemoteBuild       bool
	InteractiveSudo   bool

	Tags         []string
	DeployerPath string
	HealthChecks []HealthCheck
	TrustedKeys  []string

	// Canary nodes are deployed before all others, and a failure there
	// stops the rollout; Wave orders the others, lowest first (default 0).
	Canary bool
	Wave   int

	// MaxUnavailable ("N" or "P%", "" unset) and MaxFailures (0 unset) are
	// fleet-wide: only the deploy attribute itself sets them, and every
	// node carries the same values, so they travel with the nodes through
	// the selection into whatever deploys them. Command-line flags win.
	MaxUnavailable string
	MaxFailures    int
}

// Node is one host of the fleet with the system profile Concordia deploys.
type Node struct {
	Name     string
	Hostname string
	// Path is profiles.system.path: the NixOS toplevel to activate, i.e.
	// `path = self.nixosConfigurations.<name>.config.system.build.toplevel;`
	// (not deploy-rs's activate wrapper, which CheckPath refuses). Empty
	// when the node has no system profile (such a node cannot be deployed).
	Path string
	// OtherProfiles lists profiles other than "system", which Concordia
	// does not deploy (deploy-rs would).
	OtherProfiles []string
	Settings      Settings
}

// rawSettings is one level of settings as written in the flake. Pointers
// tell "absent" from "false" so inheritance works as in deploy-rs's merge.
type rawSettings struct {
	SSHUser           *string       `json:"sshUser"`
	User              *string       `json:"user"`
	SSHOpts           []string      `json:"sshOpts"`
	FastConnection    *bool         `json:"fastConnection"`
	AutoRollback      *bool         `json:"autoRollback"`
	MagicRollback     *bool         `json:"magicRollback"`
	ConfirmTimeout    *uint16       `json:"confirmTimeout"`
	ActivationTimeout *uint16       `json:"activationTimeout"`
	TempPath          *string       `json:"tempPath"`
	Sudo              *string       `json:"sudo"`
	RemoteBuild       *bool         `json:"remoteBuild"`
	InteractiveSudo   *bool         `json:"interactiveSudo"`
	Tags              []string      `json:"tags"`
	DeployerPath      *string       `json:"deployerPath"`
	HealthChecks      []HealthCheck `json:"healthChecks"`
	TrustedKeys       []string      `json:"trustedKeys"`
	Canary            *bool         `json:"canary"`
	Wave              *int          `json:"wave"`
}

// knownKeys are the keys each level may carry; anything else is logged at
// debug and ignored, as serde does in deploy-rs.
var settingKeys = []string{"sshUser", "user", "sshOpts", "fastConnection", "autoRollback",
	"magicRollback", "confirmTimeout", "activationTimeout", "tempPath", "sudo", "remoteBuild",
	"interactiveSudo", "tags", "deployerPath", "healthChecks", "trustedKeys", "canary", "wave"}

// fleetKeys are the settings only the top level may carry.
var fleetKeys = []string{"maxUnavailable", "maxFailures"}

type rawProfile struct {
	rawSettings
	Path        string  `json:"path"`
	ProfilePath *string `json:"profilePath"`
}

type rawNode struct {
	rawSettings
	Hostname      string                     `json:"hostname"`
	Profiles      map[string]json.RawMessage `json:"profiles"`
	ProfilesOrder []string                   `json:"profilesOrder"`
}

type rawRoot struct {
	rawSettings
	Nodes map[string]json.RawMessage `json:"nodes"`
	// MaxUnavailable is a number or a "P%" string.
	MaxUnavailable json.RawMessage `json:"maxUnavailable"`
	MaxFailures    *int            `json:"maxFailures"`
}

// Parse reads the JSON of a flake's `deploy` output (what
// `nix eval --json .#deploy` prints) and returns its nodes sorted by name.
// Settings that do not apply to Concordia (fastConnection, remoteBuild,
// interactiveSudo, sudo, tempPath, profilePath, other profiles) are
// accepted and logged at debug.
func Parse(data []byte, log *slog.Logger) ([]Node, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var root rawRoot
	if err := strictUnmarshal(data, &root, log, "deploy", append(append(settingKeys, fleetKeys...), "nodes")); err != nil {
		return nil, err
	}
	maxUnavailable, err := root.maxUnavailable()
	if err != nil {
		return nil, err
	}
	if len(root.Nodes) == 0 {
		return nil, fmt.Errorf("%w: no nodes", ErrSchema)
	}
	nodes := make([]Node, 0, len(root.Nodes))
	for name, msg := range root.Nodes {
		var rn rawNode
		if err := strictUnmarshal(msg, &rn, log, "nodes."+name, append(settingKeys, "hostname", "profiles", "profilesOrder")); err != nil {
			return nil, err
		}
		if err := noFleetKeys(msg, "nodes."+name); err != nil {
			return nil, err
		}
		if rn.Hostname == "" {
			return nil, fmt.Errorf("%w: nodes.%s.hostname is not set", ErrSchema, name)
		}
		n := Node{Name: name, Hostname: rn.Hostname}
		levels := []*rawSettings{&rn.rawSettings, &root.rawSettings}
		for pname, pmsg := range rn.Profiles {
			var rp rawProfile
			if err := strictUnmarshal(pmsg, &rp, log, "nodes."+name+".profiles."+pname, append(settingKeys, "path", "profilePath")); err != nil {
				return nil, err
			}
			if err := noFleetKeys(pmsg, "nodes."+name+".profiles."+pname); err != nil {
				return nil, err
			}
			if pname != "system" {
				n.OtherProfiles = append(n.OtherProfiles, pname)
				log.Debug("profile ignored: Concordia deploys only the system profile", "node", name, "profile", pname)
				continue
			}
			if rp.Path == "" {
				return nil, fmt.Errorf("%w: nodes.%s.profiles.system.path is not set", ErrSchema, name)
			}
			if rp.ProfilePath != nil && *rp.ProfilePath != "/nix/var/nix/profiles/system" {
				log.Debug("profilePath ignored: the system profile is always /nix/var/nix/profiles/system", "node", name, "profilePath", *rp.ProfilePath)
			}
			n.Path = rp.Path
			levels = append([]*rawSettings{&rp.rawSettings}, levels...)
		}
		sort.Strings(n.OtherProfiles)
		if n.Settings, err = merge(levels); err != nil {
			return nil, fmt.Errorf("%w: nodes.%s: %v", ErrSchema, name, err)
		}
		n.Settings.MaxUnavailable = maxUnavailable
		if root.MaxFailures != nil {
			n.Settings.MaxFailures = *root.MaxFailures
		}
		for _, key := range ignoredSettings(levels) {
			log.Debug("setting has no effect in Concordia", "node", name, "setting", key)
		}
		nodes = append(nodes, n)
	}
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].Name < nodes[j].Name })
	return nodes, nil
}

// maxUnavailable reads the top level's maxUnavailable, a number of hosts
// or a "P%" string, as the string ParseMaxUnavailable takes; "" when unset.
func (r *rawRoot) maxUnavailable() (string, error) {
	if r.MaxFailures != nil {
		if err := checkMaxFailures(*r.MaxFailures); err != nil {
			return "", fmt.Errorf("%w: %v", ErrSchema, err)
		}
	}
	if len(r.MaxUnavailable) == 0 || string(r.MaxUnavailable) == "null" {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(r.MaxUnavailable, &s); err != nil {
		var n json.Number
		if err := json.Unmarshal(r.MaxUnavailable, &n); err != nil {
			return "", fmt.Errorf("%w: maxUnavailable must be a number of hosts or a percentage string (\"25%%\"), got %s", ErrSchema, r.MaxUnavailable)
		}
		s = n.String()
	}
	if _, err := ParseMaxUnavailable(s, 1); err != nil {
		return "", fmt.Errorf("%w: %v", ErrSchema, err)
	}
	return s, nil
}

// noFleetKeys refuses a fleet-wide setting below the top level, where it
// would mean nothing.
func noFleetKeys(data []byte, where string) error {
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(data, &keys); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrSchema, where, err)
	}
	for _, k := range fleetKeys {
		if _, ok := keys[k]; ok {
			return fmt.Errorf("%w: %s.%s: %s is fleet-wide: set it on the deploy attribute itself", ErrSchema, where, k, k)
		}
	}
	return nil
}

// ParseFile reads nodes from a JSON file holding the `deploy` output.
func ParseFile(path string, log *slog.Logger) ([]Node, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read nodes %s: %w", path, err)
	}
	nodes, err := Parse(data, log)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return nodes, nil
}

// strictUnmarshal decodes one level and logs keys it does not know, so a
// typo (confirmTimout) is at least visible with --debug.
func strictUnmarshal(data []byte, v any, log *slog.Logger, where string, known []string) error {
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrSchema, where, err)
	}
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(data, &keys); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrSchema, where, err)
	}
	for k := range keys {
		found := false
		for _, kk := range known {
			if k == kk {
				found = true
				break
			}
		}
		if !found {
			log.Debug("unknown key ignored", "where", where, "key", k)
		}
	}
	return nil
}

// merge applies deploy-rs's rule: the first level (profile, node, top) that
// sets a value wins; sshOpts are appended in that order.
func merge(levels []*rawSettings) (Settings, error) {
	s := Settings{
		AutoRollback:      true,
		MagicRollback:     true,
		ConfirmTimeout:    DefaultConfirmTimeout,
		ActivationTimeout: DefaultActivationTimeout,
		TempPath:          DefaultTempPath,
		DeployerPath:      DefaultDeployerPath,
	}
	pick(levels, func(r *rawSettings) *string { return r.SSHUser }, &s.SSHUser)
	pick(levels, func(r *rawSettings) *string { return r.User }, &s.User)
	pick(levels, func(r *rawSettings) *string { return r.TempPath }, &s.TempPath)
	pick(levels, func(r *rawSettings) *string { return r.Sudo }, &s.Sudo)
	pick(levels, func(r *rawSettings) *string { return r.DeployerPath }, &s.DeployerPath)
	pick(levels, func(r *rawSettings) *bool { return r.FastConnection }, &s.FastConnection)
	pick(levels, func(r *rawSettings) *bool { return r.AutoRollback }, &s.AutoRollback)
	pick(levels, func(r *rawSettings) *bool { return r.MagicRollback }, &s.MagicRollback)
	pick(levels, func(r *rawSettings) *bool { return r.RemoteBuild }, &s.RemoteBuild)
	pick(levels, func(r *rawSettings) *bool { return r.InteractiveSudo }, &s.InteractiveSudo)
	pick(levels, func(r *rawSettings) *bool { return r.Canary }, &s.Canary)
	pick(levels, func(r *rawSettings) *int { return r.Wave }, &s.Wave)
	var secs uint16
	if pick(levels, func(r *rawSettings) *uint16 { return r.ConfirmTimeout }, &secs) {
		s.ConfirmTimeout = time.Duration(secs) * time.Second
	}
	if pick(levels, func(r *rawSettings) *uint16 { return r.ActivationTimeout }, &secs) {
		s.ActivationTimeout = time.Duration(secs) * time.Second
	}
	var list []string
	if pick(levels, func(r *rawSettings) *[]string { return setList(r.Tags) }, &list) {
		s.Tags = append([]string(nil), list...)
	}
	if pick(levels, func(r *rawSettings) *[]string { return setList(r.TrustedKeys) }, &list) {
		s.TrustedKeys = append([]string(nil), list...)
	}
	for _, l := range levels {
		s.SSHOpts = append(s.SSHOpts, l.SSHOpts...)
		if s.HealthChecks == nil && l.HealthChecks != nil {
			s.HealthChecks = append([]HealthCheck(nil), l.HealthChecks...)
		}
	}
	return s, s.validate()
}

// pick sets *dst to the value of the first level that sets one, and says
// whether one did.
func pick[T any](levels []*rawSettings, get func(*rawSettings) *T, dst *T) bool {
	for _, l := range levels {
		if v := get(l); v != nil {
			*dst = *v
			return true
		}
	}
	return false
}

// setList makes an unset (nil) list look unset to pick; an empty but
// set list ([]) still counts as set.
func setList(v []string) *[]string {
	if v == nil {
		return nil
	}
	return &v
}

// validate checks what merge cannot express in types.
func (s Settings) validate() error {
	for i, h := range s.HealthChecks {
		if (h.Command == "") == (h.URL == "") {
			return fmt.Errorf("healthChecks[%d]: set exactly one of command and url", i)
		}
	}
	if s.ConfirmTimeout <= 0 {
		return errors.New("confirmTimeout must be > 0")
	}
	if !filepath.IsAbs(s.DeployerPath) && strings.Contains(s.DeployerPath, "/") {
		return fmt.Errorf("deployerPath %q must be absolute or a bare name", s.DeployerPath)
	}
	return nil
}

// ignoredSettings names settings that are set somewhere but mean nothing
// to Concordia (it copies nothing from the deployer and asks for no password).
func ignoredSettings(levels []*rawSettings) []string {
	var out []string
	seen := map[string]bool{}
	add := func(k string) {
		if !seen[k] {
			seen[k] = true
			out = append(out, k)
		}
	}
	for _, l := range levels {
		if l.FastConnection != nil {
			add("fastConnection")
		}
		if l.RemoteBuild != nil {
			add("remoteBuild")
		}
		if l.InteractiveSudo != nil {
			add("interactiveSudo")
		}
		if l.TempPath != nil {
			add("tempPath")
		}
		if l.Sudo != nil {
			add("sudo")
		}
		if l.User != nil {
			add("user")
		}
	}
	return out
}

// activateWrapperHint is the fix for the most common migration mistake.
const activateWrapperHint = "Concordia activates the NixOS toplevel itself: set " +
	"profiles.system.path = self.nixosConfigurations.<name>.config.system.build.toplevel " +
	"instead of deploy-rs.lib.<system>.activate.nixos ..."

// CheckPath refuses what Concordia cannot activate: anything that is not a
// store path, and deploy-rs's activate wrapper (a symlinkJoin named
// "activatable-..." holding deploy-rs-activate and activate-rs). The files
// are only looked at when the path exists on this machine (CI built it).
func CheckPath(storeDir, p string) error {
	if p == "" {
		return fmt.Errorf("%w: no profiles.system.path", ErrSchema)
	}
	if dir, _, _, err := narinfo.ParseStorePath(p); err != nil || dir != storeDir {
		return fmt.Errorf("%w: %q is not a store path in %s", ErrSchema, p, storeDir)
	}
	base := filepath.Base(p)
	if strings.HasPrefix(base[33:], "activatable-") {
		return fmt.Errorf("%w: %s is a deploy-rs activate wrapper; %s", ErrSchema, p, activateWrapperHint)
	}
	for _, f := range []string{"deploy-rs-activate", "activate-rs"} {
		if _, err := os.Lstat(filepath.Join(p, f)); err == nil {
			return fmt.Errorf("%w: %s contains %s (a deploy-rs activate wrapper); %s", ErrSchema, p, f, activateWrapperHint)
		}
	}
	return nil
}
