package deploy

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/bos55/concordia/internal/closure"
	"github.com/bos55/concordia/pkg/narinfo"
)

// Evaluator evaluates a flake attribute to JSON (nixcli.Exec does).
type Evaluator interface {
	EvalJSON(ctx context.Context, installable string) ([]byte, error)
}

// Load reads the fleet from file (the deploy output as JSON) when it is
// set, else from flake's `deploy` output (FLAKE#deploy unless the
// reference names an attribute).
func Load(ctx context.Context, flake, file string, nix Evaluator, log *slog.Logger) ([]Node, error) {
	if file != "" {
		return ParseFile(file, log)
	}
	ref := flake
	if !strings.Contains(ref, "#") {
		ref += "#deploy"
	}
	data, err := nix.EvalJSON(ctx, ref)
	if err != nil {
		return nil, err
	}
	nodes, err := Parse(data, log)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ref, err)
	}
	return nodes, nil
}

// Overrides are deploy-rs's command-line settings, applied to every
// selected node by Apply; zero fields (nil for the booleans) leave the
// node's own setting.
type Overrides struct {
	SSHUser        string
	SSHOpts        []string
	ConfirmTimeout time.Duration
	MagicRollback  *bool
	AutoRollback   *bool
}

// Apply sets the overrides on nodes, as deploy-rs's flags of the same
// names do.
func (o Overrides) Apply(nodes []Node) {
	for i := range nodes {
		s := &nodes[i].Settings
		if o.SSHUser != "" {
			s.SSHUser = o.SSHUser
		}
		if o.SSHOpts != nil {
			s.SSHOpts = o.SSHOpts
		}
		if o.ConfirmTimeout > 0 {
			s.ConfirmTimeout = o.ConfirmTimeout
		}
		if o.MagicRollback != nil {
			s.MagicRollback = *o.MagicRollback
		}
		if o.AutoRollback != nil {
			s.AutoRollback = *o.AutoRollback
		}
	}
}

// Checkers builds the closure checkers of a push: one per distinct set of
// trusted keys (global plus each node's trustedKeys), sharing one HTTP
// client; nodes with the same set share a checker and its narinfo memo,
// the common case of one set for the fleet. A node's key that does not
// parse, or a node left with no key at all, is an error naming it.
func Checkers(cache, token string, global []narinfo.PublicKey, nodes []Node, log *slog.Logger) (func(Node) Checker, error) {
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	bySet := map[string]*closure.Checker{}
	byNode := map[string]*closure.Checker{}
	for _, n := range nodes {
		keys := append([]narinfo.PublicKey(nil), global...)
		for _, k := range n.Settings.TrustedKeys {
			pk, err := narinfo.ParsePublicKey(k)
			if err != nil {
				return nil, fmt.Errorf("node %s trustedKeys: %w", n.Name, err)
			}
			keys = append(keys, pk)
		}
		if len(keys) == 0 {
			return nil, fmt.Errorf("%w: no trusted key for node %s: give --trusted-key or --cache-key-file (or trustedKeys in the flake)", ErrSchema, n.Name)
		}
		id := keySet(keys)
		if bySet[id] == nil {
			bySet[id] = &closure.Checker{Cache: cache, Client: client, Token: token, Trusted: keys, Workers: 32, Logger: log}
		}
		byNode[n.Name] = bySet[id]
	}
	return func(n Node) Checker { return byNode[n.Name] }, nil
}

func keySet(keys []narinfo.PublicKey) string {
	s := make([]string, len(keys))
	for i, k := range keys {
		s[i] = k.String()
	}
	sort.Strings(s)
	return strings.Join(s, " ")
}
