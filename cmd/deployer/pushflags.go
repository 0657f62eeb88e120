package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/bos55/concordia/internal/cli"
	"github.com/bos55/concordia/internal/deploy"
	"github.com/bos55/concordia/internal/hostverb"
)

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
	noCheck      bool
	installBoot  bool
	jsonFile     string
	dryRun       bool
	id           string
	noPin        bool
	pinUpstream  bool
	reboot       bool
	rebootWait   time.Duration

	// The rollout: canaries first, then waves (see rollout).
	canary         string
	maxUnavailable string
	maxFailures    optInt
	report         reportFlags

	// deploy-rs's command-line overrides, applied to every selected node.
	sshUser        string
	sshOpts        string
	confirmTimeout time.Duration
	magicRollback  optBool
	autoRollback   optBool
}

// overrides are the deploy-rs flags that were given.
func (o pushOpts) overrides() deploy.Overrides {
	ov := deploy.Overrides{SSHUser: o.sshUser, ConfirmTimeout: o.confirmTimeout}
	if o.sshOpts != "" {
		ov.SSHOpts = strings.Fields(o.sshOpts)
	}
	if o.magicRollback.set {
		ov.MagicRollback = &o.magicRollback.v
	}
	if o.autoRollback.set {
		ov.AutoRollback = &o.autoRollback.v
	}
	return ov
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
anything else -> nothing to do (exit 0).

Rollout: canaries (--canary, or nodes with canary = true) go first and a failure there starts no
other host; then the nodes wave by wave (their wave setting, lowest first), each wave finishing
before the next; at most --max-unavailable (or the flake's maxUnavailable) hosts mid-deploy at
once; after --max-failures (or maxFailures) hosts ended not ok, no new host starts. Hosts never
started are reported not-started with the reason, and the exit status is non-zero.`,
		Flags: func(fs *flag.FlagSet) {
			o.registerSelection(fs, "deploy", "checked before any host is touched", " (also used to pin)")
			fs.IntVar(&o.parallel, "parallel", 0, "hosts deployed at once (0: all)")
			fs.StringVar(&o.canary, "canary", "", "HOST|@tag[,...]: deploy these first and stop the rollout if one of them fails (default: the nodes with canary = true)")
			fs.StringVar(&o.maxUnavailable, "max-unavailable", "", "N|P%: at most N hosts (or P% of the selected ones) mid-deploy at once (default: the flake's maxUnavailable, else --parallel)")
			fs.Var(&o.maxFailures, "max-failures", "N: start no new host once N hosts failed (0: no limit; default: the flake's maxFailures)")
			fs.StringVar(&o.kernelChange, "kernel-change", "", "on a kernel change: switch (default: switch live, report reboot required), boot (install as boot default) or refuse")
			fs.BoolVar(&o.noCheck, "no-check", false, "switch even when the switch inhibitors changed (NIXOS_NO_CHECK=1)")
			fs.BoolVar(&o.installBoot, "install-bootloader", false, "have switch-to-configuration (re)install the boot loader (NIXOS_INSTALL_BOOTLOADER=1)")
			fs.StringVar(&o.jsonFile, "json", "", "write a machine-readable report (steps, timings, results) to this file")
			fs.BoolVar(&o.dryRun, "dry-run", false, "print the plan and touch nothing")
			fs.StringVar(&o.id, "id", "", "deploy id (default: generated)")
			fs.BoolVar(&o.noPin, "no-pin", false, "do not pin deployed systems in the cache")
			o.report.register(fs)
			fs.BoolVar(&o.pinUpstream, "pin-upstream", false, "have a cache with pull-through also keep the upstream paths of pinned systems (so they can be rebuilt from the cache alone)")
			fs.DurationVar(&o.rebootWait, "reboot-timeout", deploy.DefaultRebootTimeout, "with --reboot: how long a host has to come back")
			fs.BoolVar(&o.reboot, "reboot", false, "after --mode boot, or a switch that leaves a reboot required: reboot, one host at a time unless --parallel, and check each comes back with the new system (rolled back if not)")
			o.registerSSH(fs)
			fs.DurationVar(&o.confirmTimeout, "confirm-timeout", 0, "override confirmTimeout of every node (e.g. 45s)")
			fs.Var(&o.magicRollback, "magic-rollback", "override magicRollback of every node (true|false)")
			fs.Var(&o.autoRollback, "auto-rollback", "override autoRollback of every node (true|false)")
		},
		Run: func(ctx context.Context, env *cli.Env, args []string) error {
			return runPush(ctx, env, o, args)
		},
	}
}

// checkRollout checks the rollout flags that need no fleet.
func (o pushOpts) checkRollout() error {
	if o.maxUnavailable != "" {
		if _, err := deploy.ParseMaxUnavailable(o.maxUnavailable, 1); err != nil {
			return cli.Usagef("--max-unavailable: %v", err)
		}
	}
	if o.maxFailures.set && o.maxFailures.v < 0 {
		return cli.Usagef("--max-failures must be 0 (no limit) or more, not %d", o.maxFailures.v)
	}
	if o.canary != "" && strings.Trim(o.canary, ", \t") == "" {
		return cli.Usagef("--canary %q names no node (want HOST|@tag[,...])", o.canary)
	}
	return nil
}

// rebootOptions sets what push --reboot asks of deploy.Run: hosts reboot
// one at a time unless --parallel or --max-unavailable says how many,
// never all at once by default (the flake's maxUnavailable bounds it too).
func (o pushOpts) rebootOptions(mode hostverb.Mode, opts *deploy.Options) error {
	if !o.reboot {
		return nil
	}
	if mode != hostverb.Boot && mode != hostverb.Switch {
		return cli.Usagef("--reboot goes with --mode boot or switch, not %s", mode)
	}
	if o.rebootWait < time.Second || o.rebootWait > hostverb.MaxWait {
		return cli.Usagef("--reboot-timeout must be between 1s and %s", hostverb.MaxWait)
	}
	opts.Reboot, opts.RebootTimeout = true, o.rebootWait
	if o.parallel == 0 && o.maxUnavailable == "" {
		opts.Parallel = 1
	}
	return nil
}

// rollout resolves the rollout flags against the selected nodes (a
// --canary term matching none of them is an error, as --on's) and returns
// what to set on the deploy's options; flags win over the flake's settings.
func (o pushOpts) rollout(nodes []deploy.Node) (func(*deploy.Options), error) {
	var canary []string
	if o.canary != "" {
		sel, err := deploy.Select(nodes, o.canary)
		if err != nil {
			return nil, fmt.Errorf("--canary: %w", err)
		}
		for _, n := range sel {
			canary = append(canary, n.Name)
		}
	}
	maxUnavailable := 0
	if o.maxUnavailable != "" {
		var err error
		if maxUnavailable, err = deploy.ParseMaxUnavailable(o.maxUnavailable, len(nodes)); err != nil {
			return nil, cli.Usagef("--max-unavailable: %v", err)
		}
	}
	if o.maxFailures.set {
		for i := range nodes { // --max-failures 0 lifts the flake's limit too
			nodes[i].Settings.MaxFailures = o.maxFailures.v
		}
	}
	return func(opts *deploy.Options) {
		opts.Canary, opts.MaxUnavailable, opts.MaxFailures = canary, maxUnavailable, o.maxFailures.v
	}, nil
}

// optInt is an int flag that remembers whether it was given.
type optInt struct {
	set bool
	v   int
}

func (n *optInt) String() string {
	if n == nil || !n.set {
		return ""
	}
	return strconv.Itoa(n.v)
}

func (n *optInt) Set(s string) error {
	v, err := strconv.Atoi(s)
	if err != nil {
		return fmt.Errorf("not a whole number: %q", s)
	}
	n.set, n.v = true, v
	return nil
}

// registerSelection registers the flags push and plan share: the fleet,
// which nodes in which mode, the cache and the keys and token to check
// closures in it with. verb names what the command does to the nodes;
// cacheWhy and tokenUse end the help of --cache and --cache-token-file.
func (o *pushOpts) registerSelection(fs *flag.FlagSet, verb, cacheWhy, tokenUse string) {
	o.fleet.register(fs)
	fs.StringVar(&o.on, "on", "", "nodes to "+verb+": comma-separated names, @tags and globs (default: all)")
	fs.StringVar(&o.mode, "mode", "switch", "switch, test, boot or dry-activate")
	fs.StringVar(&o.branch, "branch", "", "CI branch: main -> switch everywhere, test-NODE -> test on NODE, else nothing")
	fs.StringVar(&o.cache, "cache", "", "binary cache URL the hosts substitute from ("+cacheWhy+")")
	fs.Var(&o.trustedKeys, "trusted-key", "public key (name:base64) a closure must be signed by (repeatable)")
	fs.Var(&o.keyFiles, "cache-key-file", "file holding a trusted public key (repeatable)")
	fs.StringVar(&o.tokenFile, "cache-token-file", "", "file with a bearer token for a private cache"+tokenUse)
	fs.StringVar(&o.netrcFile, "netrc-file", "", "netrc whose password for the cache's host is the cache token (as Nix's netrc-file)")
}

// registerSSH registers deploy-rs's ssh overrides.
func (o *pushOpts) registerSSH(fs *flag.FlagSet) {
	fs.StringVar(&o.sshUser, "ssh-user", "", "override sshUser of every node")
	fs.StringVar(&o.sshOpts, "ssh-opts", "", "override sshOpts of every node (split on spaces)")
}

func newID() string {
	var b [4]byte
	rand.Read(b[:])
	return "d-" + time.Now().UTC().Format("20060102-150405") + "-" + hex.EncodeToString(b[:])
}
