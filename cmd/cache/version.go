package main

import (
	"context"
	"fmt"

	"github.com/bos55/concordia/internal/cli"
	"github.com/bos55/concordia/internal/version"
)

func newVersionCommand() *cli.Command {
	return &cli.Command{
		Name:  "version",
		Short: "print the version",
		Run: func(ctx context.Context, env *cli.Env, args []string) error {
			fmt.Fprintln(env.Stdout, version.String())
			return nil
		},
	}
}
