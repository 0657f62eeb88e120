package host

import (
	"errors"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/bos55/concordia/internal/hostverb"
)

// maxRecords bounds how many deploy records LastDeploy reads (the most
// recently modified): the state directory is on /run, emptied at each
// boot, so a host keeps the deploys since then, which a scrape every
// minute should not all parse.
const maxRecords = 64

// LastDeploy returns the record of the deploy that started last, nil when
// the host kept none (no deploy since boot). A record that cannot be read
// or parsed is skipped, not fatal: the exporter must still report the
// others. Only a state directory that cannot be listed is an error.
func LastDeploy(o Options) (*hostverb.Record, error) {
	o = o.withDefaults()
	ents, err := os.ReadDir(deploysDir(o))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	type cand struct {
		id  string
		mod time.Time
	}
	var cands []cand
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || !e.Type().IsRegular() || hostverb.ValidID(id) != nil {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue
		}
		cands = append(cands, cand{id, fi.ModTime()})
	}
	// Newest first: a record is rewritten at each state change, so the
	// last deploy is among the last modified.
	sort.Slice(cands, func(i, j int) bool { return cands[i].mod.After(cands[j].mod) })
	if len(cands) > maxRecords {
		cands = cands[:maxRecords]
	}
	var last *hostverb.Record
	for _, c := range cands {
		id := c.id
		r, err := Load(o, id)
		if err != nil || r.ID != id {
			continue
		}
		if last == nil || r.Started.After(last.Started) || (r.Started.Equal(last.Started) && r.Updated.After(last.Updated)) {
			last = r
		}
	}
	return last, nil
}
