package deploy_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/deploy"
	"github.com/bos55/concordia/internal/remote"
)

// failOn makes activate fail (the host rolled back) on the given hosts.
func failOn(hosts ...string) func(ctx context.Context, c call) (remote.Result, error) {
	return func(ctx context.Context, c call) (remote.Result, error) {
		for _, h := range hosts {
			if c.host == h && c.verb() == "activate" {
				return jsonResult(1, `{"state":"rolled-back","rolledBack":true,"reason":"broken.service failed"}`), nil
			}
		}
		return remote.Result{}, nil
	}
}

func results(rep *deploy.Report) string {
	var out []string
	for _, h := range rep.Hosts {
		out = append(out, h.Node+"="+string(h.Result))
	}
	return strings.Join(out, " ")
}

func TestRolloutCanaryFailureStopsTheRest(t *testing.T) {
	fr := &fakeRemote{handle: failOn("host2")}
	o := opts(fr)
	o.Canary = []string{"h02"}
	rep := deploy.Run(context.Background(), hosts(5), o)
	if got, want := results(rep), "h00=not-started h01=not-started h02=rolled-back h03=not-started h04=not-started"; got != want {
		t.Fatalf("results %s, want %s", got, want)
	}
	for _, h := range []string{"host0", "host1", "host3", "host4"} {
		if v := fr.verbs(h); len(v) != 0 {
			t.Errorf("%s was contacted after the canary failed: %v", h, v)
		}
	}
	for _, h := range rep.Hosts {
		if h.Result == deploy.NotStarted && !strings.Contains(h.Error, "canary h02 failed: rolled-back") {
			t.Errorf("%s: reason %q", h.Node, h.Error)
		}
	}
	if len(rep.Failed) != 5 {
		t.Errorf("failed = %v, want every host", rep.Failed)
	}
	err := rep.Err()
	if !errors.Is(err, deploy.ErrDeploy) || !strings.Contains(err.Error(), "h04: not-started") || !strings.Contains(err.Error(), "rollout stopped: canary h02 failed") {
		t.Errorf("Err = %v", err)
	}
	if r := rep.Rollout; r == nil || fmt.Sprint(r.Canary) != "[h02]" || !strings.HasPrefix(r.Stopped, "canary h02 failed") {
		t.Errorf("rollout %+v", rep.Rollout)
	}
}

// firstCall is the index of host's first call, lastCall of its last.
func (f *fakeRemote) span(host string) (first, last int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	first, last = -1, -1
	for i, c := range f.calls {
		if c.host == host {
			if first < 0 {
				first = i
			}
			last = i
		}
	}
	return first, last
}

func TestRolloutCanaryFromSettingsGoesFirst(t *testing.T) {
	fr := &fakeRemote{}
	nodes := hosts(4)
	nodes[2].Settings.Canary = true
	rep := deploy.Run(context.Background(), nodes, opts(fr))
	if err := rep.Err(); err != nil {
		t.Fatal(err)
	}
	_, canaryEnd := fr.span("host2")
	for _, h := range []string{"host0", "host1", "host3"} {
		if first, _ := fr.span(h); first < canaryEnd {
			t.Errorf("%s started (call %d) before the canary ended (call %d)", h, first, canaryEnd)
		}
	}
	if fmt.Sprint(rep.Rollout.Canary) != "[h02]" || len(rep.Rollout.Waves) != 1 || fmt.Sprint(rep.Rollout.Waves[0].Nodes) != "[h00 h01 h03]" {
		t.Errorf("rollout %+v", rep.Rollout)
	}

	// --canary replaces the flake's canaries.
	fr = &fakeRemote{}
	o := opts(fr)
	o.Canary = []string{"h00"}
	rep = deploy.Run(context.Background(), nodes, o)
	if fmt.Sprint(rep.Rollout.Canary) != "[h00]" || rep.Err() != nil {
		t.Errorf("rollout %+v, %v", rep.Rollout, rep.Err())
	}
}

func TestRolloutUnknownCanaryStartsNothing(t *testing.T) {
	fr := &fakeRemote{}
	o := opts(fr)
	o.Canary = []string{"h01", "nope"}
	rep := deploy.Run(context.Background(), hosts(3), o)
	if got := results(rep); got != "h00=not-started h01=not-started h02=not-started" {
		t.Fatalf("results %s", got)
	}
	if len(fr.calls) != 0 {
		t.Fatalf("hosts contacted: %v", fr.calls)
	}
	if !strings.Contains(rep.Hosts[0].Error, `canary "nope" is not among the selected nodes`) {
		t.Fatalf("reason %q", rep.Hosts[0].Error)
	}
}

func TestRolloutMaxFailures(t *testing.T) {
	fr := &fakeRemote{handle: failOn("host1", "host3")}
	o := opts(fr)
	o.Parallel = 1
	o.MaxFailures = 2
	rep := deploy.Run(context.Background(), hosts(6), o)
	want := "h00=ok h01=rolled-back h02=ok h03=rolled-back h04=not-started h05=not-started"
	if got := results(rep); got != want {
		t.Fatalf("results %s, want %s", got, want)
	}
	for _, h := range []string{"host4", "host5"} {
		if v := fr.verbs(h); len(v) != 0 {
			t.Errorf("%s contacted past the budget: %v", h, v)
		}
	}
	if e := rep.Hosts[5].Error; !strings.Contains(e, "max failures reached: 2 host(s) not ok (h01, h03), limit 2") {
		t.Errorf("reason %q", e)
	}
	if rep.Rollout.MaxFailures != 2 || rep.Rollout.MaxUnavailable != 1 {
		t.Errorf("rollout %+v", rep.Rollout)
	}
}

// TestRolloutMaxFailuresParallel: with hosts running at once, the ones
// already started when the budget ran out finish; none starts after.
func TestRolloutMaxFailuresParallel(t *testing.T) {
	var started atomic.Int32
	fr := &fakeRemote{handle: func(ctx context.Context, c call) (remote.Result, error) {
		if c.verb() == "fetch" {
			started.Add(1)
		}
		if c.verb() == "activate" {
			time.Sleep(20 * time.Millisecond)
			return jsonResult(1, `{"state":"failed","reason":"boom"}`), nil
		}
		return remote.Result{}, nil
	}}
	o := opts(fr)
	o.MaxUnavailable = 3
	o.MaxFailures = 1
	rep := deploy.Run(context.Background(), hosts(10), o)
	notStarted := 0
	for _, h := range rep.Hosts {
		if h.Result == deploy.NotStarted {
			notStarted++
		}
	}
	if s := int(started.Load()); s > 3 || s+notStarted != 10 || s < 1 {
		t.Fatalf("started %d, not started %d: %s", s, notStarted, results(rep))
	}
}

// concurrency counts hosts between their fetch and their last verb.
type concurrency struct {
	cur, peak atomic.Int32
}

func (c *concurrency) enter() {
	n := c.cur.Add(1)
	for p := c.peak.Load(); n > p && !c.peak.CompareAndSwap(p, n); p = c.peak.Load() {
	}
}

func (c *concurrency) handle(ctx context.Context, cl call) (remote.Result, error) {
	switch cl.verb() {
	case "fetch":
		c.enter()
	case "activate":
		time.Sleep(15 * time.Millisecond)
	case "confirm":
		c.cur.Add(-1)
	}
	return remote.Result{}, nil
}

func TestRolloutMaxUnavailable(t *testing.T) {
	for _, tt := range []struct {
		parallel, maxUnavailable, want int
	}{
		{0, 3, 3},
		{5, 3, 3},
		{2, 4, 2},
		{0, 0, 8},
		{0, 20, 8},
	} {
		t.Run(fmt.Sprintf("parallel %d max %d", tt.parallel, tt.maxUnavailable), func(t *testing.T) {
			var c concurrency
			fr := &fakeRemote{handle: c.handle}
			o := opts(fr)
			o.Parallel, o.MaxUnavailable = tt.parallel, tt.maxUnavailable
			nodes := hosts(8)
			nodes[5].Settings.Wave = 1
			rep := deploy.Run(context.Background(), nodes, o)
			if err := rep.Err(); err != nil {
				t.Fatal(err)
			}
			p := int(c.peak.Load())
			if p > tt.want {
				t.Fatalf("peak %d hosts mid-deploy, bound %d", p, tt.want)
			}
			t.Logf("peak %d hosts mid-deploy, bound %d", p, tt.want)
			if rep.Rollout.MaxUnavailable != tt.want {
				t.Fatalf("report bound %d, want %d", rep.Rollout.MaxUnavailable, tt.want)
			}
		})
	}
}

// TestRolloutMaxUnavailableCanaries: canaries are bounded the same way.
func TestRolloutMaxUnavailableCanaries(t *testing.T) {
	var c concurrency
	fr := &fakeRemote{handle: c.handle}
	o := opts(fr)
	o.MaxUnavailable = 2
	o.Canary = []string{"h00", "h01", "h02", "h03", "h04"}
	if err := deploy.Run(context.Background(), hosts(6), o).Err(); err != nil {
		t.Fatal(err)
	}
	if p := c.peak.Load(); p > 2 {
		t.Fatalf("peak %d canaries at once, bound 2", p)
	}
}

func TestRolloutWavesInOrder(t *testing.T) {
	fr := &fakeRemote{}
	nodes := hosts(6)
	waves := []int{2, 0, 1, 0, 2, -1}
	for i, w := range waves {
		nodes[i].Settings.Wave = w
	}
	rep := deploy.Run(context.Background(), nodes, opts(fr))
	if err := rep.Err(); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(rep.Rollout.Waves)
	if want := `[{"wave":-1,"nodes":["h05"]},{"wave":0,"nodes":["h01","h03"]},{"wave":1,"nodes":["h02"]},{"wave":2,"nodes":["h00","h04"]}]`; string(b) != want {
		t.Fatalf("waves %s\nwant  %s", b, want)
	}
	for i := range nodes {
		for j := range nodes {
			if waves[i] >= waves[j] {
				continue
			}
			_, endI := fr.span(nodes[i].Hostname)
			startJ, _ := fr.span(nodes[j].Hostname)
			if startJ < endI {
				t.Errorf("%s (wave %d) started before %s (wave %d) ended", nodes[j].Name, waves[j], nodes[i].Name, waves[i])
			}
		}
	}
}

// A budget spent inside a wave stops the later waves too.
func TestRolloutMaxFailuresAcrossWaves(t *testing.T) {
	fr := &fakeRemote{handle: failOn("host0")}
	nodes := hosts(4)
	nodes[2].Settings.Wave, nodes[3].Settings.Wave = 1, 1
	o := opts(fr)
	o.MaxFailures = 1
	rep := deploy.Run(context.Background(), nodes, o)
	if got, want := results(rep), "h00=rolled-back h01=ok h02=not-started h03=not-started"; got != want {
		t.Fatalf("results %s, want %s", got, want)
	}
}

func TestRolloutInterrupted(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fr := &fakeRemote{handle: func(c2 context.Context, c call) (remote.Result, error) {
		if c.host == "host0" && c.verb() == "activate" {
			cancel()
			<-c2.Done()
			return remote.Result{}, c2.Err()
		}
		return remote.Result{}, nil
	}}
	o := opts(fr)
	o.Parallel = 1
	rep := deploy.Run(ctx, hosts(3), o)
	if got := results(rep); got != "h00=failed h01=not-started h02=not-started" {
		t.Fatalf("results %s", got)
	}
	if e := rep.Hosts[2].Error; e != "not started: interrupted: context canceled" {
		t.Fatalf("reason %q", e)
	}
	if len(fr.verbs("host1")) != 0 {
		t.Fatal("host1 contacted after the interrupt")
	}
}

func TestRolloutFlakeLimits(t *testing.T) {
	doc := `{"maxUnavailable":"50%","maxFailures":1,"nodes":{
 "a":{"hostname":"a","canary":true,"profiles":{"system":{"path":"` + sys1 + `"}}},
 "b":{"hostname":"b","wave":1,"profiles":{"system":{"path":"` + sys1 + `"}}},
 "c":{"hostname":"c","profiles":{"system":{"path":"` + sys1 + `","wave":2}}},
 "d":{"hostname":"d","profiles":{"system":{"path":"` + sys1 + `"}}}}}`
	nodes, err := deploy.Parse([]byte(doc), nil)
	if err != nil {
		t.Fatal(err)
	}
	rep := deploy.Run(context.Background(), nodes, opts(&fakeRemote{}))
	b, _ := json.Marshal(rep.Rollout)
	if want := `{"canary":["a"],"waves":[{"wave":0,"nodes":["d"]},{"wave":1,"nodes":["b"]},{"wave":2,"nodes":["c"]}],"maxUnavailable":2,"maxFailures":1}`; string(b) != want {
		t.Fatalf("rollout %s\nwant    %s", b, want)
	}
	// Options (the command line) win over the flake.
	o := opts(&fakeRemote{})
	o.MaxUnavailable, o.MaxFailures = 1, 3
	rep = deploy.Run(context.Background(), nodes, o)
	if rep.Rollout.MaxUnavailable != 1 || rep.Rollout.MaxFailures != 3 {
		t.Fatalf("rollout %+v", rep.Rollout)
	}
}

func TestParseRolloutSettings(t *testing.T) {
	node := func(extra string) string {
		return `"n":{"hostname":"n",` + extra + `"profiles":{"system":{"path":"` + sys1 + `"}}}`
	}
	tests := []struct {
		name, doc string
		err       string
		check     func(deploy.Settings) bool
	}{
		{"inherit from top", `{"canary":true,"wave":3,"nodes":{` + node("") + `}}`, "", func(s deploy.Settings) bool { return s.Canary && s.Wave == 3 }},
		{"node wins", `{"canary":true,"wave":3,"nodes":{` + node(`"canary":false,"wave":1,`) + `}}`, "", func(s deploy.Settings) bool { return !s.Canary && s.Wave == 1 }},
		{"defaults", `{"nodes":{` + node("") + `}}`, "", func(s deploy.Settings) bool {
			return !s.Canary && s.Wave == 0 && s.MaxUnavailable == "" && s.MaxFailures == 0
		}},
		{"number", `{"maxUnavailable":2,"nodes":{` + node("") + `}}`, "", func(s deploy.Settings) bool { return s.MaxUnavailable == "2" }},
		{"percentage", `{"maxUnavailable":"25%","maxFailures":2,"nodes":{` + node("") + `}}`, "", func(s deploy.Settings) bool {
			return s.MaxUnavailable == "25%" && s.MaxFailures == 2
		}},
		{"zero", `{"maxUnavailable":0,"nodes":{` + node("") + `}}`, "at least 1", nil},
		{"fraction", `{"maxUnavailable":1.5,"nodes":{` + node("") + `}}`, "not a whole number", nil},
		{"negative", `{"maxUnavailable":-1,"nodes":{` + node("") + `}}`, "not a whole number", nil},
		{"bad type", `{"maxUnavailable":[1],"nodes":{` + node("") + `}}`, "number of hosts or a percentage", nil},
		{"over 100%", `{"maxUnavailable":"150%","nodes":{` + node("") + `}}`, "at most 100%", nil},
		{"negative failures", `{"maxFailures":-2,"nodes":{` + node("") + `}}`, "maxFailures -2", nil},
		{"failures not a number", `{"maxFailures":"2","nodes":{` + node("") + `}}`, "invalid deploy description", nil},
		{"wave not a number", `{"nodes":{` + node(`"wave":"1",`) + `}}`, "invalid deploy description", nil},
		{"fleet key on a node", `{"nodes":{` + node(`"maxUnavailable":1,`) + `}}`, "nodes.n.maxUnavailable: maxUnavailable is fleet-wide", nil},
		{"fleet key on a profile", `{"nodes":{"n":{"hostname":"n","profiles":{"system":{"path":"` + sys1 + `","maxFailures":1}}}}}`, "maxFailures is fleet-wide", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nodes, err := deploy.Parse([]byte(tt.doc), nil)
			if tt.err != "" {
				if err == nil || !errors.Is(err, deploy.ErrSchema) || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(nodes[0].Settings) {
				t.Fatalf("settings %+v", nodes[0].Settings)
			}
		})
	}
}

func TestParseMaxUnavailable(t *testing.T) {
	tests := []struct {
		in   string
		n    int
		want int
		err  string
	}{
		{"1", 10, 1, ""},
		{"3", 10, 3, ""},
		{" 4 ", 10, 4, ""},
		{"20", 3, 20, ""}, // more than the hosts: all of them (Run clamps)
		{"50%", 10, 5, ""},
		{"25%", 10, 2, ""}, // 2.5 rounds down
		{"33%", 100, 33, ""},
		{"34%", 3, 1, ""}, // 1.02
		{"66%", 3, 1, ""}, // 1.98
		{"67%", 3, 2, ""},
		{"10%", 3, 1, ""}, // 0.3: at least one
		{"1%", 1, 1, ""},
		{"100%", 7, 7, ""},
		{"100%", 0, 1, ""},
		{"0", 10, 0, "at least 1"},
		{"0%", 10, 0, "at least 1"},
		{"000", 10, 0, "at least 1"},
		{"", 10, 0, "not a whole number"},
		{"%", 10, 0, "not a whole number"},
		{"-1", 10, 0, "not a whole number"},
		{"+2", 10, 0, "not a whole number"},
		{"2.5", 10, 0, "not a whole number"},
		{"1e3", 10, 0, "not a whole number"},
		{"two", 10, 0, "not a whole number"},
		{"5%%", 10, 0, "not a whole number"},
		{"%5", 10, 0, "not a whole number"},
		{"101%", 10, 0, "at most 100%"},
		{"99999999999999999999", 10, 0, "too large"},
	}
	for _, tt := range tests {
		got, err := deploy.ParseMaxUnavailable(tt.in, tt.n)
		if tt.err != "" {
			if err == nil || !errors.Is(err, deploy.ErrRollout) || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ParseMaxUnavailable(%q, %d) = %d, %v; want error %q", tt.in, tt.n, got, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseMaxUnavailable(%q, %d) = %d, %v; want %d", tt.in, tt.n, got, err, tt.want)
		}
	}
}

func FuzzParseMaxUnavailable(f *testing.F) {
	for _, s := range []string{"1", "25%", "0", "100%", "-3", "1e9", " 7 "} {
		f.Add(s, 10)
	}
	f.Fuzz(func(t *testing.T, s string, n int) {
		n = n & 0xffff // selected hosts: a fleet, not an overflow
		got, err := deploy.ParseMaxUnavailable(s, n)
		if err != nil {
			if got != 0 || !errors.Is(err, deploy.ErrRollout) {
				t.Fatalf("%q: %d, %v", s, got, err)
			}
			return
		}
		if got < 1 || strings.HasSuffix(strings.TrimSpace(s), "%") && got > max(n, 1) {
			t.Fatalf("%q of %d hosts = %d", s, n, got)
		}
	})
}

func TestRolloutReportJSON(t *testing.T) {
	o := opts(&fakeRemote{handle: failOn("host0")})
	o.Canary = []string{"h00"}
	o.MaxUnavailable = 2
	rep := deploy.Run(context.Background(), hosts(3), o)
	b, _ := json.Marshal(rep)
	var got struct {
		Failed  []string `json:"failed"`
		Rollout struct {
			Canary         []string `json:"canary"`
			MaxUnavailable int      `json:"maxUnavailable"`
			Stopped        string   `json:"stopped"`
			Waves          []struct {
				Wave  int      `json:"wave"`
				Nodes []string `json:"nodes"`
			} `json:"waves"`
		} `json:"rollout"`
		Hosts []struct {
			Node, Result, Error string
			Steps               []json.RawMessage `json:"steps"`
		} `json:"hosts"`
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	r := got.Rollout
	if fmt.Sprint(got.Failed) != "[h00 h01 h02]" || fmt.Sprint(r.Canary) != "[h00]" || r.MaxUnavailable != 2 ||
		len(r.Waves) != 1 || fmt.Sprint(r.Waves[0].Nodes) != "[h01 h02]" || !strings.HasPrefix(r.Stopped, "canary h00 failed") {
		t.Fatalf("report %s", b)
	}
	if h := got.Hosts[1]; h.Result != "not-started" || !strings.HasPrefix(h.Error, "not started: canary h00 failed") || h.Steps == nil {
		t.Fatalf("host %+v in %s", h, b)
	}
}

func TestRolloutProgress(t *testing.T) {
	var b strings.Builder
	var mu sync.Mutex
	w := writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return b.Write(p) })
	o := opts(&fakeRemote{handle: failOn("host1")})
	o.Canary = []string{"h01"}
	o.Progress = deploy.NewLines(w)
	deploy.Run(context.Background(), hosts(3), o)
	out := b.String()
	for _, want := range []string{"== canary: h01", "[h01] ROLLED-BACK after", "[h00] NOT STARTED: canary h01 failed: rolled-back", "[h02] NOT STARTED"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	mu.Lock()
	b.Reset()
	mu.Unlock()
	o = opts(&fakeRemote{handle: failOn("host0")})
	o.Canary = []string{"h00"}
	l := deploy.NewLive(w, []string{"h00", "h01"}, time.Hour)
	o.Progress = l
	deploy.Run(context.Background(), hosts(2), o)
	l.Close()
	if out := b.String(); !strings.Contains(out, "h01  NOT STARTED: canary h00 failed") || !strings.Contains(out, "h00  ROLLED-BACK") {
		t.Errorf("live output %q", out)
	}
}

// FuzzParseRollout: whatever rollout settings a flake carries, Parse
// refuses them or Run gives every node exactly one result, in the order
// given.
func FuzzParseRollout(f *testing.F) {
	f.Add([]byte(`{"maxUnavailable":"50%","maxFailures":1,"nodes":{"a":{"hostname":"a","canary":true,"profiles":{"system":{"path":"x"}}},"b":{"hostname":"b","wave":-3,"profiles":{"system":{"path":"x"}}}}}`))
	f.Add([]byte(`{"maxUnavailable":2,"wave":1,"nodes":{"a":{"hostname":"a","profiles":{"system":{"path":"x","canary":false}}}}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		nodes, err := deploy.Parse(b, nil)
		if err != nil || len(nodes) > 20 {
			return
		}
		o := opts(&fakeRemote{})
		rep := deploy.Run(context.Background(), nodes, o)
		if len(rep.Hosts) != len(nodes) || rep.Rollout == nil || rep.Rollout.MaxUnavailable < 1 {
			t.Fatalf("report %+v for %d nodes", rep, len(nodes))
		}
		for i, h := range rep.Hosts {
			if h.Node != nodes[i].Name || h.Result == "" {
				t.Fatalf("host %d: %+v", i, h)
			}
		}
	})
}
