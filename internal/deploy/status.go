package deploy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"

	"github.com/bos55/concordia/internal/hostverb"
	"github.com/bos55/concordia/internal/remote"
)

// ParseStatus reads a host's answer to the status verb.
func ParseStatus(out []byte) (*hostverb.Status, error) {
	r, err := hostverb.DecodeReply(out)
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	if r.Status == nil {
		return nil, errors.New("status: the answer holds no status")
	}
	return r.Status, nil
}

// status asks the host for its generations, test deploy, pending reboot
// and lock.
func (c *hostConn) status(ctx context.Context) (*hostverb.Status, error) {
	a, err := c.call(ctx, false, hostverb.Request{Verb: hostverb.VerbStatus})
	if err == nil {
		err = a.err(hostverb.VerbStatus)
	}
	if err != nil {
		return nil, err
	}
	if a.Status == nil {
		return nil, errors.New("status: the answer holds no status")
	}
	return a.Status, nil
}

// StatusResult is one host's answer to `deployer status`.
type StatusResult struct {
	Node   string           `json:"node"`
	Status *hostverb.Status `json:"status,omitempty"`
	Error  string           `json:"error,omitempty"`
}

// Status asks every node for its status in parallel.
func Status(ctx context.Context, r remote.Runner, nodes []Node) []StatusResult {
	out := make([]StatusResult, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i].Node = n.Name
			st, err := newHostConn(r, n).status(ctx)
			out[i].Status = st
			if err != nil {
				out[i].Error = err.Error()
			}
		}()
	}
	wg.Wait()
	return out
}

// PrintStatus writes a table of status results.
func PrintStatus(w io.Writer, rs []StatusResult) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tCURRENT\tBOOTED\tBOOT-DEFAULT\tTEST-ACTIVE\tREBOOT-PENDING\tLOCK\tBOOT-ID\tSYSTEM")
	for _, r := range rs {
		if r.Status == nil {
			fmt.Fprintf(tw, "%s\terror: %s\n", r.Node, r.Error)
			continue
		}
		s := r.Status
		lock := "-"
		if s.Lock != nil {
			lock = s.Lock.ID + " (" + string(s.Lock.Mode) + ")"
		}
		boot := "-" // contract 1-3 hosts do not say
		if s.BootID != "" {
			boot = shortBootID(s.BootID)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\t%v\t%s\t%s\t%s\n", r.Node, gen(s.Current), gen(s.Booted),
			gen(s.Profile), s.TestActive, s.RebootPending, lock, boot, s.Current.Path)
	}
	tw.Flush()
}

// gen shows a system as its generation number, or "(no gen)" for a
// system that is no generation (a test deploy), "-" for none.
func gen(s hostverb.System) string {
	switch {
	case s.Path == "":
		return "-"
	case s.Generation <= 0:
		return "(no gen)"
	}
	return fmt.Sprint(s.Generation)
}

// Rollback switches every node back to its previous generation now (the
// rollback verb, in parallel), writing one line per node to w; the error
// names the nodes that failed.
func Rollback(ctx context.Context, r remote.Runner, nodes []Node, id string, w io.Writer) error {
	var (
		mu  sync.Mutex
		bad []string
		wg  sync.WaitGroup
	)
	for _, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a, err := newHostConn(r, n).call(ctx, false, hostverb.Request{Verb: hostverb.VerbRollback, ID: id})
			if err == nil {
				err = a.err(hostverb.VerbRollback)
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				fmt.Fprintf(w, "[%s] rollback failed: %v\n", n.Name, err)
				bad = append(bad, n.Name)
				return
			}
			fmt.Fprintf(w, "[%s] rolled back\n", n.Name)
		}()
	}
	wg.Wait()
	if len(bad) > 0 {
		sort.Strings(bad)
		return fmt.Errorf("rollback failed on %s", strings.Join(bad, ", "))
	}
	return nil
}

// shortBootID is the first 8 characters of a boot id (a UUID), "?" for
// anything else a host may have sent (nothing of it reaches the terminal).
func shortBootID(id string) string {
	if len(id) < 8 {
		return "?"
	}
	for _, c := range id {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c == '-') {
			return "?"
		}
	}
	return id[:8]
}
