package main

import (
	"context"
	"fmt"

	"github.com/bos55/concordia/internal/cli"
	"github.com/bos55/concordia/internal/version"
)

// commands lists every subcommand; push-side commands live in push.go,
// host-side verbs in host.go.
func commands() []*cli.Command {
	cmds := []*cli.Command{{
		Name:  "version",
		Short: "print the version",
		Run: func(ctx context.Context, env *cli.Env, args []string) error {
			fmt.Fprintln(env.Stdout, version.String())
			return nil
		},
	}}
	cmds = append(cmds, pushSideCommands()...)
	cmds = append(cmds, planCmd())
	cmds = append(cmds, historyCmd())
	cmds = append(cmds, hostSideCommands()...)
	cmds = append(cmds, metricsCmd())
	return cmds
}
