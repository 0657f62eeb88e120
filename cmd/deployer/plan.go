package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"time"

	"github.com/bos55/concordia/internal/cacheapi"
	"github.com/bos55/concordia/internal/cli"
	"github.com/bos55/concordia/internal/deploy"
	"github.com/bos55/concordia/internal/hostverb"
	"github.com/bos55/concordia/internal/plan"
	"github.com/bos55/concordia/internal/remote"
)

func planCmd() *cli.Command {
	var o pushOpts
	return &cli.Command{
		Name:  "plan",
		Usage: "[flags]",
		Short: "show what a push would change on each node (closure diff, download, reboot, cache check); changes nothing",
		Long: `Takes push's fleet, selection and cache flags. For each selected node it asks the host for its
current and booted system (the status verb, read only) and reads the cache's narinfos (and the
toplevels' .ls listings): the closure diff current -> new as 'nix store diff-closures' groups it,
the download size, whether the kernel, its modules or the initrd differ from the booted system
(reboot required or recommended), whether the new closure is complete and signed by a trusted key,
and the mode (--mode, or what --branch maps to). No NAR is downloaded; nothing changes on a host.

--json FILE (or - for stdout) writes the plan as JSON (schemaVersion 1, see the README).
Exit status is non-zero when a host could not be asked or a closure is not deployable.`,
		Flags: func(fs *flag.FlagSet) {
			o.registerSelection(fs, "plan", "required", "")
			fs.StringVar(&o.jsonFile, "json", "", "write the plan as JSON to this file (- for stdout, instead of the table)")
			o.registerSSH(fs)
		},
		Run: func(ctx context.Context, env *cli.Env, args []string) error {
			_, mode, nodes, err := o.nodesFor(ctx, env, args)
			if err != nil || nodes == nil {
				return err
			}
			return runPlan(ctx, env, o, mode, nodes)
		},
	}
}

// dryRun is push --dry-run: the plan, or without --cache the steps push
// would take (nothing can be diffed or checked without the cache).
func dryRun(ctx context.Context, env *cli.Env, o pushOpts, mode hostverb.Mode, nodes []deploy.Node) error {
	if o.cache == "" {
		printPlan(env.Stdout, o, mode, nodes)
		fmt.Fprintln(env.Stdout, "(no --cache: the closure diff, download size, reboot and cache check are not made; see deployer plan)")
		return nil
	}
	return runPlan(ctx, env, o, mode, nodes)
}

// runPlan asks every node its status, plans against the cache, prints the
// plan (and writes its JSON) and fails when a node cannot be deployed.
func runPlan(ctx context.Context, env *cli.Env, o pushOpts, mode hostverb.Mode, nodes []deploy.Node) error {
	log := o.fleet.log(env)
	opts, err := o.deployOptions(log, mode, nodes)
	if err != nil {
		return err
	}
	token, err := cacheapi.Token(o.tokenFile, o.netrcFile, o.cache)
	if err != nil {
		return err
	}
	ssh, err := remote.New(log)
	if err != nil {
		return err
	}
	defer ssh.Close()
	statuses := deploy.Status(ctx, ssh, nodes)
	targets := make([]plan.Target, len(nodes))
	for i, n := range nodes {
		w, _ := opts.Checker(n).(plan.Walker)
		targets[i] = plan.Target{Node: n.Name, Path: n.Path, Mode: mode, Status: statuses[i].Status, StatusErr: statuses[i].Error, Walker: w}
	}
	lister := &cacheapi.Client{URL: o.cache, Token: token, HTTP: &http.Client{Timeout: 30 * time.Second}}
	p := plan.Make(ctx, targets, plan.Options{Lister: lister})
	switch o.jsonFile {
	case "-":
		b, _ := json.MarshalIndent(p, "", "  ")
		fmt.Fprintf(env.Stdout, "%s\n", b)
	case "":
		plan.Print(env.Stdout, p)
	default:
		plan.Print(env.Stdout, p)
		if err := writeJSON(o.jsonFile, p); err != nil {
			return fmt.Errorf("write the plan: %w", err)
		}
	}
	return p.Err()
}
