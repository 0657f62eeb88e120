package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"os/user"
	"strconv"
	"syscall"
	"time"

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

func agentCmd() *cli.Command {
	var (
		allow, stateDir, listen string
		idle                    time.Duration
	)
	return &cli.Command{
		Name:  "agent",
		Short: "host: the root agent that runs the host verbs for the deploy user (systemd socket activation)",
		Long: `Started by systemd from deployer-agent.socket (Accept=yes: one process per connection; a
listening socket from Accept=no is served until --idle passes without a connection). --listen
creates the socket itself, for hosts without systemd. Only root and --allow-user may connect
(checked with SO_PEERCRED); each request is validated against the host-verb contract again.`,
		Flags: func(fs *flag.FlagSet) {
			fs.StringVar(&allow, "allow-user", "deploy", "the deploy user, who may connect besides root")
			fs.StringVar(&stateDir, "state-dir", "/run/concordia", "lock and deploy state")
			fs.StringVar(&listen, "listen", "", "create and serve this socket (no systemd)")
			fs.DurationVar(&idle, "idle", time.Minute, "with a listening socket: exit after this long without requests (0: never)")
		},
		Run: func(ctx context.Context, env *cli.Env, args []string) error {
			if len(args) > 0 {
				return cli.Usagef("agent takes no arguments")
			}
			hostEnv()
			srv := &agent.Server{AllowUser: allow, Host: host.Options{StateDir: stateDir}, Logger: env.Logger, Version: version.String()}
			if listen != "" {
				gid, err := groupOf(allow)
				if err != nil {
					return err
				}
				ln, err := agent.Listen(listen, gid)
				if err != nil {
					return err
				}
				return srv.Serve(ctx, ln, idle)
			}
			conn, ln, err := agent.Activated()
			if err != nil {
				return fmt.Errorf("%w (run it from deployer-agent.socket, or give --listen)", err)
			}
			if conn != nil {
				srv.ServeConn(ctx, conn)
				return nil
			}
			return srv.Serve(ctx, ln, idle)
		},
	}
}

// groupOf is the primary group of user name.
func groupOf(name string) (int, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return 0, fmt.Errorf("--allow-user: %w", err)
	}
	return strconv.Atoi(u.Gid)
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

func watchdogCmd() *cli.Command {
	var (
		id, stateDir string
		lockFD       int
	)
	return &cli.Command{
		Name:  "watchdog",
		Usage: "--id ID --state-dir DIR --lock-fd 3",
		Short: "internal: the detached worker of one deploy (started by activate)",
		Flags: func(fs *flag.FlagSet) {
			fs.StringVar(&id, "id", "", "deploy id")
			fs.StringVar(&stateDir, "state-dir", "/run/concordia", "lock and deploy state")
			fs.IntVar(&lockFD, "lock-fd", -1, "inherited descriptor of the host lock")
		},
		Run: func(ctx context.Context, env *cli.Env, args []string) error {
			hostEnv()
			signal.Ignore(syscall.SIGINT, syscall.SIGTERM)
			var lock *os.File
			if lockFD >= 3 {
				lock = os.NewFile(uintptr(lockFD), "lock")
			}
			err := host.Work(context.WithoutCancel(ctx), host.Options{StateDir: stateDir, Logger: env.Logger}, id, lock)
			if err != nil && !errors.Is(err, hostverb.ErrFailed) {
				return err
			}
			return nil
		},
	}
}
