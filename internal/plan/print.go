package plan

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// Print writes the plan for a terminal: a table with a row per host, then
// each host's details (version changes, packages added and removed,
// reboot, closure problems).
func Print(w io.Writer, p *Plan) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tMODE\tCURRENT -> NEW\t+PATHS\t-PATHS\tDOWNLOAD\tREBOOT\tCACHE")
	for _, h := range p.Hosts {
		sys := Short(h.Current) + " -> " + Short(h.New)
		if h.Unchanged {
			sys = Short(h.New) + " (unchanged)"
		}
		add, rm, dl := "?", "?", "?"
		if h.Diff != nil {
			add, rm, dl = fmt.Sprintf("+%d", h.Diff.PathsAdded), fmt.Sprintf("-%d", h.Diff.PathsRemoved), Bytes(h.Diff.DownloadBytes)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", h.Node, h.Mode, sys, add, rm, dl, rebootCell(h.Reboot), cacheCell(h))
	}
	tw.Flush()
	for _, h := range p.Hosts {
		fmt.Fprintf(w, "\n%s: %s %s\n", h.Node, h.Mode, h.New)
		if h.Current != "" {
			fmt.Fprintf(w, "  current  %s\n", h.Current)
		}
		if h.Error != "" {
			fmt.Fprintf(w, "  error    %s\n", h.Error)
		}
		if c := h.Closure; c != nil {
			if c.OK {
				fmt.Fprintf(w, "  closure  %d paths in the cache, all signed by a trusted key\n", c.Paths)
			} else {
				fmt.Fprintf(w, "  closure  NOT DEPLOYABLE: %d missing, %d unsigned\n", len(c.Missing), len(c.Unsigned))
				for _, m := range first(c.Missing, 10) {
					fmt.Fprintf(w, "    missing   %s\n", m)
				}
				for _, u := range first(c.Unsigned, 10) {
					fmt.Fprintf(w, "    unsigned  %s\n", u)
				}
			}
		}
		switch {
		case h.Unchanged:
			fmt.Fprintf(w, "  diff     none: the host runs this system\n")
		case h.Diff != nil:
			d := h.Diff
			fmt.Fprintf(w, "  diff     +%d -%d paths, download %s (%s unpacked), size %s\n", d.PathsAdded, d.PathsRemoved,
				Bytes(d.DownloadBytes), Bytes(d.DownloadNarBytes), signed(d.NarSizeDelta))
			for _, kind := range []string{KindVersion, KindAdded, KindRemoved, KindRebuilt} {
				for _, c := range d.Changes {
					if c.Kind == kind {
						fmt.Fprintf(w, "    %-8s %s\n", kind, changeLine(c))
					}
				}
			}
		}
		if h.DiffUnknown != "" {
			fmt.Fprintf(w, "  diff     %s\n", h.DiffUnknown)
		}
		r := h.Reboot
		switch r.Verdict {
		case RebootUnknown:
			fmt.Fprintf(w, "  reboot   unknown: %s\n", r.Reason)
		case RebootNo:
			fmt.Fprintf(w, "  reboot   no (kernel, modules and initrd as booted)\n")
		default:
			fmt.Fprintf(w, "  reboot   %s: %s differ from the booted system %s\n", r.Verdict, strings.Join(r.Changed, ", "), Short(r.Booted))
		}
	}
}

func rebootCell(r Reboot) string {
	if r.Verdict == "" {
		return "?"
	}
	return r.Verdict
}

func cacheCell(h Host) string {
	c := h.Closure
	switch {
	case c == nil:
		return "error"
	case c.OK:
		return "ok"
	}
	var parts []string
	if n := len(c.Missing); n > 0 {
		parts = append(parts, fmt.Sprintf("%d missing", n))
	}
	if n := len(c.Unsigned); n > 0 {
		parts = append(parts, fmt.Sprintf("%d unsigned", n))
	}
	return strings.Join(parts, ", ")
}

// changeLine renders a change as diff-closures does: "openssl: 3.0.14 →
// 3.0.15, +12.0 KiB" (∅ for no version, ε for the empty one).
func changeLine(c Change) string {
	s := c.Name + ": "
	if c.Kind != KindRebuilt {
		s += versions(c.Before) + " → " + versions(c.After)
	} else {
		s += "same version, another build"
	}
	if c.NarSizeDelta != 0 {
		s += ", " + signed(c.NarSizeDelta)
	}
	return s
}

func versions(v []string) string {
	if len(v) == 0 {
		return "∅"
	}
	out := make([]string, len(v))
	for i, s := range v {
		if s == "" {
			s = "ε"
		}
		out[i] = s
	}
	return strings.Join(out, ", ")
}

func first(l []string, n int) []string {
	if len(l) > n {
		return append(l[:n:n], fmt.Sprintf("... and %d more", len(l)-n))
	}
	return l
}

func signed(n int64) string {
	if n >= 0 {
		return "+" + Bytes(n)
	}
	return "-" + Bytes(-n)
}

// Bytes renders a size as Nix does (KiB, MiB, GiB with one decimal).
func Bytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	v, u := float64(n)/unit, "KiB"
	for _, next := range []string{"MiB", "GiB", "TiB"} {
		if v < unit {
			break
		}
		v, u = v/unit, next
	}
	return fmt.Sprintf("%.1f %s", v, u)
}
