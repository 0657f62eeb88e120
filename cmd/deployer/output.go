package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/bos55/concordia/internal/cli"
	"github.com/bos55/concordia/internal/durable"
	"golang.org/x/term"

	"github.com/bos55/concordia/internal/deploy"
	"github.com/bos55/concordia/internal/hostverb"
)

func printPlan(w io.Writer, o pushOpts, mode hostverb.Mode, nodes []deploy.Node) {
	par := "all"
	if o.parallel > 0 {
		par = fmt.Sprint(o.parallel)
	}
	fmt.Fprintf(w, "plan: %s on %d node(s), parallel %s, cache %s\n", mode, len(nodes), par, orNone(o.cache))
	for _, n := range nodes {
		s := n.Settings
		dest := n.Hostname
		if s.SSHUser != "" {
			dest = s.SSHUser + "@" + dest
		}
		fmt.Fprintf(w, "  %s (%s)\n    system   %s\n    ssh      %s %s\n", n.Name, dest, n.Path, strings.Join(s.SSHOpts, " "), dest)
		fmt.Fprintf(w, "    steps    closure check, deployer fetch, deployer activate --mode %s", mode)
		if s.MagicRollback && mode.NeedsConfirm() {
			fmt.Fprintf(w, ", %d health check(s), confirm within %s", len(s.HealthChecks), s.ConfirmTimeout)
		}
		fmt.Fprintf(w, "\n    rollback magic=%v auto=%v\n", s.MagicRollback, s.AutoRollback)
		if len(n.OtherProfiles) > 0 {
			fmt.Fprintf(w, "    ignored  profiles %s (Concordia deploys only the system profile)\n", strings.Join(n.OtherProfiles, ", "))
		}
	}
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

func printSummary(w io.Writer, rep *deploy.Report) {
	ok := len(rep.Hosts) - len(rep.Failed)
	// Hosts never started are grouped by why: a stopped rollout of 100
	// hosts is one line, not 99.
	var whys []string
	notStarted := map[string][]string{}
	for _, h := range rep.Hosts {
		if h.Result == deploy.NotStarted {
			why := strings.TrimPrefix(h.Error, "not started: ")
			if notStarted[why] == nil {
				whys = append(whys, why)
			}
			notStarted[why] = append(notStarted[why], h.Node)
		}
	}
	n := 0
	for _, l := range notStarted {
		n += len(l)
	}
	fmt.Fprintf(w, "deploy %s: %d ok, %d not ok", rep.ID, ok, len(rep.Failed)-n)
	if n > 0 {
		fmt.Fprintf(w, ", %d not started", n)
	}
	fmt.Fprintf(w, ", %.1fs\n", rep.Millis/1000)
	for _, h := range rep.Hosts {
		if h.Result == deploy.NotStarted {
			continue
		}
		if h.Result != deploy.OK {
			fmt.Fprintf(w, "  %s: %s: %s\n", h.Node, strings.ToUpper(string(h.Result)), h.Error)
			continue
		}
		var notes []string
		switch {
		case h.RebootRequired:
			notes = append(notes, "reboot required (kernel or modules differ from the booted system)")
		case h.RebootRecommended:
			notes = append(notes, "reboot recommended (new initrd)")
		}
		if len(h.FailedUnits) > 0 {
			notes = append(notes, fmt.Sprintf("%d unit(s) failed before the deploy still failed: %s", len(h.FailedUnits), strings.Join(h.FailedUnits, ", ")))
		}
		if len(notes) > 0 {
			fmt.Fprintf(w, "  %s: ok, %s\n", h.Node, strings.Join(notes, "; "))
		}
	}
	for _, why := range whys {
		fmt.Fprintf(w, "  NOT STARTED (%s): %s\n", why, strings.Join(notStarted[why], ", "))
	}
}

// writeJSON publishes the report atomically, so a CI step reading it never
// sees half a file.
func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return durable.WriteFile(path, append(b, '\n'), 0o644)
}

// progressFor draws live progress on a terminal (unless --debug), lines
// otherwise; live is nil when lines are used.
func progressFor(env *cli.Env, o pushOpts, nodes []deploy.Node) (deploy.Progress, *deploy.Live) {
	if f, ok := env.Stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) && !o.fleet.debug {
		names := make([]string, len(nodes))
		for i, n := range nodes {
			names[i] = n.Name
		}
		live := deploy.NewLive(env.Stderr, names, 200*time.Millisecond)
		return live, live
	}
	return deploy.NewLines(env.Stderr), nil
}
