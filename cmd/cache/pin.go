package main

import (
	"context"
	"flag"
	"fmt"
	"path"
	"strings"

	"github.com/bos55/concordia/internal/cli"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/pkg/narinfo"
)

func newPinCommand() *cli.Command {
	var f uploadFlags
	var remove, list, upstream bool
	var note string
	flags := func(fs *flag.FlagSet) {
		f.register(fs)
		fs.BoolVar(&remove, "remove", remove, "remove the pins instead")
		fs.BoolVar(&list, "list", list, "list the pins")
		fs.StringVar(&note, "note", note, "say why (shown by --list)")
		fs.BoolVar(&upstream, "upstream", upstream, "with --cache: also pull (and so keep) the closure's paths that only an upstream has")
	}
	return &cli.Command{
		Name:  "pin",
		Usage: "[--remove] [--note TEXT] [--config FILE | --dir DIR | --cache URL] STORE_PATH... | pin --list",
		Short: "keep store paths (and their closures) through garbage collection",
		Long: `Pins make GC roots in the upload store: a pinned path and everything it
refers to are never collected. The deployer pins each host's running
system through the HTTP API (POST/DELETE /api/pins/<hash> with a pin
token); this command does the same by hand, on the store directly or with
--cache URL on a running server.

Over HTTP a pin belongs to the name of the token that made it: a pin token
removes only its own pins, an admin token any pin; --list needs admin. On
the store directly (no --cache) pins have no owner and --remove removes any.
--list shows each pin's owner ("-" for none: pins made before owners
existed, or on the store directly; only an admin removes those).`,
		Flags: flags,
		Run: func(ctx context.Context, env *cli.Env, args []string) error {
			args, err := interspersed(args, flags)
			if err != nil {
				return err
			}
			if list != (len(args) == 0) {
				return cli.Usagef("give store paths to pin, or --list")
			}
			if f.cache != "" {
				return pinRemote(ctx, env, &f, args, list, remove, note, upstream)
			}
			if upstream {
				return cli.Usagef("--upstream needs --cache URL: the running server pulls from its upstreams")
			}
			us, done, err := f.open(ctx, env)
			if err != nil {
				return err
			}
			defer done()
			if list {
				pins, err := us.Pins(ctx)
				if err != nil {
					return err
				}
				printPins(env, pins)
				return nil
			}
			for _, p := range args {
				if remove {
					err = us.Unpin(ctx, p)
				} else {
					err = us.Pin(ctx, p, note)
				}
				if err != nil {
					return fmt.Errorf("%s: %w", p, err)
				}
				fmt.Fprintf(env.Stdout, "%s %s\n", pinVerb(remove), p)
			}
			return nil
		},
	}
}

// pinRemote pins, unpins or lists on a running server, where a pin
// belongs to the token's name.
func pinRemote(ctx context.Context, env *cli.Env, f *uploadFlags, args []string, list, remove bool, note string, upstream bool) error {
	c, err := f.client()
	if err != nil {
		return err
	}
	if list {
		pins, err := c.Pins(ctx)
		if err != nil {
			return err
		}
		printPins(env, pins)
		return nil
	}
	for _, p := range args {
		if len(path.Base(p)) < narinfo.HashPartLen {
			return cli.Usagef("%s is not a store path", p)
		}
		var answer []byte
		if remove {
			answer, err = c.Unpin(ctx, p)
		} else {
			answer, err = c.PinWith(ctx, p, note, upstream)
		}
		if err != nil {
			return err
		}
		text := strings.TrimSpace(string(answer))
		if text == "" {
			text = pinVerb(remove) + " " + p
		}
		fmt.Fprintln(env.Stdout, text)
	}
	return nil
}

func pinVerb(remove bool) string {
	if remove {
		return "unpinned"
	}
	return "pinned"
}

func printPins(env *cli.Env, pins []store.Pin) {
	for _, p := range pins {
		owner := p.Owner
		if owner == "" {
			owner = "-"
		}
		fmt.Fprintf(env.Stdout, "%s\t%s\t%s\t%s\n", p.StorePath, p.Created.Format("2006-01-02 15:04"), owner, p.Note)
	}
}
