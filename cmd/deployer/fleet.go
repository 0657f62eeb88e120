package main

import (
	"context"
	"flag"
	"log/slog"
	"strconv"
	"strings"

	"github.com/bos55/concordia/internal/cli"
	"github.com/bos55/concordia/internal/deploy"
	"github.com/bos55/concordia/internal/nixcli"
	"github.com/bos55/concordia/internal/remote"
)

// strList is a repeatable string flag.
type strList []string

func (s *strList) String() string { return strings.Join(*s, ",") }

func (s *strList) Set(v string) error { *s = append(*s, v); return nil }

// fleetFlags says where the nodes come from.
type fleetFlags struct {
	flake string
	file  string
	debug bool
}

func (f *fleetFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.flake, "flake", ".", "flake whose `deploy` output lists the nodes (nix eval --json FLAKE#deploy)")
	fs.StringVar(&f.file, "file", "", "read the nodes from this JSON file (the deploy output) instead of the flake")
	fs.BoolVar(&f.debug, "debug", false, "log debug messages (ssh commands, ignored settings)")
}

func (f *fleetFlags) log(env *cli.Env) *slog.Logger {
	if f.debug { // deploy-rs's flag, the same as --log-level debug
		return cli.NewLogger(env.Stderr, slog.LevelDebug)
	}
	return env.Logger
}

// connect reads the nodes, keeps those named by args (names, @tags,
// globs) and opens the ssh runner that status and rollback talk through.
func (f *fleetFlags) connect(ctx context.Context, env *cli.Env, args []string) ([]deploy.Node, *remote.SSH, error) {
	log := f.log(env)
	all, err := f.nodes(ctx, log)
	if err != nil {
		return nil, nil, err
	}
	nodes, err := deploy.Select(all, strings.Join(args, ","))
	if err != nil {
		return nil, nil, err
	}
	ssh, err := remote.New(log)
	if err != nil {
		return nil, nil, err
	}
	return nodes, ssh, nil
}

func (f *fleetFlags) nodes(ctx context.Context, log *slog.Logger) ([]deploy.Node, error) {
	return deploy.Load(ctx, f.flake, f.file, &nixcli.Exec{}, log)
}

// optBool is a bool flag that remembers whether it was given, so an
// override applies only when asked for.
type optBool struct{ set, v bool }

func (b *optBool) String() string {
	if b == nil || !b.set {
		return ""
	}
	return strconv.FormatBool(b.v)
}

func (b *optBool) Set(s string) error {
	v, err := strconv.ParseBool(s)
	b.set, b.v = err == nil, v
	return err
}

func (b *optBool) IsBoolFlag() bool { return true }
