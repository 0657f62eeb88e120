package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

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
	return []*cli.Command{pushCmd(), statusCmd(), rollbackCmd(), rebootCmd()}
}

func runPush(ctx context.Context, env *cli.Env, o pushOpts, args []string) error {
	log, mode, nodes, err := o.nodesFor(ctx, env, args)
	if err != nil || nodes == nil {
		return err
	}
	rollout, err := o.rollout(nodes)
	if err != nil {
		return err
	}
	if o.dryRun {
		return dryRun(ctx, env, o, mode, nodes)
	}
	opts, err := o.deployOptions(log, mode, nodes)
	if err != nil {
		return err
	}
	rollout(&opts)
	ssh, err := remote.New(log)
	if err != nil {
		return err
	}
	defer ssh.Close()
	opts.Remote = ssh
	progress, live := progressFor(env, o, nodes)
	opts.Progress = progress
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
	o.report.send(ctx, env, o.cache, o.tokenFile, o.netrcFile, o.id, rep)
	printSummary(env.Stderr, rep)
	return rep.Err()
}

// nodesFor is what push and plan do first: no arguments, the flags that
// need no fleet, then the selected nodes and their mode (nil nodes and no
// error when the branch deploys nothing).
func (o *pushOpts) nodesFor(ctx context.Context, env *cli.Env, args []string) (*slog.Logger, hostverb.Mode, []deploy.Node, error) {
	if len(args) > 0 {
		return nil, "", nil, cli.Usagef("unexpected arguments %q (select nodes with --on)", args)
	}
	log := o.fleet.log(env)
	mode, err := o.checkFlags()
	if err != nil {
		return log, mode, nil, err
	}
	mode, nodes, err := o.selectNodes(ctx, env, log, mode)
	return log, mode, nodes, err
}

// checkFlags checks the flags that need no fleet and fills in the id.
func (o *pushOpts) checkFlags() (hostverb.Mode, error) {
	mode, err := deploy.ParseMode(o.mode)
	if err != nil {
		return mode, cli.Usagef("%v", err)
	}
	switch o.kernelChange {
	case "", hostverb.KernelSwitch, hostverb.KernelBoot, hostverb.KernelRefuse:
	case hostverb.KernelReport:
		o.kernelChange = hostverb.KernelRefuse // the old name
	default:
		return mode, cli.Usagef("--kernel-change must be switch, boot or refuse")
	}
	if o.id == "" {
		o.id = newID()
	}
	return mode, o.checkRollout()
}

// deployOptions is everything a real push needs besides ssh: the cache,
// its token, the keys each node's closure is checked against, the pins.
func (o pushOpts) deployOptions(log *slog.Logger, mode hostverb.Mode, nodes []deploy.Node) (deploy.Options, error) {
	if o.cache == "" {
		return deploy.Options{}, cli.Usagef("--cache is required: every closure is checked in the cache before a host is touched")
	}
	token, err := cacheapi.Token(o.tokenFile, o.netrcFile, o.cache)
	if err != nil {
		return deploy.Options{}, err
	}
	global, err := loadKeys(o.trustedKeys, o.keyFiles)
	if err != nil {
		return deploy.Options{}, err
	}
	checkerFor, err := deploy.Checkers(o.cache, token, global, nodes, log)
	if errors.Is(err, deploy.ErrSchema) {
		return deploy.Options{}, cli.Usagef("%v", err)
	}
	if err != nil {
		return deploy.Options{}, err
	}
	opts := deploy.Options{
		Mode: mode, KernelChange: o.kernelChange, NoCheck: o.noCheck, InstallBootloader: o.installBoot, Parallel: o.parallel, ID: o.id,
		Checker: checkerFor, Logger: log,
	}
	if err := o.rebootOptions(mode, &opts); err != nil {
		return deploy.Options{}, err
	}
	if !o.noPin {
		opts.Pins = &deploy.HTTPPinner{Cache: o.cache, Token: token, Logger: log, Note: "deployer push " + o.id, Upstream: o.pinUpstream}
	}
	return opts, nil
}

// selectNodes reads the fleet and picks the nodes of --branch or --on, with
// the command-line overrides applied; nil nodes (and no error) when the
// branch deploys nothing (said on stderr).
func (o pushOpts) selectNodes(ctx context.Context, env *cli.Env, log *slog.Logger, mode hostverb.Mode) (hostverb.Mode, []deploy.Node, error) {
	all, err := o.fleet.nodes(ctx, log)
	if err != nil {
		return mode, nil, err
	}
	var nodes []deploy.Node
	if o.branch != "" {
		if o.on != "" {
			return mode, nil, cli.Usagef("--branch and --on do not go together")
		}
		b, err := deploy.ForBranch(all, o.branch)
		if err != nil {
			return mode, nil, err
		}
		if len(b.Nodes) == 0 {
			fmt.Fprintf(env.Stderr, "nothing to deploy: %s\n", b.Reason)
			return mode, nil, nil
		}
		mode, nodes = b.Mode, b.Nodes
	} else if nodes, err = deploy.Select(all, o.on); err != nil {
		return mode, nil, err
	}
	o.overrides().Apply(nodes)
	for _, n := range nodes {
		if err := deploy.CheckPath("/nix/store", n.Path); err != nil {
			return mode, nil, fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	return mode, nodes, nil
}
