package deploy

import (
	"errors"
	"fmt"
	"path"
	"strings"

	"github.com/bos55/concordia/internal/hostverb"
)

// ErrSelection marks a --on, --mode or --branch that names nothing usable.
var ErrSelection = errors.New("selection")

// ParseMode accepts exactly the four modes of switch-to-configuration.
func ParseMode(s string) (hostverb.Mode, error) {
	if err := hostverb.ValidMode(s); err != nil {
		return "", fmt.Errorf("%w: mode %q (want switch, test, boot or dry-activate)", ErrSelection, s)
	}
	return hostverb.Mode(s), nil
}

// Select returns the nodes named by spec, a comma-separated list of node
// names, @tags and path.Match globs, in the order of nodes. An empty spec
// selects every node. A term that matches nothing is an error: a typo in CI
// must not quietly deploy nothing.
func Select(nodes []Node, spec string) ([]Node, error) {
	spec = strings.TrimSpace(spec)
	if spec == "" {
		return nodes, nil
	}
	chosen := make([]bool, len(nodes))
	for _, term := range strings.Split(spec, ",") {
		term = strings.TrimSpace(term)
		if term == "" {
			continue
		}
		matched := false
		for i, n := range nodes {
			ok, err := matchTerm(term, n)
			if err != nil {
				return nil, err
			}
			if ok {
				chosen[i] = true
				matched = true
			}
		}
		if !matched {
			return nil, fmt.Errorf("%w: %q matches no node (nodes: %s)", ErrSelection, term, names(nodes))
		}
	}
	var out []Node
	for i, n := range nodes {
		if chosen[i] {
			out = append(out, n)
		}
	}
	return out, nil
}

func matchTerm(term string, n Node) (bool, error) {
	if tag, ok := strings.CutPrefix(term, "@"); ok {
		for _, t := range n.Settings.Tags {
			if t == tag {
				return true, nil
			}
		}
		return false, nil
	}
	ok, err := path.Match(term, n.Name)
	if err != nil {
		return false, fmt.Errorf("%w: bad pattern %q: %v", ErrSelection, term, err)
	}
	return ok, nil
}

func names(nodes []Node) string {
	s := make([]string, len(nodes))
	for i, n := range nodes {
		s[i] = n.Name
	}
	return strings.Join(s, ", ")
}

// Branch is what CI should do for a git branch.
type Branch struct {
	Mode  hostverb.Mode
	Nodes []Node
	// Reason says why nothing is deployed when Nodes is empty.
	Reason string
}

// ForBranch maps a CI branch to a deploy: "main" switches every node,
// "test-<node>" tests that node alone, anything else deploys nothing (not
// an error: feature branches run CI too).
func ForBranch(nodes []Node, branch string) (Branch, error) {
	switch {
	case branch == "main":
		return Branch{Mode: hostverb.Switch, Nodes: nodes}, nil
	case strings.HasPrefix(branch, "test-"):
		name := strings.TrimPrefix(branch, "test-")
		for _, n := range nodes {
			if n.Name == name {
				return Branch{Mode: hostverb.Test, Nodes: []Node{n}}, nil
			}
		}
		return Branch{}, fmt.Errorf("%w: branch %q: no node named %q (nodes: %s)", ErrSelection, branch, name, names(nodes))
	}
	return Branch{Reason: fmt.Sprintf("branch %q deploys nothing (only main and test-<node> do)", branch)}, nil
}
