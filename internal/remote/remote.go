// Package remote is the one place that runs ssh. It uses the system
// OpenSSH client so ssh_config, agents, known_hosts and per-node sshOpts all
// work as the operator expects, keeps one multiplexed connection per host
// (ControlMaster in a private directory) so a deploy pays for one handshake,
// and can open a fresh, non-multiplexed login when the point is to prove
// that a new login still works (the magic-rollback confirm).
package remote

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/bos55/concordia/internal/hostverb"
)

// ErrConnection means ssh itself failed (exit 255: refused, dropped, auth),
// as opposed to the remote command exiting non-zero.
var ErrConnection = errors.New("ssh connection failed")

// ErrUnsafeArg refuses arguments the host's gate would refuse anyway (it
// splits on spaces and accepts only hostverb.SafeWord), so the error comes
// early and names the argument.
var ErrUnsafeArg = errors.New("unsafe remote argument")

// Target says how to reach one host.
type Target struct {
	Host string   // hostname or address, as ssh takes it
	User string   // sshUser; empty: ssh's default
	Opts []string // sshOpts, passed to ssh before the destination
}

func (t Target) dest() string {
	if t.User == "" {
		return t.Host
	}
	return t.User + "@" + t.Host
}

// Result is what a remote command did.
type Result struct {
	Stdout []byte
	Stderr []byte
	Code   int // remote exit code
}

// Runner runs commands on hosts. Run uses the host's shared connection;
// Fresh opens a new login that does not reuse it.
type Runner interface {
	Run(ctx context.Context, t Target, args ...string) (Result, error)
	Fresh(ctx context.Context, t Target, args ...string) (Result, error)
}

// SSH is the Runner backed by /usr/bin/ssh.
type SSH struct {
	// Program is the ssh binary; "ssh" from PATH when empty.
	Program string
	// Persist is how long an idle master connection lives (ControlPersist).
	Persist time.Duration
	// ConnectTimeout bounds each connection attempt.
	ConnectTimeout time.Duration
	Logger         *slog.Logger

	mu    sync.Mutex
	dir   string
	hosts map[string]Target
}

// DefaultPersist is how long an idle master outlives its last session.
// Longer than any pause between one host's multiplexed calls: in a deploy
// the longest is the confirm, which goes over fresh logins and may take
// the whole confirm timeout (with a hundred hosts on a busy machine it
// took 90s, past the former 60s, and every host paid a second master's
// login for its status call). Close stops the masters when the push ends;
// a deployer killed before that leaves them this long at most.
const DefaultPersist = 15 * time.Minute

// New returns an SSH runner with its control sockets in a fresh private
// directory; Close stops the masters and removes it.
func New(log *slog.Logger) (*SSH, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// Short base: a unix socket path must fit in 108 bytes.
	dir, err := os.MkdirTemp("", "cssh")
	if err != nil {
		return nil, fmt.Errorf("control dir: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("control dir: %w", err)
	}
	return &SSH{Program: "ssh", Persist: DefaultPersist, ConnectTimeout: 10 * time.Second,
		Logger: log, dir: dir, hosts: map[string]Target{}}, nil
}

// CheckArgs returns ErrUnsafeArg for the first argument the remote side
// could split or expand.
func CheckArgs(args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: empty command", ErrUnsafeArg)
	}
	for _, a := range args {
		if !hostverb.SafeWord(a) {
			return fmt.Errorf("%w: %q", ErrUnsafeArg, a)
		}
	}
	return nil
}

func (s *SSH) common() []string {
	return []string{
		"-o", "BatchMode=yes",
		"-o", fmt.Sprintf("ConnectTimeout=%d", max(1, int(s.ConnectTimeout/time.Second))),
		// Notice a dead peer (host rebooted, sshd stopped with our
		// session) instead of hanging until TCP gives up.
		"-o", "ServerAliveInterval=5",
		"-o", "ServerAliveCountMax=3",
	}
}

// Run runs args on t over the host's multiplexed connection, opening it
// (ControlMaster=auto) on first use.
func (s *SSH) Run(ctx context.Context, t Target, args ...string) (Result, error) {
	if err := CheckArgs(args); err != nil {
		return Result{}, err
	}
	s.mu.Lock()
	s.hosts[t.dest()+"\x00"+strings.Join(t.Opts, "\x00")] = t
	s.mu.Unlock()
	argv := append(s.common(),
		"-o", "ControlMaster=auto",
		"-o", "ControlPath="+filepath.Join(s.dir, "%C"),
		"-o", fmt.Sprintf("ControlPersist=%d", max(1, int(s.Persist/time.Second))),
	)
	argv = append(append(argv, t.Opts...), "--", t.dest())
	return s.exec(ctx, append(argv, args...))
}

// Fresh runs args over a brand-new login (ControlPath=none placed before
// the node's sshOpts, so it wins: ssh keeps the first value of an option).
func (s *SSH) Fresh(ctx context.Context, t Target, args ...string) (Result, error) {
	if err := CheckArgs(args); err != nil {
		return Result{}, err
	}
	argv := append([]string{"-o", "ControlMaster=no", "-o", "ControlPath=none"}, s.common()...)
	argv = append(append(argv, t.Opts...), "--", t.dest())
	return s.exec(ctx, append(argv, args...))
}

func (s *SSH) exec(ctx context.Context, argv []string) (Result, error) {
	cmd := exec.CommandContext(ctx, s.Program, argv...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Stdin = nil
	// A master backgrounded by ControlPersist could keep our pipes open;
	// don't wait for it once ssh itself has exited.
	cmd.WaitDelay = 2 * time.Second
	start := time.Now()
	err := cmd.Run()
	r := Result{Stdout: out.Bytes(), Stderr: errb.Bytes()}
	s.Logger.Debug("ssh", "args", argv, "took", time.Since(start), "err", err)
	if err == nil {
		return r, nil
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.Code = ee.ExitCode()
		if r.Code == 255 {
			return r, fmt.Errorf("%w: %s", ErrConnection, lastLine(r.Stderr))
		}
		if r.Code >= 0 {
			return r, nil
		}
	}
	if errors.Is(err, exec.ErrWaitDelay) {
		return r, nil
	}
	if ctx.Err() != nil {
		return r, fmt.Errorf("ssh: %w", ctx.Err())
	}
	return r, fmt.Errorf("%w: %v", ErrConnection, err)
}

func lastLine(b []byte) string {
	s := strings.TrimSpace(string(b))
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	if s == "" {
		return "exit 255"
	}
	return s
}

// Disconnect closes t's shared connection (and every session on it), as a
// network failure would; the next Run opens a new one.
func (s *SSH) Disconnect(ctx context.Context, t Target) error {
	argv := []string{"-o", "ControlPath=" + filepath.Join(s.dir, "%C")}
	argv = append(append(argv, t.Opts...), "-O", "exit", "--", t.dest())
	cmd := exec.CommandContext(ctx, s.Program, argv...)
	cmd.WaitDelay = time.Second
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ssh -O exit %s: %w: %s", t.dest(), err, lastLine(out))
	}
	return nil
}

// Close stops every master this runner started and removes the control
// directory.
func (s *SSH) Close() error {
	s.mu.Lock()
	hosts := s.hosts
	s.hosts = map[string]Target{}
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, t := range hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = s.Disconnect(ctx, t) // no master (never connected, already gone) is fine
		}()
	}
	wg.Wait()
	return os.RemoveAll(s.dir)
}
