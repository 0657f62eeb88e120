package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/bos55/concordia/internal/cli"
	"github.com/bos55/concordia/internal/gate"
	"github.com/bos55/concordia/internal/host"
	"github.com/bos55/concordia/internal/nixcli"
)

// hostSideCommands: activate, confirm, wait, fetch, gate and the hidden
// watchdog (run on the host, the first four as root through sudo).
func hostSideCommands() []*cli.Command {
	return []*cli.Command{activateCmd(), confirmCmd(), waitCmd(), fetchCmd(), gateCmd(), watchdogCmd()}
}

// hostEnv keeps a host verb alive when its SSH session goes: a hang-up must
// not kill it and writes to a closed pipe must fail instead of killing it.
func hostEnv() {
	signal.Ignore(syscall.SIGHUP, syscall.SIGPIPE)
}

func logger(env *cli.Env) *slog.Logger {
	return slog.New(slog.NewTextHandler(env.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// printResult writes v as one JSON line on stdout (the verbs' machine
// output) and maps err to the exit code of the contract.
func printResult(env *cli.Env, v any, err error) error {
	if v != nil {
		b, _ := json.Marshal(v)
		fmt.Fprintf(env.Stdout, "%s\n", b)
	} else if err != nil {
		b, _ := json.Marshal(map[string]any{"error": err.Error(), "exitCode": host.ExitCode(err)})
		fmt.Fprintf(env.Stdout, "%s\n", b)
	}
	if rec, ok := v.(*host.Record); ok && err == nil && rec.ExitCode != 0 {
		fmt.Fprintf(env.Stderr, "deploy %s: %s (%s)\n", rec.ID, rec.State, rec.Reason)
		return &cli.ExitError{Code: rec.ExitCode}
	}
	if err == nil {
		return nil
	}
	return &cli.ExitError{Code: host.ExitCode(err), Err: err}
}

func activateCmd() *cli.Command {
	var (
		q        host.Request
		mode     string
		stateDir string
	)
	return &cli.Command{
		Name:  "activate",
		Usage: "--mode switch|test|boot|dry-activate --id ID [flags] /nix/store/...-toplevel",
		Short: "host: activate a system (lock, profile, detached switch-to-configuration, watchdog)",
		Long: `Run as root on the host (through sudo). Exit codes: 0 activated (awaiting confirm when
magic rollback is on), 1 activation failed (rolled back), 3 host locked by another deploy,
4 invalid input or not a valid NixOS system, 5 reboot required (kernel change, nothing done),
100 activated but switch-to-configuration asks for a reboot.`,
		Flags: func(fs *flag.FlagSet) {
			fs.StringVar(&mode, "mode", "switch", "switch, test, boot or dry-activate")
			fs.StringVar(&q.ID, "id", "", "deploy id ([A-Za-z0-9-]{1,64}), unique per deploy")
			fs.DurationVar(&q.ConfirmTimeout, "confirm-timeout", 30*time.Second, "roll back unless confirmed within this time")
			fs.BoolVar(&q.MagicRollback, "magic-rollback", true, "arm the watchdog (switch and test)")
			fs.BoolVar(&q.AutoRollback, "auto-rollback", true, "roll back at once when activation fails")
			fs.StringVar(&q.KernelChange, "kernel-change", "report", "on a kernel/initrd change: report (exit 5) or boot")
			fs.StringVar(&stateDir, "state-dir", "/run/concordia", "lock and deploy state")
		},
		Run: func(ctx context.Context, env *cli.Env, args []string) error {
			hostEnv()
			if len(args) != 1 {
				return printResult(env, nil, fmt.Errorf("%w: want exactly one store path, got %d arguments", host.ErrInvalid, len(args)))
			}
			q.Mode, q.Path = host.Mode(mode), args[0]
			rec, err := host.Activate(ctx, host.Options{StateDir: stateDir, Log: logger(env)}, q)
			return printResult(env, rec, err)
		},
	}
}

func confirmCmd() *cli.Command {
	var id, stateDir string
	var reject bool
	return &cli.Command{
		Name:  "confirm",
		Usage: "--id ID [--reject]",
		Short: "host: confirm a deploy (stops its magic rollback); exit 6 if already rolled back",
		Flags: func(fs *flag.FlagSet) {
			fs.StringVar(&id, "id", "", "deploy id")
			fs.StringVar(&stateDir, "state-dir", "/run/concordia", "lock and deploy state")
			fs.BoolVar(&reject, "reject", false, "refuse the deploy instead: its watchdog rolls back now, not at the deadline (push does this when a health check fails)")
		},
		Run: func(ctx context.Context, env *cli.Env, args []string) error {
			hostEnv()
			o := host.Options{StateDir: stateDir, Log: logger(env)}
			if reject {
				rec, err := host.Reject(ctx, o, id)
				return printResult(env, rec, err)
			}
			rec, err := host.Confirm(ctx, o, id)
			return printResult(env, rec, err)
		},
	}
}

func waitCmd() *cli.Command {
	var (
		id, stateDir string
		timeout      time.Duration
	)
	return &cli.Command{
		Name:  "wait",
		Usage: "--id ID [--timeout D]",
		Short: "host: wait until a deploy has finished activating and print its state",
		Long: `For when the SSH session of activate dropped. Exit codes: 0 activated (awaiting-confirm or
confirmed), 1 failed, 6 rolled back, 8 still activating at the timeout, 4 unknown id.`,
		Flags: func(fs *flag.FlagSet) {
			fs.StringVar(&id, "id", "", "deploy id")
			fs.DurationVar(&timeout, "timeout", 10*time.Minute, "give up after this long (0: never)")
			fs.StringVar(&stateDir, "state-dir", "/run/concordia", "lock and deploy state")
		},
		Run: func(ctx context.Context, env *cli.Env, args []string) error {
			hostEnv()
			rec, err := host.Wait(ctx, host.Options{StateDir: stateDir, Log: logger(env)}, id, timeout)
			return printResult(env, rec, err)
		},
	}
}

func fetchCmd() *cli.Command {
	return &cli.Command{
		Name:  "fetch",
		Usage: "/nix/store/PATH...",
		Short: "host: substitute store paths from the host's configured caches (as the deploy user)",
		Long: `Runs nix-store --realise through the host's nix-daemon. The deploy user is not a trusted
Nix user, so the daemon accepts only substitutes signed by a trusted key.`,
		Run: func(ctx context.Context, env *cli.Env, args []string) error {
			hostEnv()
			if len(args) == 0 {
				return printResult(env, nil, fmt.Errorf("%w: no store path", host.ErrInvalid))
			}
			for _, p := range args {
				if err := host.ValidStorePath("/nix/store", p); err != nil {
					return printResult(env, nil, err)
				}
			}
			start := time.Now()
			if err := (&nixcli.Exec{}).Realise(ctx, args...); err != nil {
				return printResult(env, nil, err)
			}
			return printResult(env, map[string]any{"fetched": args, "seconds": time.Since(start).Seconds()}, nil)
		},
	}
}

func gateCmd() *cli.Command {
	return &cli.Command{
		Name:  "gate",
		Short: "host: forced command for the deploy key (authorized_keys command=\"…/deployer gate\")",
		Long: `Reads SSH_ORIGINAL_COMMAND and runs it only if it is "deployer fetch P...",
"deployer status --local" or "sudo -n <this deployer> activate|confirm|wait|status|rollback ...",
without a shell. Anything else is refused with exit code 126.`,
		Run: func(ctx context.Context, env *cli.Env, args []string) error {
			refuse := func(err error) error {
				return &cli.ExitError{Code: gate.ExitRefused, Err: err}
			}
			self, err := os.Executable()
			if err != nil {
				return refuse(err)
			}
			sudo, err := gate.FindSudo()
			if err != nil {
				return refuse(err)
			}
			argv, err := gate.Parse(os.Getenv("SSH_ORIGINAL_COMMAND"), self, sudo)
			if err != nil {
				return refuse(err)
			}
			return refuse(gate.Exec(argv))
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
			err := host.Work(context.WithoutCancel(ctx), host.Options{StateDir: stateDir, Log: logger(env)}, id, lock)
			if err != nil && !errors.Is(err, host.ErrFailed) {
				return err
			}
			return nil
		},
	}
}
