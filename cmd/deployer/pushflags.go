package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"strings"
	"time"

	"github.com/bos55/concordia/internal/cli"
	"github.com/bos55/concordia/internal/deploy"
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
	report       reportFlags

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
			o.report.register(fs)
			fs.BoolVar(&o.pinUpstream, "pin-upstream", false, "have a cache with pull-through also keep the upstream paths of pinned systems (so they can be rebuilt from the cache alone)")
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
