package deploy

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// NotStarted: the deploy never touched the host, because the rollout
// stopped before its turn (a canary failed, the failure budget ran out,
// the push was interrupted). It counts as a failure: CI must not go green
// on a fleet only partly deployed.
const NotStarted Outcome = "not-started"

// ErrRollout marks a rollout limit that cannot be used (--max-unavailable,
// --max-failures, the flake's maxUnavailable and maxFailures, --canary).
var ErrRollout = errors.New("rollout")

// Rollout is the order and the limits a push ran with, as the report
// records them.
type Rollout struct {
	// Canary lists the nodes deployed first; a failure there stopped the
	// rollout before any other host.
	Canary []string `json:"canary,omitempty"`
	// Waves are the other nodes by their wave setting, lowest first; each
	// wave finished before the next started.
	Waves []Wave `json:"waves"`
	// MaxUnavailable is the bound on hosts mid-deploy at once that was used
	// (the smaller of --parallel and --max-unavailable, at most all hosts).
	MaxUnavailable int `json:"maxUnavailable"`
	// MaxFailures is the failure budget (0: none).
	MaxFailures int `json:"maxFailures,omitempty"`
	// Stopped says why hosts were not started, when some were not.
	Stopped string `json:"stopped,omitempty"`
}

// Wave is one group of nodes sharing a wave number.
type Wave struct {
	Wave  int      `json:"wave"`
	Nodes []string `json:"nodes"`
}

// ParseMaxUnavailable reads a bound on hosts mid-deploy at once: "N" hosts
// or "P%" of the n selected hosts (rounded down, at least one host). Zero,
// a sign, a fraction or more than 100% is an error, not "no bound": a
// typo must not deploy the whole fleet at once.
func ParseMaxUnavailable(s string, n int) (int, error) {
	v := strings.TrimSpace(s)
	pct := strings.HasSuffix(v, "%")
	v = strings.TrimSuffix(v, "%")
	bad := func(why string) (int, error) {
		return 0, fmt.Errorf("%w: max unavailable %q: %s (want a number of hosts such as 2, or a percentage such as 25%%)", ErrRollout, s, why)
	}
	if v == "" || strings.Trim(v, "0123456789") != "" {
		return bad("not a whole number")
	}
	if len(v) > 9 {
		return bad("too large")
	}
	k, _ := strconv.Atoi(v) // only digits, at most 9 of them
	switch {
	case k == 0:
		return bad("must be at least 1")
	case !pct:
		return k, nil
	case k > 100:
		return bad("a percentage is at most 100%")
	}
	return max(n*k/100, 1), nil
}

// checkMaxFailures checks the flake's maxFailures.
func checkMaxFailures(n int) error {
	if n < 0 {
		return fmt.Errorf("%w: maxFailures %d must be 0 (no limit) or more", ErrRollout, n)
	}
	return nil
}

// plan is the order of one push: indexes into its nodes.
type plan struct {
	canary []int
	waves  [][]int
	info   Rollout
	// refuse, when set, is why nothing may start (a canary that names no
	// selected node, a limit that does not parse).
	refuse string
}

// planRollout orders nodes: the canaries (Options.Canary when given, else
// the nodes whose canary setting is true), then the rest by wave, lowest
// first, keeping the given order inside a wave. Limits left zero in o come
// from the flake's fleet-wide settings.
func planRollout(nodes []Node, o Options) plan {
	var p plan
	isCanary := make([]bool, len(nodes))
	if len(o.Canary) > 0 {
		for _, name := range o.Canary {
			found := false
			for i, n := range nodes {
				if n.Name == name {
					isCanary[i], found = true, true
				}
			}
			if !found {
				p.refuse = fmt.Sprintf("canary %q is not among the selected nodes (%s)", name, names(nodes))
			}
		}
	} else {
		for i, n := range nodes {
			isCanary[i] = n.Settings.Canary
		}
	}
	byWave := map[int][]int{}
	for i, n := range nodes {
		if isCanary[i] {
			p.canary = append(p.canary, i)
			p.info.Canary = append(p.info.Canary, n.Name)
			continue
		}
		byWave[n.Settings.Wave] = append(byWave[n.Settings.Wave], i)
	}
	var nums []int
	for w := range byWave {
		nums = append(nums, w)
	}
	sort.Ints(nums)
	p.info.Waves = []Wave{}
	for _, w := range nums {
		p.waves = append(p.waves, byWave[w])
		wv := Wave{Wave: w}
		for _, i := range byWave[w] {
			wv.Nodes = append(wv.Nodes, nodes[i].Name)
		}
		p.info.Waves = append(p.info.Waves, wv)
	}

	var fleet Settings
	if len(nodes) > 0 {
		fleet = nodes[0].Settings // fleet-wide settings: every node carries the same
	}
	bound := len(nodes)
	if o.Parallel > 0 {
		bound = min(bound, o.Parallel)
	}
	mu := o.MaxUnavailable
	if mu <= 0 && fleet.MaxUnavailable != "" {
		var err error
		if mu, err = ParseMaxUnavailable(fleet.MaxUnavailable, len(nodes)); err != nil {
			p.refuse = "maxUnavailable in the flake: " + err.Error()
		}
	}
	if mu > 0 {
		bound = min(bound, mu)
	}
	p.info.MaxUnavailable = max(bound, 1)
	p.info.MaxFailures = o.MaxFailures
	if p.info.MaxFailures <= 0 {
		p.info.MaxFailures = max(fleet.MaxFailures, 0)
	}
	return p
}

// scheduler starts hosts in order, at most bound at once, and stops
// starting them once the rollout is stopped (a canary failed, the failure
// budget ran out, ctx ended). Hosts already running always finish.
type scheduler struct {
	sem         chan struct{}
	maxFailures int
	start       func(ctx context.Context, i int) HostReport
	notStarted  func(i int, why string)

	mu       sync.Mutex
	failed   []string // nodes that ended not OK, in the order they ended
	stopped  string
	onFailed func(h HostReport) string // a stop reason, or ""
}

// stop records why no more hosts start; the first reason stays.
func (s *scheduler) stop(why string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped == "" {
		s.stopped = why
	}
}

func (s *scheduler) why(ctx context.Context) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped == "" && ctx.Err() != nil {
		s.stopped = "interrupted: " + ctx.Err().Error()
	}
	return s.stopped
}

// done counts h and stops the rollout when that spends the budget. It runs
// before the host's slot is freed, so the next host waiting for the slot
// already sees the stop.
func (s *scheduler) done(h HostReport) {
	if h.Result == OK {
		return
	}
	s.mu.Lock()
	s.failed = append(s.failed, h.Node)
	n := len(s.failed)
	list := strings.Join(s.failed, ", ")
	s.mu.Unlock()
	if s.onFailed != nil {
		if why := s.onFailed(h); why != "" {
			s.stop(why)
			return
		}
	}
	if s.maxFailures > 0 && n >= s.maxFailures {
		s.stop(fmt.Sprintf("max failures reached: %d host(s) not ok (%s), limit %d", n, list, s.maxFailures))
	}
}

// phase runs the hosts idx, in order, and returns when all have ended.
func (s *scheduler) phase(ctx context.Context, idx []int) {
	var wg sync.WaitGroup
	for _, i := range idx {
		if why := s.why(ctx); why != "" {
			s.notStarted(i, why)
			continue
		}
		select {
		case s.sem <- struct{}{}:
		case <-ctx.Done():
			s.notStarted(i, s.why(ctx))
			continue
		}
		// The slot may have come free because the host before ended the
		// rollout.
		if why := s.why(ctx); why != "" {
			<-s.sem
			s.notStarted(i, why)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.done(s.start(ctx, i))
			<-s.sem
		}()
	}
	wg.Wait()
}

// firstLine is the head of a multi-line error, for a one-line reason.
func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// canaryFailed is the stop reason of a canary that did not end OK: its
// result only, the why is on the canary's own line of the report.
func canaryFailed(h HostReport) string {
	return fmt.Sprintf("canary %s failed: %s", h.Node, h.Result)
}
