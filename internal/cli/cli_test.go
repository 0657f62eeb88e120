package cli_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/bos55/concordia/internal/cli"
)

func commands(got *[]string) []*cli.Command {
	var name string
	return []*cli.Command{
		{Name: "ok", Short: "succeeds", Run: func(ctx context.Context, env *cli.Env, args []string) error {
			*got = args
			env.Logger.Debug("a debug line")
			env.Logger.Info("an info line")
			return nil
		}},
		{Name: "usage", Run: func(ctx context.Context, env *cli.Env, args []string) error { return cli.Usagef("bad %s", "input") }},
		{Name: "fail", Run: func(ctx context.Context, env *cli.Env, args []string) error { return errors.New("boom") }},
		{Name: "exit", Run: func(ctx context.Context, env *cli.Env, args []string) error {
			return &cli.ExitError{Code: 7, Err: fmt.Errorf("seven")}
		}},
		{Name: "silent", Run: func(ctx context.Context, env *cli.Env, args []string) error { return &cli.ExitError{Code: 126} }},
		{Name: "flags", Usage: "--name N", Flags: func(fs *flag.FlagSet) { fs.StringVar(&name, "name", "", "a name") },
			Run: func(ctx context.Context, env *cli.Env, args []string) error { *got = []string{name}; return nil }},
	}
}

func run(args ...string) (int, string, string, []string) {
	var out, errb strings.Builder
	var got []string
	code := cli.Main("prog", "prog: a test program", commands(&got), args, &cli.Env{Stdout: &out, Stderr: &errb})
	return code, out.String(), errb.String(), got
}

// Exit codes are decided in one place: 0 ok, 2 usage (bad flags, unknown
// command, cli.Usagef), an ExitError's own code, 1 any other error.
func TestExitCodes(t *testing.T) {
	tests := []struct {
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{[]string{"ok", "a", "b"}, 0, "", "an info line"},
		{[]string{"usage"}, 2, "", "prog usage: usage: bad input"},
		{[]string{"fail"}, 1, "", "prog fail: boom"},
		{[]string{"exit"}, 7, "", "prog exit: seven"},
		{[]string{"silent"}, 126, "", ""},
		{[]string{"nope"}, 2, "", `unknown command "nope"`},
		{[]string{"flags", "--nope"}, 2, "", "flag provided but not defined: -nope"},
		{[]string{"flags", "--name", "x"}, 0, "", ""},
		{[]string{"ok", "--log-level", "loud"}, 2, "", "--log-level"},
		{[]string{}, 2, "Commands:", ""},
		{[]string{"help"}, 0, "Commands:", ""},
		{[]string{"help", "flags"}, 0, "--name N", ""},
		{[]string{"help", "nope"}, 2, "", "unknown command"},
		{[]string{"flags", "-h"}, 0, "-log-level", ""},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, out, errs, _ := run(tt.args...)
			if code != tt.code || !strings.Contains(out, tt.stdout) || !strings.Contains(errs, tt.stderr) {
				t.Fatalf("exit %d (want %d)\nstdout %q\nstderr %q", code, tt.code, out, errs)
			}
			if tt.stderr == "" && tt.code == 126 && errs != "" {
				t.Fatalf("an ExitError without Err must print nothing, got %q", errs)
			}
		})
	}
}

func TestLogLevel(t *testing.T) {
	_, _, errs, got := run("ok", "--log-level", "debug", "x")
	if !strings.Contains(errs, "a debug line") || len(got) != 1 || got[0] != "x" {
		t.Fatalf("debug: %q %v", errs, got)
	}
	if _, _, errs, _ := run("ok", "--log-level", "warn"); strings.Contains(errs, "info line") {
		t.Fatalf("warn shows info: %q", errs)
	}
	if _, _, errs, _ := run("ok"); strings.Contains(errs, "debug line") || !strings.Contains(errs, "info line") {
		t.Fatalf("default is info: %q", errs)
	}
	for s, want := range map[string]slog.Level{"debug": slog.LevelDebug, "INFO": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError} {
		if l, err := cli.ParseLevel(s); err != nil || l != want {
			t.Errorf("%s: %v %v", s, l, err)
		}
	}
}
