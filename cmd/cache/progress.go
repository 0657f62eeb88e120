package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"golang.org/x/term"
)

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
