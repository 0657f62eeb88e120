package main

import (
	"context"
	"errors"

	"github.com/bos55/concordia/internal/cli"
)

// Placeholder until pkg/narinfo lands; replaced by the keygen implementation.
func newKeygenCommand() *cli.Command {
	return &cli.Command{
		Name:  "keygen",
		Short: "generate a signing key pair",
		Run: func(ctx context.Context, env *cli.Env, args []string) error {
			return errors.New("keygen is not built yet")
		},
	}
}
