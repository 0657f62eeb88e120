package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/bos55/concordia/internal/hostverb"
)

// ErrUnreachable means no agent answered on the socket: nothing ran.
var ErrUnreachable = errors.New("the deployer agent is not reachable")

// ErrLost means the agent took the request and went away before answering
// (an activation restarting it, a crash): the verb may have run, or may go
// on detached, so the caller must ask again (wait) rather than assume.
var ErrLost = errors.New("the deployer agent went away before answering")

// Call sends req to the agent at socket and waits for its answer; log lines
// the verb writes meanwhile go to logs. It returns the reply line (as the
// verb prints it on stdout) and the verb's exit code.
func Call(ctx context.Context, socket string, req hostverb.Request, logs io.Writer) ([]byte, int, error) {
	var d net.Dialer
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	c, err := d.DialContext(dctx, "unix", socket)
	cancel()
	if err != nil {
		return nil, 0, fmt.Errorf("%w at %s (is deployer-agent.socket enabled?): %v", ErrUnreachable, socket, err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	b, _ := json.Marshal(Envelope{Contract: hostverb.Contract, Request: req})
	// An agent that refuses the caller answers before reading the
	// request and closes: a failed write still leaves its answer to read.
	_, werr := c.Write(append(b, '\n'))
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 64<<10), 8<<20)
	for sc.Scan() {
		var m Message
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			return nil, 0, fmt.Errorf("deployer agent: bad message: %v", err)
		}
		if !m.Final {
			if logs != nil {
				fmt.Fprintln(logs, m.Log)
			}
			continue
		}
		return append([]byte(m.Reply), '\n'), m.Exit, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	if werr != nil {
		return nil, 0, fmt.Errorf("send to the deployer agent: %w", werr)
	}
	return nil, 0, fmt.Errorf("%w (%v)", ErrLost, sc.Err())
}
