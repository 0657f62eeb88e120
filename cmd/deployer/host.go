package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/bos55/concordia/internal/agent"
	"github.com/bos55/concordia/internal/cli"
	"github.com/bos55/concordia/internal/gate"
	"github.com/bos55/concordia/internal/host"
	"github.com/bos55/concordia/internal/hostverb"
	"github.com/bos55/concordia/internal/version"
)

// hostSideCommands: gate (the deploy key's forced command), agent (root,
// socket-activated), host (the same verbs for a person on the host) and
// the hidden watchdog. None of them reads a node list, a flake or ssh
// options: those are the push side's, in push.go.
func hostSideCommands() []*cli.Command {
	return []*cli.Command{gateCmd(), agentCmd(), hostCmd(), watchdogCmd()}
}

// exit turns a verb's exit code into the command's result; the verb has
// printed its answer already.
func exit(code int) error {
	if code == 0 {
		return nil
	}
	return &cli.ExitError{Code: code}
}

// hostEnv keeps a host verb alive when its SSH session goes: a hang-up must
// not kill it and writes to a closed pipe must fail instead of killing it.
func hostEnv() {
	signal.Ignore(syscall.SIGHUP, syscall.SIGPIPE)
}

func gateCmd() *cli.Command {
	var socket string
	return &cli.Command{
		Name:  "gate",
		Short: "host: forced command for the deploy key (authorized_keys command=\"…/deployer gate\",restrict)",
		Long: `Reads SSH_ORIGINAL_COMMAND and runs it only if it is a host verb of the contract:
"deployer fetch|version ..." as the deploy user, "deployer activate|confirm|wait|status|rollback|health ..."
through the root agent (and the contract 1 forms "sudo -n deployer VERB ..."). Flags are checked
exactly; anything else is refused with a one-line reason and exit code 126. Nothing goes to a shell.`,
		Flags: func(fs *flag.FlagSet) {
			fs.StringVar(&socket, "socket", agent.DefaultSocket, "the root agent's socket")
		},
		Run: func(ctx context.Context, env *cli.Env, args []string) error {
			hostEnv()
			line := gate.CleanEnv()
			if len(args) > 0 {
				return exit(gate.Refuse(gate.Options{Stdout: env.Stdout, Stderr: env.Stderr}, fmt.Errorf("%w: gate takes no arguments", hostverb.ErrRefused)))
			}
			return exit(gate.Run(ctx, gate.Options{Stdout: env.Stdout, Stderr: env.Stderr, Socket: socket, Version: version.String()}, line))
		},
	}
}

func hostCmd() *cli.Command {
	var socket string
	return &cli.Command{
		Name:  "host",
		Usage: "VERB [flags] [store paths]",
		Short: "host: run a host verb here (status, wait, confirm, rollback, ...) as the deploy key would",
		Long: `The same verbs and flags as over ssh (see 'deployer help gate'), for a person on the host.
As root the verb runs in this process; as another user it goes to the root agent, which accepts
only root and the deploy user.`,
		Flags: func(fs *flag.FlagSet) {
			fs.StringVar(&socket, "socket", agent.DefaultSocket, "the root agent's socket")
		},
		Run: func(ctx context.Context, env *cli.Env, args []string) error {
			hostEnv()
			o := gate.Options{Stdout: env.Stdout, Stderr: env.Stderr, Socket: socket, Version: version.String()}
			if os.Geteuid() == 0 {
				o.Local = &host.Options{Logger: env.Logger}
			}
			req, err := hostverb.Parse(args)
			if err != nil {
				return exit(gate.Refuse(o, err))
			}
			return exit(gate.RunRequest(ctx, o, req))
		},
	}
}
