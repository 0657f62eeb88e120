package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"golang.org/x/term"

	"github.com/bos55/concordia/internal/cacheapi"
	"github.com/bos55/concordia/internal/cli"
	"github.com/bos55/concordia/internal/deploy"
	"github.com/bos55/concordia/internal/hostverb"
	"github.com/bos55/concordia/internal/remote"
)

// pushSideCommands: push, status, rollback, run from CI or a workstation.
// They talk to hosts only through the host verbs over ssh; nothing here is
// reachable from a host's gate.
func pushSideCommands() []*cli.Command {
	return []*cli.Command{pushCmd(), statusCmd(), rollbackCmd()}
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
	noCheck      bool
	installBoot  bool
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
			fs.StringVar(&o.kernelChange, "kernel-change", "", "on a kernel change: switch (default: switch live, report reboot required), boot (install as boot default) or refuse")
			fs.BoolVar(&o.noCheck, "no-check", false, "switch even when the switch inhibitors changed (NIXOS_NO_CHECK=1)")
			fs.BoolVar(&o.installBoot, "install-bootloader", false, "have switch-to-configuration (re)install the boot loader (NIXOS_INSTALL_BOOTLOADER=1)")
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

func runPush(ctx context.Context, env *cli.Env, o pushOpts, args []string) error {
	if len(args) > 0 {
		return cli.Usagef("unexpected arguments %q (select nodes with --on)", args)
	}
	log := o.fleet.log(env)
	mode, err := deploy.ParseMode(o.mode)
	if err != nil {
		return cli.Usagef("%v", err)
	}
	switch o.kernelChange {
	case "", hostverb.KernelSwitch, hostverb.KernelBoot, hostverb.KernelRefuse:
	case hostverb.KernelReport:
		o.kernelChange = hostverb.KernelRefuse // the old name
	default:
		return cli.Usagef("--kernel-change must be switch, boot or refuse")
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
	o.overrides().Apply(nodes)
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
	token, err := cacheapi.Token(o.tokenFile, o.netrcFile, o.cache)
	if err != nil {
		return err
	}
	global, err := loadKeys(o.trustedKeys, o.keyFiles)
	if err != nil {
		return err
	}
	checkerFor, err := deploy.Checkers(o.cache, token, global, nodes, log)
	if errors.Is(err, deploy.ErrSchema) {
		return cli.Usagef("%v", err)
	}
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
		Mode: mode, KernelChange: o.kernelChange, NoCheck: o.noCheck, InstallBootloader: o.installBoot, Parallel: o.parallel, ID: o.id,
		Remote: ssh, Checker: checkerFor, Logger: log, Progress: progress,
	}
	if !o.noPin {
		opts.Pins = &deploy.HTTPPinner{Cache: o.cache, Token: token, Logger: log, Note: "deployer push " + o.id}
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
