package upload

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"regexp"
	"slices"
	"strconv"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/bos55/concordia/internal/hostverb"
	"github.com/bos55/concordia/internal/kv"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/pkg/narinfo"
)

var _ store.DeployReports = (*Store)(nil)

// The deploy history (store.DeployReports). It lives in the index, so a
// shared store's replicas keep one history, and each change is one
// transaction:
//
//	deploys       report id -> the report as sent
//	deploy-order  sequence number (8 bytes, big-endian) -> deployRec JSON:
//	              the order reports were stored in, oldest first, which
//	              the bound drops from and lists walk
//	deploy-nodes  node name -> nodeRec JSON: that node's last results
//	deploy-meta   "seq" -> the last sequence number given
//
// The buckets are made by the first report, so a store that never had
// one has none. A report's per-node entries are copied out of it when it
// is stored (a node's view is then one read, not a walk of every report)
// and removed with it.

var (
	bDeploys     = []byte("deploys")
	bDeployOrder = []byte("deploy-order")
	bDeployNodes = []byte("deploy-nodes")
	bDeployMeta  = []byte("deploy-meta")
	keySeq       = []byte("seq")
)

// Bounds of the history besides limits.max_deploy_report_size and
// upload.deploy_reports_max.
const (
	// DefaultMaxDeployReports is upload.deploy_reports_max's default.
	DefaultMaxDeployReports = 1000
	// MaxDeployHosts bounds the hosts of one report: a report naming
	// more is not a fleet's, and each host costs a node record, which a
	// PUT rewrites.
	MaxDeployHosts = 2000
	// MaxDeployNodes bounds the nodes the kept reports name: past it the
	// oldest reports go too, so reports naming ever new nodes cannot make
	// the fleet view (read by anyone on a public cache) grow past it.
	MaxDeployNodes = 5000
	// MaxNodeResults is how many results a node's record keeps.
	MaxNodeResults = 20
	// maxSummaryFailed is how many failed nodes a summary names (it
	// counts them all): a list reads every summary.
	maxSummaryFailed = 20
	// MaxDeployList bounds one page of a list.
	MaxDeployList = 1000
	// maxNodeError is how much of a host's error its node record keeps
	// (the report has it whole).
	maxNodeError = 256
	maxNameLen   = 255
)

// deployRec is a stored report's entry in the order: its summary.
type deployRec = store.DeploySummary

// nodeRec is a node's record: its last results, newest first, and the
// newest "ok" among the kept reports.
type nodeRec struct {
	Last   []store.NodeDeploy `json:"last"`
	LastOK *store.NodeDeploy  `json:"lastOK,omitempty"`
}

// reportDoc is the shape every deploy report has (deploy.Report's JSON,
// and the reports of later kinds): what the history reads of it.
type reportDoc struct {
	ID     string        `json:"id"`
	Kind   string        `json:"kind"`
	Mode   string        `json:"mode"`
	Start  time.Time     `json:"start"`
	Millis float64       `json:"ms"`
	Hosts  *[]reportHost `json:"hosts"`
	Failed []string      `json:"failed"`
}

type reportHost struct {
	Node           string    `json:"node"`
	Hostname       string    `json:"hostname"`
	Path           string    `json:"path"`
	Mode           string    `json:"mode"`
	Result         string    `json:"result"`
	Error          string    `json:"error"`
	RebootRequired bool      `json:"rebootRequired"`
	Start          time.Time `json:"start"`
	Millis         float64   `json:"ms"`
}

// tokenRE is the form of a report's kind, mode and result words.
var tokenRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,31}$`)

// ParseDeployReport checks that data is a deploy report with id and
// returns its summary and its hosts' entries, in the report's order (the
// cache's deploy page reads stored reports with it, so the page and the
// history agree on what a report says). The
// rules: one JSON object of valid UTF-8 and nothing after it; "id" equal
// to id and a valid deploy id; "start" a time; "ms" not negative;
// "hosts" a list of 1..MaxDeployHosts hosts with distinct printable
// "node" names and a "result" word; "failed" distinct nodes of hosts.
// "kind" and "mode", when given, are words. Other fields are free.
func ParseDeployReport(id string, data []byte) (store.DeploySummary, []store.NodeDeploy, error) {
	var sum store.DeploySummary
	if err := hostverb.ValidID(id); err != nil {
		return sum, nil, fmt.Errorf("%w: %v", store.ErrInvalid, err)
	}
	if !utf8.Valid(data) {
		return sum, nil, invalidf("deploy report %s is not UTF-8", id)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	var d reportDoc
	if err := dec.Decode(&d); err != nil {
		return sum, nil, invalidf("deploy report %s is not a JSON report: %v", id, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return sum, nil, invalidf("deploy report %s: data after the JSON document", id)
	}
	if bytes.TrimSpace(data)[0] != '{' {
		return sum, nil, invalidf("deploy report %s is not a JSON object", id)
	}
	switch {
	case d.ID != id:
		return sum, nil, invalidf("deploy report id %q is not %q, the id it is stored under", d.ID, id)
	case d.Kind != "" && !tokenRE.MatchString(d.Kind):
		return sum, nil, invalidf("deploy report %s: kind %q is not a word (%s)", id, d.Kind, tokenRE)
	case d.Mode != "" && !tokenRE.MatchString(d.Mode):
		return sum, nil, invalidf("deploy report %s: mode %q is not a word (%s)", id, d.Mode, tokenRE)
	case d.Start.IsZero():
		return sum, nil, invalidf("deploy report %s has no start time", id)
	case !validMillis(d.Millis):
		return sum, nil, invalidf("deploy report %s: ms %v is not a duration", id, d.Millis)
	case d.Hosts == nil || len(*d.Hosts) == 0:
		return sum, nil, invalidf("deploy report %s names no hosts", id)
	case len(*d.Hosts) > MaxDeployHosts:
		return sum, nil, invalidf("deploy report %s names %d hosts, more than %d", id, len(*d.Hosts), MaxDeployHosts)
	case len(d.Failed) > len(*d.Hosts):
		return sum, nil, invalidf("deploy report %s: %d failed of %d hosts", id, len(d.Failed), len(*d.Hosts))
	}
	kind := d.Kind
	if kind == "" {
		kind = "push"
	}
	nodes := make(map[string]bool, len(*d.Hosts))
	entries := make([]store.NodeDeploy, 0, len(*d.Hosts))
	for i, h := range *d.Hosts {
		switch {
		case !validName(h.Node):
			return sum, nil, invalidf("deploy report %s: host %d: node %q is not 1..%d printable characters", id, i, h.Node, maxNameLen)
		case nodes[h.Node]:
			return sum, nil, invalidf("deploy report %s: node %q appears twice", id, h.Node)
		case h.Hostname != "" && !validName(h.Hostname):
			return sum, nil, invalidf("deploy report %s: node %q: hostname %q is not 1..%d printable characters", id, h.Node, h.Hostname, maxNameLen)
		case !tokenRE.MatchString(h.Result):
			return sum, nil, invalidf("deploy report %s: node %q: result %q is not a word (%s)", id, h.Node, h.Result, tokenRE)
		case h.Mode != "" && !tokenRE.MatchString(h.Mode):
			return sum, nil, invalidf("deploy report %s: node %q: mode %q is not a word (%s)", id, h.Node, h.Mode, tokenRE)
		case !validMillis(h.Millis):
			return sum, nil, invalidf("deploy report %s: node %q: ms %v is not a duration", id, h.Node, h.Millis)
		}
		if h.Path != "" {
			if _, _, _, err := narinfo.ParseStorePath(h.Path); err != nil {
				return sum, nil, invalidf("deploy report %s: node %q: path %q is not a store path", id, h.Node, h.Path)
			}
		}
		nodes[h.Node] = true
		mode := h.Mode
		if mode == "" {
			mode = d.Mode
		}
		start := h.Start
		if start.IsZero() {
			start = d.Start
		}
		entries = append(entries, store.NodeDeploy{Node: h.Node, Deploy: id, Kind: kind, Hostname: h.Hostname, Path: h.Path,
			Mode: mode, Result: h.Result, Error: truncate(h.Error, maxNodeError), Start: start.UTC(), Millis: h.Millis,
			RebootRequired: h.RebootRequired})
	}
	failed := make(map[string]bool, len(d.Failed))
	for _, f := range d.Failed {
		if !nodes[f] {
			return sum, nil, invalidf("deploy report %s: failed node %q is not one of its hosts", id, f)
		}
		if failed[f] {
			return sum, nil, invalidf("deploy report %s: failed node %q appears twice", id, f)
		}
		failed[f] = true
	}
	sum = store.DeploySummary{ID: id, Kind: kind, Mode: d.Mode, Start: d.Start.UTC(), Millis: d.Millis,
		Hosts: len(*d.Hosts), Failed: append([]string{}, d.Failed[:min(len(d.Failed), maxSummaryFailed)]...),
		FailedCount: len(d.Failed), Size: len(data)}
	return sum, entries, nil
}

// validMillis: a duration in milliseconds, below a century.
func validMillis(ms float64) bool {
	return ms >= 0 && ms < 100*365*24*3600*1000 && !math.IsNaN(ms)
}

// validName: what a node or host name may be, shown as text on a page.
func validName(s string) bool {
	if s == "" || len(s) > maxNameLen {
		return false
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

// truncate cuts s to at most n bytes, at a character boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

func seqKey(n uint64) []byte { return binary.BigEndian.AppendUint64(nil, n) }

// PutDeployReport stores a deploy report (store.DeployReports): checked
// by ParseDeployReport, at most limits.max_deploy_report_size bytes, and
// write-once. Past upload.deploy_reports_max the oldest reports go, in
// the same transaction.
func (s *Store) PutDeployReport(ctx context.Context, id, sender string, body io.Reader) (bool, error) {
	max := s.opts.Limits.MaxDeployReportSize
	data, err := io.ReadAll(io.LimitReader(body, max+1))
	if err != nil {
		return false, fmt.Errorf("read deploy report: %w", err)
	}
	if int64(len(data)) > max {
		return false, s.opts.Limits.DeployReportTooLarge(invalidf("deploy report %s larger than %d bytes", id, max))
	}
	sum, entries, err := ParseDeployReport(id, data)
	if err != nil {
		return false, err
	}
	sum.Stored, sum.Sender = s.now().UTC(), truncate(sender, maxNameLen)
	created := false
	err = s.db.Update(func(tx kv.Tx) error {
		b, err := deployBuckets(tx)
		if err != nil {
			return err
		}
		if old := b[0].Get([]byte(id)); old != nil {
			return sameDoc(old, data, bytes.Equal, "deploy report "+id)
		}
		var seq uint64
		if v := b[3].Get(keySeq); len(v) == 8 {
			seq = binary.BigEndian.Uint64(v)
		}
		seq++
		if err := b[3].Put(keySeq, seqKey(seq)); err != nil {
			return err
		}
		if err := b[0].Put([]byte(id), data); err != nil {
			return err
		}
		if err := putJSON(b[1], seqKey(seq), sum); err != nil {
			return err
		}
		for _, e := range entries {
			if err := addNodeResult(b[2], e); err != nil {
				return err
			}
		}
		created = true
		return s.boundDeploys(b)
	})
	return created, mapErr(err)
}

// deployBuckets makes (or opens) the history's buckets: deploys, order,
// nodes, meta.
func deployBuckets(tx kv.Tx) ([4]kv.Bucket, error) {
	var out [4]kv.Bucket
	for i, n := range [][]byte{bDeploys, bDeployOrder, bDeployNodes, bDeployMeta} {
		b, err := tx.CreateBucketIfNotExists(n)
		if err != nil {
			return out, err
		}
		out[i] = b
	}
	return out, nil
}

// addNodeResult puts e first in its node's record.
func addNodeResult(nodes kv.Bucket, e store.NodeDeploy) error {
	var r nodeRec
	if _, err := getJSON(nodes, []byte(e.Node), &r); err != nil {
		return err
	}
	r.Last = append([]store.NodeDeploy{e}, r.Last...)
	if len(r.Last) > MaxNodeResults {
		r.Last = r.Last[:MaxNodeResults]
	}
	if e.Result == "ok" && e.Kind != "reboot" { // a reboot put no new system there
		r.LastOK = &e
	}
	return putJSON(nodes, []byte(e.Node), r)
}

// errStop ends a ForEach early.
var errStop = errors.New("stop")

// boundDeploys drops the oldest reports, with their entries in the node
// records, while more than upload.deploy_reports_max are kept or they
// name more than MaxDeployNodes nodes; the newest always stays.
func (s *Store) boundDeploys(b [4]kv.Bucket) error {
	for {
		n := b[1].KeyN()
		if n <= 1 || n <= s.opts.MaxDeployReports && b[2].KeyN() <= MaxDeployNodes {
			return nil
		}
		if err := s.dropOldest(b, max(n-s.opts.MaxDeployReports, 1)); err != nil {
			return err
		}
	}
}

// dropOldest drops the n oldest reports.
func (s *Store) dropOldest(b [4]kv.Bucket, n int) error {
	type old struct {
		key []byte
		id  string
	}
	var drop []old
	err := b[1].ForEach(func(k, v []byte) error {
		if len(drop) >= n {
			return errStop
		}
		var r deployRec
		_ = json.Unmarshal(v, &r) // a record that does not parse goes all the same
		drop = append(drop, old{bytes.Clone(k), r.ID})
		return nil
	})
	if err != nil && !errors.Is(err, errStop) {
		return err
	}
	for _, o := range drop {
		if data := b[0].Get([]byte(o.id)); data != nil {
			// Its nodes are in the report, which passed the checks.
			if _, entries, err := ParseDeployReport(o.id, data); err == nil {
				for _, e := range entries {
					if err := dropNodeResult(b[2], e.Node, o.id); err != nil {
						return err
					}
				}
			}
			if err := b[0].Delete([]byte(o.id)); err != nil {
				return err
			}
		}
		if err := b[1].Delete(o.key); err != nil {
			return err
		}
		s.log.Debug("deploy report dropped: the history is full", "id", o.id, "upload.deploy_reports_max", s.opts.MaxDeployReports, "nodes", b[2].KeyN())
	}
	return nil
}

// dropNodeResult removes report id's entry from node's record, and the
// record once it holds none.
func dropNodeResult(nodes kv.Bucket, node, id string) error {
	var r nodeRec
	found, err := getJSON(nodes, []byte(node), &r)
	if err != nil || !found {
		return err
	}
	r.Last = slices.DeleteFunc(r.Last, func(e store.NodeDeploy) bool { return e.Deploy == id })
	if r.LastOK != nil && r.LastOK.Deploy == id {
		// The reports go oldest first: no kept one has an older "ok".
		r.LastOK = nil
	}
	if len(r.Last) == 0 && r.LastOK == nil {
		return nodes.Delete([]byte(node))
	}
	return putJSON(nodes, []byte(node), r)
}

// DeployReport returns the report id as it was sent.
func (s *Store) DeployReport(ctx context.Context, id string) ([]byte, error) {
	if hostverb.ValidID(id) != nil {
		return nil, invalidf("%q is not a deploy id", id)
	}
	var data []byte
	err := s.db.View(func(tx kv.Tx) error {
		if b := tx.Bucket(bDeploys); b != nil {
			data = bytes.Clone(b.Get([]byte(id)))
		}
		return nil
	})
	if err != nil {
		return nil, mapErr(err)
	}
	if data == nil {
		return nil, fmt.Errorf("deploy report %s: %w", id, store.ErrNotFound)
	}
	return data, nil
}

// DeployReports lists the stored reports, newest first. The cursor is
// the sequence number of the last report of the page before (decimal):
// it stays valid when older reports are dropped meanwhile.
func (s *Store) DeployReports(ctx context.Context, limit int, before string) (*store.DeployPage, error) {
	limit = min(max(limit, 1), MaxDeployList)
	var until uint64 = math.MaxUint64
	if before != "" {
		n, err := strconv.ParseUint(before, 10, 64)
		if err != nil || n == 0 {
			return nil, invalidf("cursor %q is not one a list of deploy reports gave", before)
		}
		until = n
	}
	// The order is oldest first and a bucket is walked forwards only:
	// keep the last limit+1 keys below the cursor.
	type item struct {
		seq uint64
		v   []byte
	}
	var ring []item
	err := s.db.View(func(tx kv.Tx) error {
		b := tx.Bucket(bDeployOrder)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			if len(k) != 8 {
				return nil
			}
			n := binary.BigEndian.Uint64(k)
			if n >= until {
				return errStop
			}
			ring = append(ring, item{n, bytes.Clone(v)})
			if len(ring) > limit+1 {
				ring = ring[1:]
			}
			return nil
		})
	})
	if err != nil && !errors.Is(err, errStop) {
		return nil, mapErr(err)
	}
	page := &store.DeployPage{Reports: []store.DeploySummary{}}
	if len(ring) > limit {
		ring = ring[1:]
		page.Next = strconv.FormatUint(ring[0].seq, 10)
	}
	for i := len(ring) - 1; i >= 0; i-- {
		var r deployRec
		if err := json.Unmarshal(ring[i].v, &r); err != nil {
			return nil, fmt.Errorf("deploy history record %d: %w", ring[i].seq, err)
		}
		page.Reports = append(page.Reports, r)
	}
	return page, nil
}

// NodeDeploys is node's last results, newest first.
func (s *Store) NodeDeploys(ctx context.Context, node string, limit int) (*store.NodeHistory, error) {
	if !validName(node) {
		return nil, invalidf("%q is not a node name", node)
	}
	var r nodeRec
	found := false
	err := s.db.View(func(tx kv.Tx) error {
		b := tx.Bucket(bDeployNodes)
		if b == nil {
			return nil
		}
		var err error
		found, err = getJSON(b, []byte(node), &r)
		return err
	})
	if err != nil {
		return nil, mapErr(err)
	}
	if !found {
		return nil, fmt.Errorf("no kept deploy report names node %q: %w", node, store.ErrNotFound)
	}
	h := nodeHistory(node, r, limit)
	return &h, nil
}

// DeployNodes is every node the kept reports name, by name.
func (s *Store) DeployNodes(ctx context.Context, limit int) ([]store.NodeHistory, error) {
	out := []store.NodeHistory{}
	err := s.db.View(func(tx kv.Tx) error {
		b := tx.Bucket(bDeployNodes)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			var r nodeRec
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("deploy history of node %q: %w", k, err)
			}
			out = append(out, nodeHistory(string(k), r, limit))
			return nil
		})
	})
	if err != nil {
		return nil, mapErr(err)
	}
	return out, nil
}

func nodeHistory(node string, r nodeRec, limit int) store.NodeHistory {
	limit = min(max(limit, 1), MaxNodeResults)
	if len(r.Last) > limit {
		r.Last = r.Last[:limit]
	}
	if r.Last == nil {
		r.Last = []store.NodeDeploy{}
	}
	return store.NodeHistory{Node: node, Last: r.Last, LastOK: r.LastOK}
}
