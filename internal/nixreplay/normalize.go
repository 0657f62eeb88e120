package nixreplay

import (
	"fmt"
	"slices"
	"strings"
)

// Normalize renders a trace as comparable lines: method, URL shape, the
// headers that matter to a cache, and the status. A NAR URL becomes
// "/nar(<owner>)<suffix>", owner being the hash part of the store path
// whose narinfo names it (owner(path), "" if unknown), because two
// compressors give two file hashes for one NAR. Runs of consecutive
// narinfo GETs are sorted: the client issues them in parallel
// (queryValidPaths, computeFSClosure), so their order is not its own.
func Normalize(trace []Entry, owner func(urlPath string) string) []string {
	var out []string
	runStart := -1
	flush := func() {
		if runStart >= 0 {
			slices.Sort(out[runStart:])
			runStart = -1
		}
	}
	for _, e := range trace {
		p := e.Path
		if strings.HasPrefix(p, "/nar/") {
			base := strings.TrimPrefix(p, "/nar/")
			i := strings.Index(base, ".nar")
			if i >= 0 {
				o := ""
				if owner != nil {
					o = owner(p)
				}
				p = "/nar(" + o + ")" + base[i:]
			}
		}
		line := fmt.Sprintf("%s %s ae=%q ct=%q ce=%q expect=%q range=%t status=%d",
			e.Method, p, e.AcceptEncoding, e.ContentType, e.ContentEncoding, e.Expect, e.Range != "", e.Status)
		isQuery := e.Method == "GET" && strings.HasSuffix(e.Path, ".narinfo")
		if !isQuery {
			flush()
		} else if runStart < 0 {
			runStart = len(out)
		}
		out = append(out, line)
	}
	flush()
	return out
}
