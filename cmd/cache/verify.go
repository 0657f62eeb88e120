package main

import (
	"context"
	"errors"
	"flag"
	"fmt"

	"github.com/bos55/concordia/internal/cacheapi"
	"github.com/bos55/concordia/internal/cli"
)

func newVerifyCommand() *cli.Command {
	var f uploadFlags
	var repair bool
	return &cli.Command{
		Name:  "verify",
		Usage: "[--repair] [--config FILE | --dir DIR | --cache URL]",
		Short: "re-hash every uploaded NAR and report (or quarantine) damage",
		Long: `Reads every NAR file of the upload store and checks it against the
FileHash and NarHash computed when it was uploaded, and the NAR structure.
With --repair, damaged files move to quarantine/ in the store directory,
their paths are dropped, and so is every path whose closure that breaks
(the client then re-uploads them). Exit status 1 when damage was found.
A running server holds the store's lock: use --cache URL (with an admin
token) to have it verify itself.`,
		Flags: func(fs *flag.FlagSet) {
			f.register(fs)
			fs.BoolVar(&repair, "repair", false, "quarantine damaged files and drop their paths")
		},
		Run: func(ctx context.Context, env *cli.Env, args []string) error {
			if len(args) != 0 {
				return cli.Usagef("verify takes no arguments")
			}
			if f.cache != "" {
				return verifyRemote(ctx, env, &f, repair)
			}
			return verifyLocal(ctx, env, &f, repair)
		},
	}
}

// verifyLocal verifies the store directly and prints what it found.
func verifyLocal(ctx context.Context, env *cli.Env, f *uploadFlags, repair bool) error {
	us, done, err := f.open(ctx, env)
	if err != nil {
		return err
	}
	defer done()
	bar := newProgress(env.Stderr)
	rep, err := us.Verify(ctx, repair, bar.update)
	bar.finish()
	if err != nil {
		return err
	}
	for _, b := range rep.Bad {
		fmt.Fprintf(env.Stdout, "DAMAGED %s: %s\n", b.Name, b.Reason)
		for _, p := range b.Paths {
			verb := "affects"
			if rep.Repaired {
				verb = "dropped"
			}
			fmt.Fprintf(env.Stdout, "  %s %s\n", verb, p)
		}
	}
	for _, p := range rep.Broken {
		fmt.Fprintf(env.Stdout, "dropped %s (a reference was damaged)\n", p)
	}
	fmt.Fprintf(env.Stdout, "checked %d NAR files (%s): %d damaged\n", rep.Checked, humanBytes(rep.Bytes), len(rep.Bad))
	if len(rep.Bad) > 0 {
		if !repair {
			fmt.Fprintln(env.Stdout, "run with --repair to quarantine them")
		}
		return &cli.ExitError{Code: 1}
	}
	return nil
}

// verifyRemote has the server verify itself and relays its streamed
// answer, drawing the progress lines as a bar.
func verifyRemote(ctx context.Context, env *cli.Env, f *uploadFlags, repair bool) error {
	c, err := f.client()
	if err != nil {
		return err
	}
	bar := newProgress(env.Stderr)
	damaged, err := c.Verify(ctx, repair, bar.update, func(line string) { fmt.Fprintln(env.Stdout, line) })
	bar.finish()
	switch {
	case errors.Is(err, cacheapi.ErrVerifyFailed):
		return errors.New("the server's verify failed (see above)")
	case err != nil:
		return err
	case damaged:
		return &cli.ExitError{Code: 1}
	}
	return nil
}
