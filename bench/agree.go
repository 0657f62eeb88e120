package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
)

// agreeWithin is how far two runs' ratios of the same figure may differ
// (the larger over the smaller, less one) and still count as the same
// measurement: a ratio that moves more than this between two runs of one
// commit cannot tell a change's effect from the machine's mood.
const agreeWithin = 0.15

// targetRow is one row of a report's targets table.
type targetRow struct {
	figure string
	ratio  float64 // NaN for a row without a reference (peak RSS): its value
	value  float64
}

// readTargets reads the targets table of a report written by report.write.
func readTargets(r io.Reader) ([]targetRow, error) {
	var rows []targetRow
	in := false
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "## ") {
			in = strings.HasPrefix(line, "## Targets")
			continue
		}
		if !in || !strings.HasPrefix(line, "| ") || strings.HasPrefix(line, "| figure |") {
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		if len(cells) != 7 {
			return nil, fmt.Errorf("targets row with %d cells, want 7: %q", len(cells), line)
		}
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		row := targetRow{figure: cells[0], ratio: math.NaN()}
		var err error
		if row.value, err = strconv.ParseFloat(cells[1], 64); err != nil {
			return nil, fmt.Errorf("row %q: value %q: %w", cells[0], cells[1], err)
		}
		if cells[3] != "-" {
			if row.ratio, err = strconv.ParseFloat(cells[3], 64); err != nil {
				return nil, fmt.Errorf("row %q: ratio %q: %w", cells[0], cells[3], err)
			}
		}
		rows = append(rows, row)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(rows) == 0 {
		return nil, errors.New("no targets table")
	}
	return rows, nil
}

// agreement compares the targets tables of two runs row by row (a row
// without a reference compares its value) and writes a markdown table of
// both figures and their difference. It returns how many rows differ by
// more than agreeWithin, and how many are in only one of the runs.
func agreement(w io.Writer, nameA, nameB string, a, b []targetRow) (disagree, unmatched int) {
	byFig := map[string]targetRow{}
	for _, r := range b {
		byFig[r.figure] = r
	}
	fmt.Fprintf(w, "| figure | %s | %s | larger / smaller | within %.0f%% |\n|---|---|---|---|---|\n", nameA, nameB, agreeWithin*100)
	seen := map[string]bool{}
	for _, ra := range a {
		seen[ra.figure] = true
		rb, ok := byFig[ra.figure]
		if !ok {
			unmatched++
			fmt.Fprintf(w, "| %s | %s | - | - | only in %s |\n", ra.figure, fmtRatio(ra), nameA)
			continue
		}
		x, y := ra.ratio, rb.ratio
		if math.IsNaN(x) || math.IsNaN(y) {
			x, y = ra.value, rb.value
		}
		d := math.Max(x, y)/math.Min(x, y) - 1
		ok = d <= agreeWithin+1e-9
		if !ok {
			disagree++
		}
		fmt.Fprintf(w, "| %s | %s | %s | %.2f | %s |\n", ra.figure, fmtRatio(ra), fmtRatio(rb), 1+d, yes(ok))
	}
	for _, rb := range b {
		if !seen[rb.figure] {
			unmatched++
			fmt.Fprintf(w, "| %s | - | %s | - | only in %s |\n", rb.figure, fmtRatio(rb), nameB)
		}
	}
	return disagree, unmatched
}

func fmtRatio(r targetRow) string {
	if math.IsNaN(r.ratio) {
		return fmtv(r.value)
	}
	return fmt.Sprintf("%.2f", r.ratio)
}

// agreeMain is `bench agree A/report.md B/report.md`: whether two runs'
// targets tables agree, the check that a ratio holds from run to run. It
// exits 1 when a ratio differs by more than agreeWithin or a row is in
// only one run.
func agreeMain(args []string) {
	if len(args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: bench agree REPORT_A REPORT_B")
		os.Exit(2)
	}
	var runs [2][]targetRow
	for i, p := range args {
		f, err := os.Open(p)
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench agree: %v\n", err)
			os.Exit(2)
		}
		runs[i], err = readTargets(f)
		f.Close()
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench agree: %s: %v\n", p, err)
			os.Exit(2)
		}
	}
	bad, unmatched := agreement(os.Stdout, "run A", "run B", runs[0], runs[1])
	fmt.Printf("\n%d of %d ratios differ by more than %.0f%%; %d rows in only one run\n", bad, len(runs[0]), agreeWithin*100, unmatched)
	if bad > 0 || unmatched > 0 {
		os.Exit(1)
	}
}
