// Package agent is the root side of the host verbs: a small server on a
// unix socket that accepts typed requests (internal/hostverb) only from the
// deploy user and root, checked by the kernel's peer credentials
// (SO_PEERCRED), validates each one against the contract again, and runs it
// with internal/host. The gate, running as the deploy user, is its client,
// so the deploy user needs no sudo at all: no sudo rule to get wrong, and it
// works where sudo is restricted to wheel (security.sudo.execWheelOnly) or
// replaced by sudo-rs.
//
// On NixOS systemd starts it per connection (deployer-agent.socket with
// Accept=yes), so no agent process runs while the host is idle; Serve also
// takes a listening socket (Accept=no or --listen) and then exits after an
// idle period.
//
// What the agent runs is exactly the contract's root verbs: nothing in it
// reads a node list, a flake or ssh options.
package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os/user"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/bos55/concordia/internal/host"
	"github.com/bos55/concordia/internal/hostverb"
)

// DefaultSocket is where the agent listens (the NixOS module's
// deployer-agent.socket).
const DefaultSocket = "/run/deployer-agent.sock"

// maxRequest bounds the one request line a client may send.
const maxRequest = 64 << 10

// Message is one line the agent writes to a client: log lines while the
// verb runs, then the final one with the verb's reply and exit code.
type Message struct {
	Log   string          `json:"log,omitempty"`
	Final bool            `json:"final,omitempty"`
	Exit  int             `json:"exit"`
	Reply json.RawMessage `json:"reply,omitempty"`
}

// Envelope is what a client sends: the contract version it speaks and the
// request.
type Envelope struct {
	Contract int              `json:"contract"`
	Request  hostverb.Request `json:"request"`
}

// Server runs the root verbs for its clients.
type Server struct {
	// AllowUser may connect besides root (the deploy user).
	AllowUser string
	// Host says where the host's state lives (zero: the real NixOS places).
	Host host.Options
	// Logger receives one line per request (nil: discard).
	Logger *slog.Logger
	// Version is this deployer's version, for the version verb.
	Version string
}

func (s *Server) log() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

// Serve accepts connections on ln until ctx ends or, when idle > 0, no
// connection came and none ran for that long.
func (s *Server) Serve(ctx context.Context, ln *net.UnixListener, idle time.Duration) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	active := make(chan int, 64)
	running := 0
	for {
		if idle > 0 && running == 0 {
			ln.SetDeadline(time.Now().Add(idle))
		} else {
			ln.SetDeadline(time.Time{})
		}
		c, err := ln.AcceptUnix()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// Drain finished connections; if any ran, wait again.
				if running = drain(active, running); running == 0 {
					return nil
				}
				continue
			}
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("agent: accept: %w", err)
		}
		running = drain(active, running) + 1
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { active <- -1 }()
			s.ServeConn(ctx, c)
		}()
	}
}

func drain(ch chan int, n int) int {
	for {
		select {
		case d := <-ch:
			n += d
		default:
			return n
		}
	}
}

// ServeConn answers the one request of c and closes it.
func (s *Server) ServeConn(ctx context.Context, c *net.UnixConn) {
	defer c.Close()
	log := s.log()
	w := &framer{w: c}
	uid, err := peerUID(c)
	if err != nil {
		w.final(refusal(fmt.Errorf("cannot read the caller's credentials: %v", err)))
		return
	}
	if err := s.allowed(uid); err != nil {
		log.Warn("refused a connection", "uid", uid, "err", err)
		w.final(refusal(err))
		return
	}
	br := bufio.NewReaderSize(io.LimitReader(c, maxRequest+1), 4096)
	line, err := br.ReadBytes('\n')
	if err != nil {
		w.final(refusal(fmt.Errorf("no request: %v", err)))
		return
	}
	var env Envelope
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&env); err != nil {
		w.final(refusal(fmt.Errorf("malformed request: %v", err)))
		return
	}
	if rest := bytes.TrimSpace(line[dec.InputOffset():]); len(rest) > 0 {
		w.final(refusal(errors.New("malformed request: data after the request")))
		return
	}
	// The client is gone when its side of the connection closes: stop
	// waiting for it (a detached activation carries on regardless).
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		io.Copy(io.Discard, c)
		cancel()
	}()
	o := s.Host
	o.Logger = slog.New(slog.NewTextHandler(io.MultiWriter(w.logWriter(), logSink{log}), &slog.HandlerOptions{Level: slog.LevelInfo}))
	start := time.Now()
	reply := Handle(ctx, o, env.Request, s.Version)
	log.Info("host verb", "uid", uid, "verb", env.Request.Verb, "id", env.Request.ID, "exit", reply.ExitCode, "took", time.Since(start).Round(time.Millisecond))
	w.final(reply)
}

// allowed: root, or the configured user.
func (s *Server) allowed(uid int) error {
	if uid == 0 {
		return nil
	}
	if s.AllowUser != "" {
		u, err := user.Lookup(s.AllowUser)
		if err == nil && u.Uid == strconv.Itoa(uid) {
			return nil
		}
	}
	return fmt.Errorf("uid %d may not use the deployer agent (only root and %q)", uid, s.AllowUser)
}

func refusal(err error) *hostverb.Reply {
	return &hostverb.Reply{ExitCode: hostverb.ExitRefused, Error: fmt.Errorf("%w: %v", hostverb.ErrRefused, err).Error()}
}

// Handle validates req and runs it: the one dispatch of the root verbs,
// used by the agent for its clients and by `deployer host` run as root.
func Handle(ctx context.Context, o host.Options, req hostverb.Request, version string) *hostverb.Reply {
	storeDir := o.StoreDir
	if storeDir == "" {
		storeDir = hostverb.DefaultStoreDir
	}
	if err := req.Validate(storeDir); err != nil {
		return &hostverb.Reply{ExitCode: hostverb.ExitRefused, Error: fmt.Errorf("%w: %w", hostverb.ErrRefused, err).Error()}
	}
	switch req.Verb {
	case hostverb.VerbVersion:
		return &hostverb.Reply{VersionInfo: &hostverb.VersionInfo{Version: version}}
	case hostverb.VerbActivate:
		return recordReply(host.Activate(ctx, o, req))
	case hostverb.VerbConfirm:
		if req.Reject {
			return recordReply(host.Reject(ctx, o, req.ID))
		}
		return recordReply(host.Confirm(ctx, o, req.ID))
	case hostverb.VerbWait:
		return recordReply(host.Wait(ctx, o, req.ID, req.Timeout))
	case hostverb.VerbStatus:
		st, err := host.Inspect(ctx, o)
		if err != nil {
			return errReply(err)
		}
		return &hostverb.Reply{Status: st}
	case hostverb.VerbRollback:
		o.ID = req.ID
		if req.Boot {
			return errReply(host.RollbackBoot(ctx, o, req.Generation))
		}
		return errReply(host.Rollback(ctx, o))
	case hostverb.VerbHealth:
		var h *hostverb.Health
		var err error
		if req.Booted {
			h, err = host.HealthBooted(ctx, o, req.Timeout)
		} else {
			h, err = host.Health(ctx, o, req.ID, req.Timeout)
		}
		r := errReply(err)
		r.Health = h
		return r
	case hostverb.VerbReboot:
		rb, err := host.Reboot(ctx, o, req.ID)
		r := errReply(err)
		r.Rebooting = rb
		return r
	}
	return &hostverb.Reply{ExitCode: hostverb.ExitRefused, Error: fmt.Sprintf("%v: %s is not run by the agent", hostverb.ErrRefused, req.Verb)}
}

// recordReply is the reply of the verbs that answer a deploy record: the
// record when there is one (its Reason says what happened), else the error.
func recordReply(rec *hostverb.Record, err error) *hostverb.Reply {
	if rec == nil {
		return errReply(err)
	}
	code := rec.ExitCode
	if err != nil {
		code = hostverb.ExitCode(err)
	}
	return &hostverb.Reply{Record: rec, ExitCode: code}
}

func errReply(err error) *hostverb.Reply {
	if err == nil {
		return &hostverb.Reply{}
	}
	return &hostverb.Reply{ExitCode: hostverb.ExitCode(err), Error: err.Error()}
}

// peerUID is the uid of the process on the other end of c, as the kernel
// recorded it at connect time.
func peerUID(c *net.UnixConn) (int, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	var cred *syscall.Ucred
	var serr error
	if err := raw.Control(func(fd uintptr) {
		cred, serr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return -1, err
	}
	if serr != nil {
		return -1, serr
	}
	return int(cred.Uid), nil
}

// framer writes Messages, one per line, from any goroutine.
type framer struct {
	mu sync.Mutex
	w  io.Writer
}

func (f *framer) send(m Message) {
	b, _ := json.Marshal(m)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.w.Write(append(b, '\n')) // a client that left misses it; nothing to do
}

func (f *framer) final(r *hostverb.Reply) {
	line := r.MarshalLine()
	f.send(Message{Final: true, Exit: r.ExitCode, Reply: line[:len(line)-1]})
}

// logWriter turns each Write (slog writes one line per record) into a log
// message.
func (f *framer) logWriter() io.Writer { return logFrames{f} }

type logFrames struct{ f *framer }

func (l logFrames) Write(p []byte) (int, error) {
	l.f.send(Message{Log: string(trimNL(p))})
	return len(p), nil
}

// logSink copies the verbs' log lines into the agent's own log (the
// journal), so a host keeps what its deploys said.
type logSink struct{ log *slog.Logger }

func (l logSink) Write(p []byte) (int, error) {
	l.log.Info("verb: " + string(trimNL(p)))
	return len(p), nil
}

func trimNL(p []byte) []byte {
	for len(p) > 0 && p[len(p)-1] == '\n' {
		p = p[:len(p)-1]
	}
	return p
}
