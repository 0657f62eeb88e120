package main

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/bos55/concordia/internal/auth"
	"github.com/bos55/concordia/internal/cli"
)

func newTokenCommand() *cli.Command {
	perm := "write"
	flags := func(fs *flag.FlagSet) {
		fs.StringVar(&perm, "perm", perm, "permissions: read, write or read,write")
	}
	return &cli.Command{
		Name:  "token",
		Usage: "[--perm read|write|read,write] NAME",
		Short: "make an access token and its tokens-file line",
		Long: `Prints a new random token (shown once: give it to CI, e.g. in a netrc file
as "machine cache.example login ci password TOKEN") and the line to add to
the [upload] tokens_file, which stores only the token's SHA-256. The server
rereads the file when it changes; delete the line to revoke the token.`,
		Flags: flags,
		Run: func(ctx context.Context, env *cli.Env, args []string) error {
			args, err := interspersed(args, flags)
			if err != nil {
				return err
			}
			if len(args) != 1 {
				return cli.Usagef("token takes one NAME")
			}
			p, err := auth.ParsePerm(perm)
			if err != nil {
				return cli.Usagef("--perm: %v", err)
			}
			tok, line, err := auth.Generate(args[0], p)
			if err != nil {
				return cli.Usagef("%v", err)
			}
			fmt.Fprintf(env.Stdout, "token: %s\ntokens file line: %s\n", tok, line)
			return nil
		},
	}
}

// interspersed lets flags follow positional arguments ("cache token ci
// --perm write", "cache pin /nix/store/... --remove"), which the flag
// package alone stops at.
func interspersed(args []string, flags func(fs *flag.FlagSet)) ([]string, error) {
	fs := flag.NewFlagSet("", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	flags(fs)
	var pos []string
	for len(args) > 0 {
		if err := fs.Parse(args); err != nil {
			return nil, cli.Usagef("%v", err)
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	return pos, nil
}
