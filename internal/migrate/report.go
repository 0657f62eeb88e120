package migrate

import (
	"encoding/json"
	"fmt"
	"io"
	"time"
)

// Write writes the report as indented JSON, or for a person: a line per
// thing not copied or missing at the destination, then the counts.
func (r *Report) Write(w io.Writer, asJSON bool) {
	if asJSON {
		b, _ := json.MarshalIndent(r, "", "  ")
		fmt.Fprintf(w, "%s\n", b)
		return
	}
	for _, p := range append(append([]Problem(nil), r.Conflicts...), r.Failed...) {
		fmt.Fprintf(w, "NOT COPIED %s: %s\n", p.What, p.Err)
	}
	for _, m := range r.Missing {
		fmt.Fprintf(w, "MISSING at the destination: %s\n", m)
	}
	verb := "copied"
	if r.DryRun {
		verb = "would copy"
	}
	fmt.Fprintf(w, "%s %d of %d paths (%d NAR files, %d bytes), %d already there; %d listings, %d build logs, "+
		"%d realisations, %d pins, %d tombstones; %d conflicts, %d failed, %d missing; %s\n",
		verb, r.Copied, r.Paths, r.Blobs, r.Bytes, r.Skipped, r.Listings, r.Logs, r.Realisations, r.Pins,
		r.Tombstones, len(r.Conflicts), len(r.Failed), len(r.Missing), time.Duration(r.Duration).Round(time.Millisecond))
}
