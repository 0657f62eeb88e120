package main

import (
	"context"
	"errors"

	"github.com/bos55/concordia/internal/cli"
)

// Placeholder until the server lands; replaced by the serve implementation.
func newServeCommand() *cli.Command {
	return &cli.Command{
		Name:  "serve",
		Short: "serve the local Nix store as a binary cache",
		Run: func(ctx context.Context, env *cli.Env, args []string) error {
			return errors.New("serve is not built yet")
		},
	}
}
