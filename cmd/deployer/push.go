package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
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
	mode, nodes, err := o.selectNodes(ctx, env, log, mode)
	if err != nil || nodes == nil {
		return err
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

	progress, live := progressFor(env, o, nodes)
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

// progressFor draws live progress on a terminal (unless --debug), lines
// otherwise; live is nil when lines are used.
func progressFor(env *cli.Env, o pushOpts, nodes []deploy.Node) (deploy.Progress, *deploy.Live) {
	if f, ok := env.Stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) && !o.fleet.debug {
		names := make([]string, len(nodes))
		for i, n := range nodes {
			names[i] = n.Name
		}
		live := deploy.NewLive(env.Stderr, names, 200*time.Millisecond)
		return live, live
	}
	return deploy.NewLines(env.Stderr), nil
}
