package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/bos55/concordia/internal/cacheapi"
	"github.com/bos55/concordia/internal/cli"
	"github.com/bos55/concordia/internal/store"
)

type historyOpts struct {
	cache     string
	tokenFile string
	netrcFile string
	node      string
	limit     int
	before    string
	json      bool
}

func historyCmd() *cli.Command {
	var o historyOpts
	return &cli.Command{
		Name:  "history",
		Usage: "--cache URL [flags] [ID]",
		Short: "list the deploy reports the cache keeps (what push sent), a node's last results, or one report",
		Long: `Reads the cache's deploy history (every push given --cache sends its report there):
without arguments the last reports, newest first; with --node the last results of one node and
the deploy that last put a system on it; with an ID that report as the deployer wrote it (JSON).
A private cache needs a token with read (--cache-token-file, --netrc-file or $CONCORDIA_TOKEN).`,
		Flags: func(fs *flag.FlagSet) {
			fs.StringVar(&o.cache, "cache", "", "binary cache URL")
			fs.StringVar(&o.tokenFile, "cache-token-file", "", "file with a bearer token (a private cache needs read)")
			fs.StringVar(&o.netrcFile, "netrc-file", "", "netrc whose password for the cache's host is the cache token")
			fs.StringVar(&o.node, "node", "", "show this node's last results")
			fs.IntVar(&o.limit, "limit", 20, "how many reports (or results) to show, 1..1000")
			fs.StringVar(&o.before, "before", "", "continue a list: the cursor the previous page printed")
			fs.BoolVar(&o.json, "json", false, "print JSON")
		},
		Run: func(ctx context.Context, env *cli.Env, args []string) error {
			return runHistory(ctx, env, o, args)
		},
	}
}

func runHistory(ctx context.Context, env *cli.Env, o historyOpts, args []string) error {
	switch {
	case o.cache == "":
		return cli.Usagef("--cache is required: the history is the cache's")
	case len(args) > 1:
		return cli.Usagef("at most one report id, got %q", args)
	case len(args) == 1 && o.node != "":
		return cli.Usagef("a report id and --node do not go together")
	case o.limit < 1 || o.limit > 1000:
		return cli.Usagef("--limit must be 1..1000")
	}
	token, err := cacheapi.Token(o.tokenFile, o.netrcFile, o.cache)
	if err != nil {
		return err
	}
	c := &cacheapi.Client{URL: o.cache, Token: token}
	switch {
	case len(args) == 1:
		doc, err := c.Deploy(ctx, args[0])
		if err != nil {
			return err
		}
		var v any
		_ = json.Unmarshal(doc, &v)
		b, _ := json.MarshalIndent(v, "", "  ")
		fmt.Fprintf(env.Stdout, "%s\n", b)
		return nil
	case o.node != "":
		h, err := c.NodeDeploys(ctx, o.node, min(o.limit, 50))
		if err != nil {
			return err
		}
		if o.json {
			return printJSON(env.Stdout, h)
		}
		printNodeHistory(env.Stdout, h)
		return nil
	}
	page, err := c.Deploys(ctx, o.limit, o.before)
	if err != nil {
		return err
	}
	if o.json {
		return printJSON(env.Stdout, page)
	}
	printDeploys(env.Stdout, page)
	return nil
}

func printJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

func printDeploys(w io.Writer, page *store.DeployPage) {
	if len(page.Reports) == 0 {
		fmt.Fprintln(w, "no deploy reports")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tKIND\tMODE\tSTART\tTOOK\tHOSTS\tFAILED\tSENT BY")
	for _, r := range page.Reports {
		failed := "-"
		if r.FailedCount > 0 {
			failed = fmt.Sprintf("%d: %s", r.FailedCount, firstNames(r.Failed, r.FailedCount, 3))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", r.ID, r.Kind, orDash(r.Mode), when(r.Start), took(r.Millis), r.Hosts, failed, orDash(r.Sender))
	}
	tw.Flush()
	if page.Next != "" {
		fmt.Fprintf(w, "older: --before %s\n", page.Next)
	}
}

func printNodeHistory(w io.Writer, h *store.NodeHistory) {
	if h.LastOK != nil {
		fmt.Fprintf(w, "%s: last deployed by %s (%s, %s): %s\n", h.Node, h.LastOK.Deploy, h.LastOK.Mode, when(h.LastOK.Start), h.LastOK.Path)
	} else {
		fmt.Fprintf(w, "%s: no kept report deployed it successfully\n", h.Node)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "DEPLOY\tKIND\tMODE\tSTART\tRESULT\tSYSTEM\tERROR")
	for _, e := range h.Last {
		result := e.Result
		if e.RebootRequired {
			result += " (reboot required)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Deploy, e.Kind, orDash(e.Mode), when(e.Start), result, orDash(e.Path), oneLine(e.Error, 80))
	}
	tw.Flush()
}

func when(t time.Time) string { return t.Local().Format("2006-01-02 15:04:05") }

func took(ms float64) string {
	return (time.Duration(ms * float64(time.Millisecond))).Round(100 * time.Millisecond).String()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// firstNames names at most n of names, of total.
func firstNames(names []string, total, n int) string {
	names = names[:min(len(names), n)]
	if total <= len(names) {
		return strings.Join(names, ", ")
	}
	return strings.Join(names, ", ") + fmt.Sprintf(", +%d", total-len(names))
}

// oneLine is s on one line, at most n runes, without control
// characters (a report's error is its sender's text, and this goes to a
// terminal): the report has it whole.
func oneLine(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsSpace(r) {
			return ' '
		}
		if !unicode.IsPrint(r) {
			return '?'
		}
		return r
	}, s)
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return orDash(s)
}
