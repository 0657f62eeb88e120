package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"strings"

	"github.com/bos55/concordia/internal/cli"
	"github.com/bos55/concordia/internal/deploy"
)

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
