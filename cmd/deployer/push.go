package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/term"

	"github.com/bos55/concordia/internal/cli"
	"github.com/bos55/concordia/internal/closure"
	"github.com/bos55/concordia/internal/deploy"
	"github.com/bos55/concordia/internal/hostverb"
	"github.com/bos55/concordia/internal/nixcli"
	"github.com/bos55/concordia/internal/remote"
	"github.com/bos55/concordia/pkg/narinfo"
)

// pushSideCommands: push, status, rollback, run from CI or a workstation.
// They talk to hosts only through the host verbs over ssh; nothing here is
// reachable from a host's gate.
func pushSideCommands() []*cli.Command {
	return []*cli.Command{pushCmd(), statusCmd(), rollbackCmd()}
}

// strList is a repeatable string flag.
type strList []string

func (s *strList) String() string     { return strings.Join(*s, ",") }
func (s *strList) Set(v string) error { *s = append(*s, v); return nil }

// fleetFlags says where the nodes come from.
type fleetFlags struct {
	flake string
	file  string
	debug bool
}

func (f *fleetFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.flake, "flake", ".", "flake whose `deploy` output lists the nodes (nix eval --json FLAKE#deploy)")
	fs.StringVar(&f.file, "file", "", "read the nodes from this JSON file (the deploy output) instead of the flake")
	fs.BoolVar(&f.debug, "debug", false, "log debug messages (ssh commands, ignored settings)")
}

func (f *fleetFlags) log(env *cli.Env) *slog.Logger {
	lvl := slog.LevelInfo
	if f.debug {
		lvl = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(env.Stderr, &slog.HandlerOptions{Level: lvl}))
}

// connect reads the nodes, keeps those named by args (names, @tags,
// globs) and opens the ssh runner that status and rollback talk through.
func (f *fleetFlags) connect(ctx context.Context, env *cli.Env, args []string) ([]deploy.Node, *remote.SSH, error) {
	log := f.log(env)
	all, err := f.nodes(ctx, log)
	if err != nil {
		return nil, nil, err
	}
	nodes, err := deploy.Select(all, strings.Join(args, ","))
	if err != nil {
		return nil, nil, err
	}
	ssh, err := remote.New(log)
	if err != nil {
		return nil, nil, err
	}
	return nodes, ssh, nil
}

func (f *fleetFlags) nodes(ctx context.Context, log *slog.Logger) ([]deploy.Node, error) {
	if f.file != "" {
		return deploy.ParseFile(f.file, log)
	}
	ref := f.flake
	if !strings.Contains(ref, "#") {
		ref += "#deploy"
	}
	data, err := (&nixcli.Exec{}).EvalJSON(ctx, ref)
	if err != nil {
		return nil, err
	}
	nodes, err := deploy.Parse(data, log)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ref, err)
	}
	return nodes, nil
}

type pushOpts struct {
	fleet        fleetFlags
	on           string
	mode         string
	branch       string
	cache        string
	trustedKeys  strList
	keyFiles     strList
	tokenFile    string
	netrcFile    string
	parallel     int
	kernelChange string
	jsonFile     string
	dryRun       bool
	id           string
	noPin        bool

	// deploy-rs's command-line overrides, applied to every selected node.
	sshUser        string
	sshOpts        string
	confirmTimeout time.Duration
	magicRollback  optBool
	autoRollback   optBool
}

// optBool is a bool flag that remembers whether it was given, so an
// override applies only when asked for.
type optBool struct{ set, v bool }

func (b *optBool) String() string {
	if b == nil || !b.set {
		return ""
	}
	return strconv.FormatBool(b.v)
}
func (b *optBool) Set(s string) error {
	v, err := strconv.ParseBool(s)
	b.set, b.v = err == nil, v
	return err
}
func (b *optBool) IsBoolFlag() bool { return true }

// override applies the command-line settings to the nodes, as deploy-rs's
// flags of the same names do.
func (o pushOpts) override(nodes []deploy.Node) {
	for i := range nodes {
		s := &nodes[i].Settings
		if o.sshUser != "" {
			s.SSHUser = o.sshUser
		}
		if o.sshOpts != "" {
			s.SSHOpts = strings.Fields(o.sshOpts)
		}
		if o.confirmTimeout > 0 {
			s.ConfirmTimeout = o.confirmTimeout
		}
		if o.magicRollback.set {
			s.MagicRollback = o.magicRollback.v
		}
		if o.autoRollback.set {
			s.AutoRollback = o.autoRollback.v
		}
	}
}

func pushCmd() *cli.Command {
	var o pushOpts
	return &cli.Command{
		Name:  "push",
		Usage: "[flags]",
		Short: "deploy systems from the cache to the selected nodes, in parallel, with magic rollback",
		Long: `Reads the nodes from the flake's deploy output (deploy-rs schema) or --file, checks that each
node's system closure is in the cache (--cache) and signed by a trusted key, then on each host over
ssh: deployer fetch (the host substitutes from its cache), deployer activate, health checks,
and a confirm over a fresh ssh login. Exit status is non-zero if any host failed, was refused or
rolled back.

profiles.system.path must be the NixOS toplevel itself:
  path = self.nixosConfigurations.NAME.config.system.build.toplevel;
not deploy-rs.lib.<system>.activate.nixos (its wrapper is refused with this hint).

--branch maps CI branches: main -> switch on every node, test-NODE -> test on NODE alone,
anything else -> nothing to do (exit 0).`,
		Flags: func(fs *flag.FlagSet) {
			o.fleet.register(fs)
			fs.StringVar(&o.on, "on", "", "nodes to deploy: comma-separated names, @tags and globs (default: all)")
			fs.StringVar(&o.mode, "mode", "switch", "switch, test, boot or dry-activate")
			fs.StringVar(&o.branch, "branch", "", "CI branch: main -> switch everywhere, test-NODE -> test on NODE, else nothing")
			fs.StringVar(&o.cache, "cache", "", "binary cache URL the hosts substitute from (checked before any host is touched)")
			fs.Var(&o.trustedKeys, "trusted-key", "public key (name:base64) a closure must be signed by (repeatable)")
			fs.Var(&o.keyFiles, "cache-key-file", "file holding a trusted public key (repeatable)")
			fs.StringVar(&o.tokenFile, "cache-token-file", "", "file with a bearer token for a private cache (also used to pin)")
			fs.StringVar(&o.netrcFile, "netrc-file", "", "netrc whose password for the cache's host is the cache token (as Nix's netrc-file)")
			fs.IntVar(&o.parallel, "parallel", 0, "hosts deployed at once (0: all)")
			fs.StringVar(&o.kernelChange, "kernel-change", "", "on a kernel/initrd change: report (default on the host) or boot")
			fs.StringVar(&o.jsonFile, "json", "", "write a machine-readable report (steps, timings, results) to this file")
			fs.BoolVar(&o.dryRun, "dry-run", false, "print the plan and touch nothing")
			fs.StringVar(&o.id, "id", "", "deploy id (default: generated)")
			fs.BoolVar(&o.noPin, "no-pin", false, "do not pin deployed systems in the cache")
			fs.StringVar(&o.sshUser, "ssh-user", "", "override sshUser of every node")
			fs.StringVar(&o.sshOpts, "ssh-opts", "", "override sshOpts of every node (split on spaces)")
			fs.DurationVar(&o.confirmTimeout, "confirm-timeout", 0, "override confirmTimeout of every node (e.g. 45s)")
			fs.Var(&o.magicRollback, "magic-rollback", "override magicRollback of every node (true|false)")
			fs.Var(&o.autoRollback, "auto-rollback", "override autoRollback of every node (true|false)")
		},
		Run: func(ctx context.Context, env *cli.Env, args []string) error {
			return runPush(ctx, env, o, args)
		},
	}
}

func newID() string {
	var b [4]byte
	rand.Read(b[:])
	return "d-" + time.Now().UTC().Format("20060102-150405") + "-" + hex.EncodeToString(b[:])
}

func readToken(path string) (string, error) {
	if path == "" {
		return "", nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("cache token: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

func runPush(ctx context.Context, env *cli.Env, o pushOpts, args []string) error {
	if len(args) > 0 {
		return cli.Usagef("unexpected arguments %q (select nodes with --on)", args)
	}
	log := o.fleet.log(env)
	mode, err := deploy.ParseMode(o.mode)
	if err != nil {
		return cli.Usagef("%v", err)
	}
	if o.kernelChange != "" && o.kernelChange != "report" && o.kernelChange != "boot" {
		return cli.Usagef("--kernel-change must be report or boot")
	}
	if o.id == "" {
		o.id = newID()
	}
	all, err := o.fleet.nodes(ctx, log)
	if err != nil {
		return err
	}
	var nodes []deploy.Node
	if o.branch != "" {
		if o.on != "" {
			return cli.Usagef("--branch and --on do not go together")
		}
		b, err := deploy.ForBranch(all, o.branch)
		if err != nil {
			return err
		}
		if len(b.Nodes) == 0 {
			fmt.Fprintf(env.Stderr, "nothing to deploy: %s\n", b.Reason)
			return nil
		}
		mode, nodes = b.Mode, b.Nodes
	} else if nodes, err = deploy.Select(all, o.on); err != nil {
		return err
	}
	o.override(nodes)
	for _, n := range nodes {
		if err := deploy.CheckPath("/nix/store", n.Path); err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
	}

	if o.dryRun {
		printPlan(env.Stdout, o, mode, nodes)
		return nil
	}
	if o.cache == "" {
		return cli.Usagef("--cache is required: every closure is checked in the cache before a host is touched")
	}
	token, err := readToken(o.tokenFile)
	if err != nil {
		return err
	}
	if token == "" && o.netrcFile != "" {
		if token, err = netrcToken(o.netrcFile, o.cache); err != nil {
			return err
		}
	}
	global, err := loadKeys(o.trustedKeys, o.keyFiles)
	if err != nil {
		return err
	}
	checkerFor, err := checkers(o.cache, token, global, nodes, log)
	if err != nil {
		return err
	}

	ssh, err := remote.New(log)
	if err != nil {
		return err
	}
	defer ssh.Close()

	var progress deploy.Progress
	var live *deploy.Live
	if f, ok := env.Stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) && !o.fleet.debug {
		names := make([]string, len(nodes))
		for i, n := range nodes {
			names[i] = n.Name
		}
		live = deploy.NewLive(env.Stderr, names, 200*time.Millisecond)
		progress = live
	} else {
		progress = deploy.NewLines(env.Stderr)
	}
	opts := deploy.Options{
		Mode: mode, KernelChange: o.kernelChange, Parallel: o.parallel, ID: o.id,
		Remote: ssh, Checker: checkerFor, Log: log, Progress: progress,
	}
	if !o.noPin {
		opts.Pins = &deploy.HTTPPinner{Cache: o.cache, Token: token, Log: log, Note: "deployer push " + o.id}
	}
	fmt.Fprintf(env.Stderr, "deploy %s: %s on %d node(s)\n", o.id, mode, len(nodes))
	rep := deploy.Run(ctx, nodes, opts)
	if live != nil {
		live.Close()
	}
	if o.jsonFile != "" {
		if err := writeJSON(o.jsonFile, rep); err != nil {
			log.Error("write report", "err", err)
		}
	}
	printSummary(env.Stderr, rep)
	return rep.Err()
}

// netrcToken returns the password netrc holds for the cache's host: the
// cache accepts its token both as a Bearer token and as a Basic password,
// so the netrc CI already gives `nix copy` serves the deployer too.
func netrcToken(path, cache string) (string, error) {
	u, err := url.Parse(cache)
	if err != nil {
		return "", cli.Usagef("--cache %q: %v", cache, err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("netrc: %w", err)
	}
	words := strings.Fields(string(b))
	var machine, def string
	cur := ""
	for i := 0; i+1 < len(words); i++ {
		switch words[i] {
		case "machine":
			cur = words[i+1]
			i++
		case "default":
			cur = "\x00default"
		case "password":
			if cur == u.Hostname() && machine == "" {
				machine = words[i+1]
			}
			if cur == "\x00default" && def == "" {
				def = words[i+1]
			}
			i++
		}
	}
	if machine != "" {
		return machine, nil
	}
	return def, nil
}

func loadKeys(keys, files []string) ([]narinfo.PublicKey, error) {
	var out []narinfo.PublicKey
	for _, k := range keys {
		pk, err := narinfo.ParsePublicKey(k)
		if err != nil {
			return nil, cli.Usagef("--trusted-key %q: %v", k, err)
		}
		out = append(out, pk)
	}
	for _, f := range files {
		pk, err := narinfo.LoadPublicKeyFile(f)
		if err != nil {
			return nil, fmt.Errorf("--cache-key-file: %w", err)
		}
		out = append(out, pk)
	}
	return out, nil
}

// checkers builds one closure checker per distinct trusted key set (nodes
// may add trustedKeys); all share the HTTP client and the narinfo memo only
// within a key set, which is the common case of one set for the fleet.
func checkers(cache, token string, global []narinfo.PublicKey, nodes []deploy.Node, log *slog.Logger) (func(deploy.Node) deploy.Checker, error) {
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	bySet := map[string]*closure.Checker{}
	for _, n := range nodes {
		keys := append([]narinfo.PublicKey(nil), global...)
		for _, k := range n.Settings.TrustedKeys {
			pk, err := narinfo.ParsePublicKey(k)
			if err != nil {
				return nil, fmt.Errorf("node %s trustedKeys: %w", n.Name, err)
			}
			keys = append(keys, pk)
		}
		if len(keys) == 0 {
			return nil, cli.Usagef("no trusted key for node %s: give --trusted-key or --cache-key-file (or trustedKeys in the flake)", n.Name)
		}
		id := keySet(keys)
		if bySet[id] == nil {
			bySet[id] = &closure.Checker{Cache: cache, Client: client, Token: token, Trusted: keys, Workers: 32, Log: log}
		}
	}
	return func(n deploy.Node) deploy.Checker {
		keys := append([]narinfo.PublicKey(nil), global...)
		for _, k := range n.Settings.TrustedKeys {
			pk, _ := narinfo.ParsePublicKey(k)
			keys = append(keys, pk)
		}
		return bySet[keySet(keys)]
	}, nil
}

func keySet(keys []narinfo.PublicKey) string {
	s := make([]string, len(keys))
	for i, k := range keys {
		s[i] = k.String()
	}
	sort.Strings(s)
	return strings.Join(s, " ")
}

func printPlan(w io.Writer, o pushOpts, mode hostverb.Mode, nodes []deploy.Node) {
	par := "all"
	if o.parallel > 0 {
		par = fmt.Sprint(o.parallel)
	}
	fmt.Fprintf(w, "plan: %s on %d node(s), parallel %s, cache %s\n", mode, len(nodes), par, orNone(o.cache))
	for _, n := range nodes {
		s := n.Settings
		dest := n.Hostname
		if s.SSHUser != "" {
			dest = s.SSHUser + "@" + dest
		}
		fmt.Fprintf(w, "  %s (%s)\n    system   %s\n    ssh      %s %s\n", n.Name, dest, n.Path, strings.Join(s.SSHOpts, " "), dest)
		fmt.Fprintf(w, "    steps    closure check, deployer fetch, deployer activate --mode %s", mode)
		if s.MagicRollback && mode.NeedsConfirm() {
			fmt.Fprintf(w, ", %d health check(s), confirm within %s", len(s.HealthChecks), s.ConfirmTimeout)
		}
		fmt.Fprintf(w, "\n    rollback magic=%v auto=%v\n", s.MagicRollback, s.AutoRollback)
		if len(n.OtherProfiles) > 0 {
			fmt.Fprintf(w, "    ignored  profiles %s (Concordia deploys only the system profile)\n", strings.Join(n.OtherProfiles, ", "))
		}
	}
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

func printSummary(w io.Writer, rep *deploy.Report) {
	ok := len(rep.Hosts) - len(rep.Failed)
	fmt.Fprintf(w, "deploy %s: %d ok, %d not ok, %.1fs\n", rep.ID, ok, len(rep.Failed), rep.Millis/1000)
	for _, h := range rep.Hosts {
		if h.Result == deploy.OK {
			continue
		}
		fmt.Fprintf(w, "  %s: %s: %s\n", h.Node, strings.ToUpper(string(h.Result)), h.Error)
	}
}

// writeJSON publishes the report atomically, so a CI step reading it never
// sees half a file.
func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".report-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

type statusOpts struct {
	fleet fleetFlags
	json  bool
}

func statusCmd() *cli.Command {
	var o statusOpts
	return &cli.Command{
		Name:  "status",
		Usage: "[flags] [NODE|@TAG|GLOB ...]",
		Short: "show current, booted and boot-default generations, test deploy and pending reboot",
		Long: `Asks each selected node over ssh (the host verb status). On a host itself, run
'deployer host status'.`,
		Flags: func(fs *flag.FlagSet) {
			o.fleet.register(fs)
			fs.BoolVar(&o.json, "json", false, "print JSON")
		},
		Run: func(ctx context.Context, env *cli.Env, args []string) error {
			nodes, ssh, err := o.fleet.connect(ctx, env, args)
			if err != nil {
				return err
			}
			defer ssh.Close()
			rs := deploy.Status(ctx, ssh, nodes)
			if o.json {
				b, _ := json.MarshalIndent(rs, "", "  ")
				fmt.Fprintf(env.Stdout, "%s\n", b)
			} else {
				deploy.PrintStatus(env.Stdout, rs)
			}
			var bad []string
			for _, r := range rs {
				if r.Error != "" {
					bad = append(bad, r.Node)
				}
			}
			if len(bad) > 0 {
				return fmt.Errorf("no status from %s", strings.Join(bad, ", "))
			}
			return nil
		},
	}
}

type rollbackOpts struct {
	fleet fleetFlags
	id    string
}

func rollbackCmd() *cli.Command {
	var o rollbackOpts
	return &cli.Command{
		Name:  "rollback",
		Usage: "[flags] NODE...",
		Short: "switch nodes back to their previous generation now",
		Long: `Runs the host verb rollback on each named node over ssh: the host takes its lock (so it never
races a deploy), points the system profile at the previous generation and switches to it. On a
host itself, run 'deployer host rollback'.`,
		Flags: func(fs *flag.FlagSet) {
			o.fleet.register(fs)
			fs.StringVar(&o.id, "id", "", "id recorded as the lock holder (default: generated)")
		},
		Run: func(ctx context.Context, env *cli.Env, args []string) error {
			if len(args) == 0 {
				return cli.Usagef("name the node(s) to roll back")
			}
			nodes, ssh, err := o.fleet.connect(ctx, env, args)
			if err != nil {
				return err
			}
			defer ssh.Close()
			id := o.id
			if id == "" {
				id = "rollback-" + newID()[2:]
			}
			return deploy.Rollback(ctx, ssh, nodes, id, env.Stderr)
		},
	}
}
