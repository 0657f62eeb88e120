package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"golang.org/x/term"

	"github.com/bos55/concordia/internal/cli"
)

func newVerifyCommand() *cli.Command {
	var f uploadFlags
	var repair bool
	return &cli.Command{
		Name:  "verify",
		Usage: "[--repair] [--config FILE | --dir DIR | --cache URL]",
		Short: "re-hash every uploaded NAR and report (or quarantine) damage",
		Long: `Reads every NAR file of the upload store and checks it against the
FileHash and NarHash computed when it was uploaded, and the NAR structure.
With --repair, damaged files move to quarantine/ in the store directory,
their paths are dropped, and so is every path whose closure that breaks
(the client then re-uploads them). Exit status 1 when damage was found.
A running server holds the store's lock: use --cache URL (with an admin
token) to have it verify itself.`,
		Flags: func(fs *flag.FlagSet) {
			f.register(fs, true)
			fs.BoolVar(&repair, "repair", false, "quarantine damaged files and drop their paths")
		},
		Run: func(ctx context.Context, env *cli.Env, args []string) error {
			if len(args) != 0 {
				return cli.Usagef("verify takes no arguments")
			}
			if f.cache != "" {
				return verifyRemote(ctx, env, &f, repair)
			}
			us, done, err := f.open(ctx, env)
			if err != nil {
				return err
			}
			defer done()
			bar := newProgress(env.Stderr)
			rep, err := us.Verify(ctx, repair, bar.update)
			bar.finish()
			if err != nil {
				return err
			}
			for _, b := range rep.Bad {
				fmt.Fprintf(env.Stdout, "DAMAGED %s: %s\n", b.Name, b.Reason)
				for _, p := range b.Paths {
					verb := "affects"
					if rep.Repaired {
						verb = "dropped"
					}
					fmt.Fprintf(env.Stdout, "  %s %s\n", verb, p)
				}
			}
			for _, p := range rep.Broken {
				fmt.Fprintf(env.Stdout, "dropped %s (a reference was damaged)\n", p)
			}
			fmt.Fprintf(env.Stdout, "checked %d NAR files (%s): %d damaged\n", rep.Checked, humanBytes(rep.Bytes), len(rep.Bad))
			if len(rep.Bad) > 0 {
				if !repair {
					fmt.Fprintln(env.Stdout, "run with --repair to quarantine them")
				}
				return &cli.ExitError{Code: 1}
			}
			return nil
		},
	}
}

// verifyRemote runs POST /api/verify and relays its streamed answer,
// drawing the progress lines as a bar.
func verifyRemote(ctx context.Context, env *cli.Env, f *uploadFlags, repair bool) error {
	tok, err := f.token()
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost,
		fmt.Sprintf("%s/api/verify?repair=%t", strings.TrimRight(f.cache, "/"), repair), nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("POST /api/verify: %s: %s", resp.Status, strings.TrimSpace(string(msg)))
	}
	bar := newProgress(env.Stderr)
	damaged, failed := false, false
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		var done, total int64
		if n, _ := fmt.Sscanf(line, "progress %d %d", &done, &total); n == 2 {
			bar.update(done, total)
			continue
		}
		damaged = damaged || strings.HasPrefix(line, "DAMAGED ")
		failed = failed || strings.HasPrefix(line, "ERROR ")
		fmt.Fprintln(env.Stdout, line)
	}
	bar.finish()
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading the server's answer: %w", err)
	}
	if failed {
		return errors.New("the server's verify failed (see above)")
	}
	if damaged {
		return &cli.ExitError{Code: 1}
	}
	return nil
}

// progress draws a bar on a terminal and prints a plain line every ten
// percent otherwise (CI logs).
type progress struct {
	w       io.Writer
	tty     bool
	start   time.Time
	lastPct int
	drawn   time.Time
}

func newProgress(w io.Writer) *progress {
	p := &progress{w: w, start: time.Now(), lastPct: -1}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.tty = true
	}
	return p
}

func (p *progress) update(done, total int64) {
	pct := 100
	if total > 0 {
		pct = int(done * 100 / total)
	}
	if p.tty {
		if time.Since(p.drawn) < 100*time.Millisecond && done != total {
			return
		}
		p.drawn = time.Now()
		const width = 40
		n := pct * width / 100
		fmt.Fprintf(p.w, "\r[%s%s] %3d%% %s / %s", strings.Repeat("#", n), strings.Repeat(" ", width-n),
			pct, humanBytes(done), humanBytes(total))
		return
	}
	if pct/10 != p.lastPct/10 || p.lastPct < 0 {
		p.lastPct = pct
		fmt.Fprintf(p.w, "verify: %d%% (%s of %s)\n", pct, humanBytes(done), humanBytes(total))
	}
}

func (p *progress) finish() {
	if p.tty && !p.drawn.IsZero() {
		fmt.Fprintln(p.w)
	}
}
