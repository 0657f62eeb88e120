// Package cli is the small command framework shared by cmd/cache and
// cmd/deployer: a list of subcommands, each a constructor with its own
// flag.FlagSet, run under one signal-aware context, with errors mapped to
// exit codes in exactly one place (Main). It exists so both binaries get the
// same help text shape and the same exit-code rules without globals.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
)

// Command is one subcommand.
type Command struct {
	Name  string // e.g. "serve"
	Usage string // argument synopsis, e.g. "[flags] NAME"
	Short string // one line for the command list
	Long  string // paragraphs shown by "<prog> help <name>"
	// Flags registers the command's flags on fs; it may be nil.
	Flags func(fs *flag.FlagSet)
	// Run does the work with the positional arguments left after flags.
	Run func(ctx context.Context, env *Env, args []string) error
}

// Env is what a running command may touch instead of globals, so tests can
// run commands in-process.
type Env struct {
	Stdout io.Writer
	Stderr io.Writer
	Stdin  io.Reader
	Prog   string
	// Logger writes to Stderr at the level of the shared --log-level flag
	// (set by Main before Run).
	Logger *slog.Logger
}

// NewLogger is the one logger constructor of the programs: text lines on w
// at level.
func NewLogger(w io.Writer, level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// ParseLevel reads a --log-level value: debug, info, warn or error.
func ParseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("log level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

// ExitError asks Main to exit with Code after printing Err (if non-nil).
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("exit status %d", e.Code)
	}
	return e.Err.Error()
}

func (e *ExitError) Unwrap() error { return e.Err }

// ErrUsage marks an error caused by bad command-line input (exit code 2).
var ErrUsage = errors.New("usage")

// Usagef returns an error that Main reports with exit code 2.
func Usagef(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrUsage, fmt.Sprintf(format, a...))
}

// Main runs the command named by args[0] and returns the process exit code.
func Main(prog, summary string, cmds []*Command, args []string, env *Env) int {
	if env == nil {
		env = &Env{Stdout: os.Stdout, Stderr: os.Stderr, Stdin: os.Stdin}
	}
	env.Prog = prog
	byName := map[string]*Command{}
	for _, c := range cmds {
		byName[c.Name] = c
	}
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" && len(args) == 1 {
		printList(env.Stdout, prog, summary, cmds)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	if args[0] == "help" {
		c, ok := byName[args[1]]
		if !ok {
			fmt.Fprintf(env.Stderr, "%s: unknown command %q\n", prog, args[1])
			return 2
		}
		printHelp(env.Stdout, prog, c)
		return 0
	}
	c, ok := byName[args[0]]
	if !ok {
		fmt.Fprintf(env.Stderr, "%s: unknown command %q (see '%s help')\n", prog, args[0], prog)
		return 2
	}
	fs := flag.NewFlagSet(prog+" "+c.Name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	if c.Flags != nil {
		c.Flags(fs)
	}
	level := levelFlag(fs)
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printHelp(env.Stdout, prog, c)
			return 0
		}
		fmt.Fprintf(env.Stderr, "%s %s: %v\n(see '%s help %s')\n", prog, c.Name, err, prog, c.Name)
		return 2
	}
	lvl, err := ParseLevel(level())
	if err != nil {
		fmt.Fprintf(env.Stderr, "%s %s: --log-level: %v\n", prog, c.Name, err)
		return 2
	}
	env.Logger = NewLogger(env.Stderr, lvl)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err = c.Run(ctx, env, fs.Args())
	return exitCode(env.Stderr, prog+" "+c.Name, err)
}

// levelFlag registers the shared --log-level on fs, unless the command
// registered its own (cache serve, whose default comes from its config),
// and returns how to read it after parsing ("" means info).
func levelFlag(fs *flag.FlagSet) func() string {
	f := fs.Lookup("log-level")
	if f == nil {
		fs.String("log-level", "info", "log messages at this level and above: debug, info, warn or error")
		f = fs.Lookup("log-level")
	}
	return func() string {
		if v := f.Value.String(); v != "" {
			return v
		}
		return "info"
	}
}

func exitCode(w io.Writer, who string, err error) int {
	if err == nil {
		return 0
	}
	var ee *ExitError
	if errors.As(err, &ee) {
		if ee.Err != nil {
			fmt.Fprintf(w, "%s: %v\n", who, ee.Err)
		}
		return ee.Code
	}
	fmt.Fprintf(w, "%s: %v\n", who, err)
	if errors.Is(err, ErrUsage) {
		return 2
	}
	return 1
}

func printList(w io.Writer, prog, summary string, cmds []*Command) {
	fmt.Fprintf(w, "%s\n\nUsage: %s <command> [flags] [args]\n\nCommands:\n", summary, prog)
	sorted := append([]*Command(nil), cmds...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	for _, c := range sorted {
		fmt.Fprintf(w, "  %-14s %s\n", c.Name, c.Short)
	}
	fmt.Fprintf(w, "\nRun '%s help <command>' for a command's flags and details.\n", prog)
}

func printHelp(w io.Writer, prog string, c *Command) {
	fmt.Fprintf(w, "Usage: %s %s %s\n\n%s\n", prog, c.Name, c.Usage, c.Short)
	if c.Long != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(c.Long))
	}
	fs := flag.NewFlagSet(c.Name, flag.ContinueOnError)
	if c.Flags != nil {
		c.Flags(fs)
	}
	levelFlag(fs)
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	if n > 0 {
		fmt.Fprintf(w, "\nFlags:\n")
		fs.SetOutput(w)
		fs.PrintDefaults()
	}
}
