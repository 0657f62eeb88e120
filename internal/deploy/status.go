package deploy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"text/tabwriter"

	"github.com/bos55/concordia/internal/remote"
)

// Generation is one system profile generation as the host reports it.
type Generation struct {
	Number int    `json:"number"`
	Path   string `json:"path"`
}

// HostStatus is what `deployer status --local --json` prints on a host.
type HostStatus struct {
	Current           string       `json:"current"`
	CurrentGeneration int          `json:"currentGeneration"`
	Booted            string       `json:"booted"`
	BootedGeneration  int          `json:"bootedGeneration"`
	BootDefault       string       `json:"bootDefault"`
	BootDefaultGen    int          `json:"bootDefaultGeneration"`
	TestActive        bool         `json:"testActive"`
	RebootPending     bool         `json:"rebootPending"`
	Generations       []Generation `json:"generations"`
	Lock              any          `json:"lock,omitempty"`
	LastDeploy        any          `json:"lastDeploy,omitempty"`
	raw               map[string]any
}

// ParseStatus reads the last JSON line of the host's status output.
func ParseStatus(out []byte) (*HostStatus, error) {
	var last []byte
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64*1024), 4<<20)
	for sc.Scan() {
		if l := bytes.TrimSpace(sc.Bytes()); len(l) > 0 && l[0] == '{' {
			last = append(last[:0], l...)
		}
	}
	if last == nil {
		return nil, errors.New("status: no JSON in output")
	}
	var st HostStatus
	if err := json.Unmarshal(last, &st); err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	json.Unmarshal(last, &st.raw)
	return &st, nil
}

// BeforePrevious returns the store path of the generation two before the
// one holding current (the newly deployed system), or "" when there is
// none or it is the same system as a newer generation.
func (s *HostStatus) BeforePrevious(current string) string {
	idx := -1
	for i, g := range s.Generations {
		if g.Path == current {
			idx = i
		}
	}
	if idx < 2 {
		return ""
	}
	old := s.Generations[idx-2].Path
	for _, g := range s.Generations[idx-1:] {
		if g.Path == old {
			return ""
		}
	}
	if old == s.Booted || old == s.Current {
		return ""
	}
	return old
}

// StatusResult is one host's answer to `deployer status`.
type StatusResult struct {
	Node   string      `json:"node"`
	Status *HostStatus `json:"status,omitempty"`
	Error  string      `json:"error,omitempty"`
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
			t := remote.Target{Host: n.Hostname, User: n.Settings.SSHUser, Opts: n.Settings.SSHOpts}
			res, err := r.Run(ctx, t, n.Settings.DeployerPath, "status", "--local", "--json")
			if err == nil && res.Code != 0 {
				err = hostErr("status", res)
			}
			if err == nil {
				out[i].Status, err = ParseStatus(res.Stdout)
			}
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
	fmt.Fprintln(tw, "NODE\tCURRENT\tBOOTED\tBOOT-DEFAULT\tTEST-ACTIVE\tREBOOT-PENDING\tSYSTEM")
	for _, r := range rs {
		if r.Status == nil {
			fmt.Fprintf(tw, "%s\terror: %s\n", r.Node, r.Error)
			continue
		}
		s := r.Status
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\t%v\t%s\n", r.Node, gen(s.CurrentGeneration), gen(s.BootedGeneration),
			gen(s.BootDefaultGen), s.TestActive, s.RebootPending, s.Current)
	}
	tw.Flush()
}

func gen(n int) string {
	if n <= 0 {
		return "-"
	}
	return fmt.Sprint(n)
}
