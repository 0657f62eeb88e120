package deploy

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"

	"github.com/bos55/concordia/internal/hostverb"
	"github.com/bos55/concordia/internal/remote"
)

// hostConn asks one host's deployer for host verbs over ssh, in the
// contract version that host speaks. The first answer tells: a reply
// without a "contract" field comes from a contract 1 host, and a refusal
// (exit 126) from an older gate (its marker says which contract; none:
// contract 1) means it did not know the newer form and ran nothing, so the
// request goes again in the host's form.
type hostConn struct {
	r remote.Runner
	t remote.Target

	mu       sync.Mutex
	contract int // 0: not known yet
}

func newHostConn(r remote.Runner, n Node) *hostConn {
	s := n.Settings
	return &hostConn{r: r, t: remote.Target{Host: n.Hostname, User: s.SSHUser, Opts: s.SSHOpts}}
}

// answer is one verb's outcome: the host's reply (never nil: when the host
// printed none, it holds the exit code and the last line of stderr) and
// the raw result.
type answer struct {
	*hostverb.Reply
	res remote.Result
}

// msg is what the host said about the outcome: its error, else the
// record's reason, else the last line of its stderr.
func (a answer) msg() string {
	switch {
	case a.Error != "":
		return a.Error
	case a.Record != nil && a.Record.Reason != "":
		return a.Record.Reason
	}
	return lastLine(a.res.Stderr)
}

// state is the deploy state the host reported ("" when it sent no record).
func (a answer) state() hostverb.State {
	if a.Record == nil {
		return ""
	}
	return a.Record.State
}

// err is the outcome as an error of the verb's exit code ("verb: exit N: msg").
func (a answer) err(verb hostverb.Verb) error {
	if a.ExitCode == 0 {
		return nil
	}
	return &verbError{verb: verb, code: a.ExitCode, err: hostverb.ErrorFor(a.ExitCode, a.msg())}
}

// verbError keeps the exit code's sentinel (errors.Is) and the message
// format the reports have always had.
type verbError struct {
	verb hostverb.Verb
	code int
	err  error
}

func (e *verbError) Error() string {
	return string(e.verb) + ": exit " + strconv.Itoa(e.code) + ": " + e.err.Error()
}
func (e *verbError) Unwrap() error { return e.err }

// call runs req on the host's shared connection (fresh: over a new login)
// and decodes its reply. err is for ssh failures (remote.ErrConnection,
// the context) and for a request the host's contract cannot carry.
func (c *hostConn) call(ctx context.Context, fresh bool, req hostverb.Request) (answer, error) {
	c.mu.Lock()
	v := c.contract
	c.mu.Unlock()
	known := v != 0
	if !known {
		v = hostverb.Contract
	}
	for {
		argv, err := req.Encode(v)
		if err != nil {
			return answer{}, err
		}
		run := c.r.Run
		if fresh {
			run = c.r.Fresh
		}
		res, err := run(ctx, c.t, argv...)
		if err != nil {
			return answer{Reply: &hostverb.Reply{}, res: res}, err
		}
		rep, derr := hostverb.DecodeReply(res.Stdout)
		if derr != nil {
			rep = &hostverb.Reply{}
		}
		if res.Code == hostverb.ExitRefused && !known {
			// An older gate refused a form it does not know, before
			// running anything: say it again in the host's own contract
			// (only contract 1 gates answer without the marker).
			older := rep.Contract
			if older == 0 {
				older = hostverb.MinContract
			}
			if older < v {
				v = older
				continue
			}
		}
		if derr == nil || res.Code != hostverb.ExitRefused {
			c.learn(max(rep.Contract, 1))
		}
		rep.ExitCode = res.Code // the process's exit code is the contract's answer
		return answer{Reply: rep, res: res}, nil
	}
}

func (c *hostConn) learn(v int) {
	c.mu.Lock()
	if c.contract == 0 {
		c.contract = v
	}
	c.mu.Unlock()
}

// speaks reports the host's contract version (0: not known yet).
func (c *hostConn) speaks() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.contract
}

// isConnErr: the request may not have reached the host (or its answer was
// lost), as opposed to the host answering.
func isConnErr(err error) bool {
	return err != nil && !errors.Is(err, remote.ErrUnsafeArg) && !errors.Is(err, hostverb.ErrUnsupported) && !errors.Is(err, hostverb.ErrInvalid)
}

func lastLine(b []byte) string {
	s := strings.TrimSpace(string(b))
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return s
}
