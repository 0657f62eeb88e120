package deploy

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"
)

// Progress hears about each host's steps as they happen. Implementations
// must be safe for concurrent use: hosts run in parallel.
type Progress interface {
	Step(node, step string)
	Done(h HostReport)
}

// PhaseProgress is what a Progress may add to hear the rollout's phases
// (the canaries, each wave) as they begin; found by type assertion, so
// other Progress implementations need not care.
type PhaseProgress interface {
	Phase(name string, nodes []string)
}

// phaseProgress tells p, when it listens, that a phase of nodes idx begins.
func phaseProgress(p Progress, name string, nodes []Node, idx []int) {
	pp, ok := p.(PhaseProgress)
	if !ok {
		return
	}
	l := make([]string, len(idx))
	for k, i := range idx {
		l[k] = nodes[i].Name
	}
	pp.Phase(name, l)
}

type nopProgress struct{}

func (nopProgress) Step(string, string) {}
func (nopProgress) Done(HostReport)     {}

// Lines writes one prefixed line per event, for CI logs.
type Lines struct {
	W     io.Writer
	mu    sync.Mutex
	start time.Time
}

// NewLines returns a Progress for non-terminal output.
func NewLines(w io.Writer) *Lines { return &Lines{W: w, start: time.Now()} }

func (l *Lines) Step(node, step string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(l.W, "[%s] %s (+%s)\n", node, step, time.Since(l.start).Round(100*time.Millisecond))
}

// Phase writes one line as the canaries or a wave begin.
func (l *Lines) Phase(name string, nodes []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(l.W, "== %s: %s (+%s)\n", name, strings.Join(nodes, ", "), time.Since(l.start).Round(100*time.Millisecond))
}

func (l *Lines) Done(h HostReport) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(l.W, "[%s] %s\n", h.Node, doneText(h))
}

func doneText(h HostReport) string {
	d := h.Duration.Round(100 * time.Millisecond)
	if h.Result == NotStarted {
		return "NOT STARTED: " + strings.TrimPrefix(firstLine(h.Error), "not started: ")
	}
	if h.Result == OK {
		s := fmt.Sprintf("ok in %s", d)
		if h.RebootRequired {
			s += " (reboot required)"
		}
		return s
	}
	return fmt.Sprintf("%s after %s: %s", strings.ToUpper(string(h.Result)), d, firstLine(h.Error))
}

// Live redraws one line per host in place on a terminal.
type Live struct {
	W     io.Writer
	mu    sync.Mutex
	order []string
	rows  map[string]*liveRow
	drawn int
	stop  chan struct{}
	done  chan struct{}
}

type liveRow struct {
	step  string
	since time.Time
	start time.Time
	final string
}

// NewLive starts redrawing every interval until Close.
func NewLive(w io.Writer, nodes []string, interval time.Duration) *Live {
	l := &Live{W: w, rows: map[string]*liveRow{}, stop: make(chan struct{}), done: make(chan struct{})}
	l.order = append(l.order, nodes...)
	sort.Strings(l.order)
	now := time.Now()
	for _, n := range l.order {
		l.rows[n] = &liveRow{step: "waiting", since: now, start: now}
	}
	go func() {
		defer close(l.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				l.draw()
			case <-l.stop:
				l.draw()
				return
			}
		}
	}()
	return l
}

func (l *Live) Step(node, step string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if r, ok := l.rows[node]; ok {
		if r.step == "waiting" {
			r.start = time.Now()
		}
		r.step, r.since = step, time.Now()
	}
}

func (l *Live) Done(h HostReport) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if r, ok := l.rows[h.Node]; ok {
		r.final = doneText(h)
	}
}

// Close draws the final state and stops redrawing.
func (l *Live) Close() {
	close(l.stop)
	<-l.done
}

func (l *Live) draw() {
	l.mu.Lock()
	defer l.mu.Unlock()
	var b strings.Builder
	if l.drawn > 0 {
		fmt.Fprintf(&b, "\x1b[%dA", l.drawn) // back to the first row
	}
	width := 0
	for _, n := range l.order {
		width = max(width, len(n))
	}
	for _, n := range l.order {
		r := l.rows[n]
		b.WriteString("\r\x1b[2K")
		if r.final != "" {
			fmt.Fprintf(&b, "%-*s  %s\n", width, n, r.final)
			continue
		}
		fmt.Fprintf(&b, "%-*s  %-9s %5.1fs  (total %.1fs)\n", width, n, r.step,
			time.Since(r.since).Seconds(), time.Since(r.start).Seconds())
	}
	l.drawn = len(l.order)
	io.WriteString(l.W, b.String())
}
