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

// System is one system of the host with its generation (0: none).
type System struct {
	Path       string `json:"path"`
	Generation int    `json:"generation"`
}

// HostStatus is what `deployer status --local --json` prints on a host
// (internal/host.Status; decoded here so the push side needs no host code).
type HostStatus struct {
	Current       System          `json:"current"`
	Booted        System          `json:"booted"`
	Profile       System          `json:"profile"` // the boot default
	Generations   []Generation    `json:"generations"`
	TestActive    bool            `json:"testActive"`
	RebootPending bool            `json:"rebootPending"`
	RebootReasons []string        `json:"rebootReasons,omitempty"`
	Lock          json.RawMessage `json:"lock,omitempty"`
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
	if old == s.Booted.Path || old == s.Current.Path || old == s.Profile.Path {
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
	fmt.Fprintln(tw, "NODE\tCURRENT\tBOOTED\tBOOT-DEFAULT\tTEST-ACTIVE\tREBOOT-PENDING\tLOCK\tSYSTEM")
	for _, r := range rs {
		if r.Status == nil {
			fmt.Fprintf(tw, "%s\terror: %s\n", r.Node, r.Error)
			continue
		}
		s := r.Status
		lock := "-"
		if len(s.Lock) > 0 && string(s.Lock) != "null" {
			var h struct{ ID, Mode string }
			json.Unmarshal(s.Lock, &h)
			lock = h.ID + " (" + h.Mode + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\t%v\t%s\t%s\n", r.Node, gen(s.Current), gen(s.Booted),
			gen(s.Profile), s.TestActive, s.RebootPending, lock, s.Current.Path)
	}
	tw.Flush()
}

// gen shows a system as its generation number, or "(no gen)" for a
// system that is no generation (a test deploy), "-" for none.
func gen(s System) string {
	switch {
	case s.Path == "":
		return "-"
	case s.Generation <= 0:
		return "(no gen)"
	}
	return fmt.Sprint(s.Generation)
}
