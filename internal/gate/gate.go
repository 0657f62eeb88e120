// Package gate is the forced command of the deploy user's SSH key
// (authorized_keys `command="/path/deployer gate",restrict`): it reads the
// command line the client asked for (SSH_ORIGINAL_COMMAND), parses it
// against the host-verb contract (internal/hostverb: exact flags, checked
// values, nothing else) and refuses anything that does not parse, with a
// one-line reason and exit 126. User verbs (fetch, version) run here, as
// the deploy user; root verbs go to the root agent over its unix socket.
// Nothing is ever passed to a shell, and whatever deployer path the line
// names, only this binary runs.
package gate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/bos55/concordia/internal/agent"
	"github.com/bos55/concordia/internal/host"
	"github.com/bos55/concordia/internal/hostverb"
	"github.com/bos55/concordia/internal/nixcli"
)

// Realiser is what fetch needs from Nix.
type Realiser interface {
	Realise(ctx context.Context, paths ...string) error
}

// Options say where the gate writes and whom it asks.
type Options struct {
	Stdout, Stderr io.Writer
	// Socket is the root agent's socket; default agent.DefaultSocket.
	Socket string
	// Local, when set, runs root verbs in this process with these host
	// options instead of asking the agent (`deployer host` as root).
	Local *host.Options
	// Nix substitutes for fetch; default the real nix-store.
	Nix Realiser
	// Version is reported by the version verb.
	Version string
}

// Run parses an SSH command line and runs it; it returns the exit code.
func Run(ctx context.Context, o Options, line string) int {
	req, _, err := hostverb.ParseCommand(line)
	if err != nil {
		return Refuse(o, err)
	}
	return RunRequest(ctx, o, req)
}

// RunRequest runs a parsed request and returns its exit code. Its stdout
// is the verb's one JSON reply line; log lines go to stderr.
func RunRequest(ctx context.Context, o Options, req hostverb.Request) int {
	if !req.Verb.Root() {
		return reply(o, userVerb(ctx, o, req))
	}
	if o.Local != nil {
		return reply(o, agent.Handle(ctx, *o.Local, req, o.Version))
	}
	sock := o.Socket
	if sock == "" {
		sock = agent.DefaultSocket
	}
	line, code, err := agent.Call(ctx, sock, req, o.Stderr)
	if errors.Is(err, agent.ErrLost) {
		return reply(o, &hostverb.Reply{ExitCode: hostverb.ExitLost, Error: err.Error()})
	}
	if err != nil {
		return reply(o, &hostverb.Reply{ExitCode: hostverb.ExitFailed, Error: err.Error()})
	}
	o.Stdout.Write(line)
	if r, err := hostverb.DecodeReply(line); err == nil && r.ExitCode != 0 && r.Error != "" {
		fmt.Fprintf(o.Stderr, "deployer %s: %s\n", req.Verb, r.Error)
	}
	return code
}

// userVerb runs the verbs that need no root, as the deploy user.
func userVerb(ctx context.Context, o Options, req hostverb.Request) *hostverb.Reply {
	switch req.Verb {
	case hostverb.VerbVersion:
		return &hostverb.Reply{VersionInfo: &hostverb.VersionInfo{Version: o.Version}}
	case hostverb.VerbFetch:
		// As the deploy user, who is not a trusted Nix user: the daemon
		// accepts only substitutes signed by a trusted key.
		n := o.Nix
		if n == nil {
			n = &nixcli.Exec{}
		}
		start := time.Now()
		if err := n.Realise(ctx, req.Paths...); err != nil {
			return &hostverb.Reply{ExitCode: hostverb.ExitFailed, Error: err.Error()}
		}
		return &hostverb.Reply{Fetched: &hostverb.Fetched{Paths: req.Paths, Seconds: time.Since(start).Seconds()}}
	}
	return &hostverb.Reply{ExitCode: hostverb.ExitRefused, Error: fmt.Sprintf("%v: %s is not a user verb", hostverb.ErrRefused, req.Verb)}
}

func reply(o Options, r *hostverb.Reply) int {
	o.Stdout.Write(r.MarshalLine())
	if r.ExitCode != 0 && r.Error != "" {
		fmt.Fprintf(o.Stderr, "deployer: %s\n", r.Error)
	}
	return r.ExitCode
}

// Refuse prints err as a refusal (exit 126) and returns the exit code.
func Refuse(o Options, err error) int {
	return reply(o, &hostverb.Reply{ExitCode: hostverb.ExitRefused, Error: err.Error()})
}

// keepEnv are the variables the gate keeps from its SSH session; the rest
// (whatever sshd's AcceptEnv or a login shell put there) is dropped before
// anything runs. PATH is set, not kept.
var keepEnv = []string{"HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ"}

// SafePath is the PATH the gate's children get.
const SafePath = "/run/current-system/sw/bin:/run/wrappers/bin:/usr/bin:/bin:/usr/sbin:/sbin"

// CleanEnv replaces the process environment with the few variables the
// verbs need; it returns SSH_ORIGINAL_COMMAND, read first.
func CleanEnv() string {
	line := os.Getenv("SSH_ORIGINAL_COMMAND")
	kept := map[string]string{}
	for _, k := range keepEnv {
		if v, ok := os.LookupEnv(k); ok && !strings.ContainsRune(v, 0) {
			kept[k] = v
		}
	}
	os.Clearenv()
	for k, v := range kept {
		os.Setenv(k, v)
	}
	os.Setenv("PATH", SafePath)
	return line
}
