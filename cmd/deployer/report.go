package main

import (
	"context"
	"errors"
	"flag"
	"fmt"

	"github.com/bos55/concordia/internal/cacheapi"
	"github.com/bos55/concordia/internal/cli"
	"github.com/bos55/concordia/internal/deploy"
)

// reportFlags choose whether a command's report goes to the cache's
// deploy history (push now, reboot later).
type reportFlags struct {
	off bool
}

func (f *reportFlags) register(fs *flag.FlagSet) {
	fs.BoolVar(&f.off, "no-report", false, "do not send the report to the cache's deploy history (sent when --cache is given)")
}

// send sends rep (a report whose "id" is id) to the deploy history of
// cache with the token the command uses there (--cache-token-file,
// --netrc-file, $CONCORDIA_TOKEN: the pin token of the deploy job). The
// report is an account of what happened, not part of it: a failure is
// a warning on stderr and never changes the exit status. It is sent
// even when ctx was cancelled (an interrupted push's report is the one
// most worth keeping), within deploy.ReportTimeout.
func (f reportFlags) send(ctx context.Context, env *cli.Env, cache, tokenFile, netrcFile, id string, rep any) {
	if f.off || cache == "" {
		return
	}
	token, err := cacheapi.Token(tokenFile, netrcFile, cache)
	if err == nil {
		err = deploy.SendReport(context.WithoutCancel(ctx), &cacheapi.Client{URL: cache, Token: token}, id, rep)
	}
	switch {
	case errors.Is(err, deploy.ErrNoHistory):
		fmt.Fprintf(env.Stderr, "warning: deploy report %s not kept: %v (--no-report stops trying)\n", id, err)
	case err != nil:
		fmt.Fprintf(env.Stderr, "warning: deploy report %s not sent to the cache: %v\n", id, err)
	default:
		fmt.Fprintf(env.Stderr, "deploy report %s sent to the cache's history\n", id)
	}
}
