package main

import (
	"context"
	"flag"
	"fmt"
	"time"

	"github.com/bos55/concordia/internal/cli"
	"github.com/bos55/concordia/internal/deploy"
	"github.com/bos55/concordia/internal/hostverb"
)

type rebootOpts struct {
	fleet          fleetFlags
	whenRequired   bool
	maxUnavailable string
	allAtOnce      bool
	timeout        time.Duration
	jsonFile       string
	id             string
	cache          string
	tokenFile      string
	netrcFile      string
	report         reportFlags
}

func rebootCmd() *cli.Command {
	var o rebootOpts
	return &cli.Command{
		Name:  "reboot",
		Usage: "[flags] NODE|@TAG|GLOB ...",
		Short: "reboot nodes one at a time, wait for each to come back with a new boot id, check and roll back bad boots",
		Long: `Reboots each named node through the host verb reboot (the host's deployer must speak contract 4)
and waits until the host answers with a new boot id (/proc/sys/kernel/random/boot_id) within
--reboot-timeout. The host must have booted its boot default and pass the node's health checks; if
it booted another system or a check fails, its boot default is set back to the generation it ran
before and it is rebooted once more (reported rolled back). A host that does not come back in time
is reported failed.

One host at a time by default; --max-unavailable N reboots up to N at once, --all-at-once every
selected node together. --when-required reboots only hosts whose status says a reboot is pending
(a new kernel, initrd or modules in the boot default). With --cache the report goes to the
cache's deploy history, as push's does.`,
		Flags: func(fs *flag.FlagSet) {
			o.fleet.register(fs)
			fs.BoolVar(&o.whenRequired, "when-required", false, "reboot only hosts whose status says a reboot is pending")
			fs.StringVar(&o.maxUnavailable, "max-unavailable", "", "hosts rebooting at once: N or P% of the selected nodes (default 1)")
			fs.BoolVar(&o.allAtOnce, "all-at-once", false, "reboot every selected host at once")
			fs.DurationVar(&o.timeout, "reboot-timeout", deploy.DefaultRebootTimeout, "how long a host has to come back")
			fs.StringVar(&o.jsonFile, "json", "", "write a machine-readable report to this file")
			fs.StringVar(&o.id, "id", "", "id recorded on the hosts (default: generated)")
			fs.StringVar(&o.cache, "cache", "", "binary cache whose deploy history gets the report (optional)")
			fs.StringVar(&o.tokenFile, "cache-token-file", "", "file with the cache token (pin or write) the report is sent with")
			fs.StringVar(&o.netrcFile, "netrc-file", "", "netrc whose password for the cache's host is the cache token")
			o.report.register(fs)
		},
		Run: func(ctx context.Context, env *cli.Env, args []string) error {
			return runReboot(ctx, env, o, args)
		},
	}
}

// bound sets how many hosts may reboot at once: one unless asked, never
// all at once by default (--all-at-once lifts the flake's maxUnavailable
// too; --max-unavailable is N or P% of the selected nodes).
func (o rebootOpts) bound(nodes int, opts *deploy.Options) error {
	switch {
	case o.allAtOnce && o.maxUnavailable != "":
		return cli.Usagef("--all-at-once and --max-unavailable do not go together")
	case o.allAtOnce:
		opts.MaxUnavailable = max(nodes, 1)
	case o.maxUnavailable == "":
		opts.Parallel = 1
	default:
		n, err := deploy.ParseMaxUnavailable(o.maxUnavailable, nodes)
		if err != nil {
			return cli.Usagef("--max-unavailable: %v (--all-at-once reboots every host together)", err)
		}
		opts.MaxUnavailable = n
	}
	return nil
}

func runReboot(ctx context.Context, env *cli.Env, o rebootOpts, args []string) error {
	if len(args) == 0 {
		return cli.Usagef("name the node(s) to reboot (names, @tags, globs)")
	}
	if err := o.bound(1, &deploy.Options{}); err != nil { // the flags alone, before any host is asked
		return err
	}
	if o.timeout < time.Second || o.timeout > hostverb.MaxWait {
		return cli.Usagef("--reboot-timeout must be between 1s and %s", hostverb.MaxWait)
	}
	if o.id == "" {
		o.id = "reboot-" + newID()[2:]
	}
	if err := hostverb.ValidID(o.id); err != nil {
		return cli.Usagef("--id: %v", err)
	}
	nodes, ssh, err := o.fleet.connect(ctx, env, args)
	if err != nil {
		return err
	}
	defer ssh.Close()
	progress, live := progressFor(env, pushOpts{fleet: o.fleet}, nodes)
	opts := deploy.Options{
		RebootOnly: true, WhenRequired: o.whenRequired, RebootTimeout: o.timeout, ID: o.id,
		Remote: ssh, Logger: o.fleet.log(env), Progress: progress,
	}
	if err := o.bound(len(nodes), &opts); err != nil {
		return err
	}
	at := fmt.Sprint(max(opts.Parallel, opts.MaxUnavailable))
	if o.allAtOnce {
		at = "all"
	}
	fmt.Fprintf(env.Stderr, "reboot %s: %d node(s), %s at a time\n", o.id, len(nodes), at)
	rep := deploy.Run(ctx, nodes, opts)
	if live != nil {
		live.Close()
	}
	if o.jsonFile != "" {
		if err := writeJSON(o.jsonFile, rep); err != nil {
			opts.Logger.Error("write report", "err", err)
		}
	}
	o.report.send(ctx, env, o.cache, o.tokenFile, o.netrcFile, o.id, rep)
	printSummary(env.Stderr, rep)
	return rep.Err()
}
