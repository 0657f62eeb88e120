package main

import (
	"context"
	"flag"
	"fmt"
	"path"

	"github.com/bos55/concordia/internal/cli"
	"github.com/bos55/concordia/pkg/narinfo"
)

func newForgetCommand() *cli.Command {
	var f uploadFlags
	flags := func(fs *flag.FlagSet) { f.register(fs) }
	return &cli.Command{
		Name:  "forget",
		Usage: "[--config FILE | --dir DIR | --cache URL] STORE_PATH...",
		Short: "let a garbage-collected store path be uploaded with another NAR",
		Long: `When GC deletes an uploaded path, the cache remembers its NAR hash and
references for [gc] remember (90 days by default): an upload of the same
store path with another NAR is refused with 409 meanwhile, as for a path
the cache still has, because hosts that fetched the path keep its old
content and would disagree with new hosts about what the path is.

forget removes that memory for each STORE_PATH (or hash part), so the next
upload of it may bring another NAR. Do it only when no host should keep the
old content (a build that was broken everywhere). With --cache the running
server does it (DELETE /api/tombstones/<hash>, needs an admin token).`,
		Flags: flags,
		Run: func(ctx context.Context, env *cli.Env, args []string) error {
			args, err := interspersed(args, flags)
			if err != nil {
				return err
			}
			if len(args) == 0 {
				return cli.Usagef("give the store paths to forget")
			}
			for _, p := range args {
				hash := path.Base(p)
				if len(hash) > narinfo.HashPartLen {
					hash = hash[:narinfo.HashPartLen]
				}
				if !narinfo.ValidHashPart(hash) {
					return cli.Usagef("%s is not a store path", p)
				}
			}
			if f.cache != "" {
				return forgetRemote(ctx, env, &f, args)
			}
			us, done, err := f.open(ctx, env)
			if err != nil {
				return err
			}
			defer done()
			for _, p := range args {
				got, err := us.Forget(ctx, p)
				if err != nil {
					return fmt.Errorf("%s: %w", p, err)
				}
				fmt.Fprintf(env.Stdout, "forgot %s: it may be uploaded with another NAR\n", got)
			}
			return nil
		},
	}
}

// forgetRemote has the server forget each path.
func forgetRemote(ctx context.Context, env *cli.Env, f *uploadFlags, paths []string) error {
	c, err := f.client()
	if err != nil {
		return err
	}
	for _, p := range paths {
		if err := c.Forget(ctx, path.Base(p)[:narinfo.HashPartLen]); err != nil {
			return err
		}
		fmt.Fprintf(env.Stdout, "forgot %s: it may be uploaded with another NAR\n", p)
	}
	return nil
}
