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
		fs.StringVar(&perm, "perm", perm, "permissions, comma-separated: read, write, pin, admin")
	}
	return &cli.Command{
		Name:  "token",
		Usage: "[--perm read,write,pin,admin] NAME",
		Short: "make an access token and its tokens-file line",
		Long: `Prints a new random token (shown once: give it to CI, e.g. in a netrc file
as "machine cache.example login ci password TOKEN") and the line to add to
the [upload] tokens_file, which stores only the token's SHA-256. The server
rereads the file when its content changes (and on SIGHUP); delete the line
to revoke the token. Each name must be on one line only.

Permissions (--perm, comma-separated):
  read   fetch from a private cache
  write  upload new paths (nix copy --to); nothing else
  pin    pin paths, and unpin the pins made under this token's name
         (the deployer's token: deployer push --cache-token-file)
  admin  garbage collection, verify and repair, the pin list, unpinning
         any pin (cache gc/verify/pin --cache URL); includes pin

A CI build job gets write (read,write for a private cache), the deploy job
pin (read,pin): keep them in separate jobs, the two together own the fleet.`,
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
