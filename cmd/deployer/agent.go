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
	"github.com/bos55/concordia/internal/host"
	"github.com/bos55/concordia/internal/hostverb"
	"github.com/bos55/concordia/internal/version"
)

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
