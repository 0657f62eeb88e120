package deploy_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/closure"
	"github.com/bos55/concordia/internal/deploy"
	"github.com/bos55/concordia/internal/hostverb"
	"github.com/bos55/concordia/internal/remote"
)

// call is one command the fake remote saw.
type call struct {
	host  string
	fresh bool
	args  []string
}

func (c call) verb() string {
	// sudo -n deployer VERB ... or deployer VERB ...
	for i, a := range c.args {
		if a == "deployer" && i+1 < len(c.args) {
			return c.args[i+1]
		}
	}
	return strings.Join(c.args, " ")
}

// fakeRemote answers host verbs through handle; by default every verb
// succeeds the way the host side does.
type fakeRemote struct {
	mu     sync.Mutex
	calls  []call
	handle func(ctx context.Context, c call) (remote.Result, error)
}

func (f *fakeRemote) do(ctx context.Context, t remote.Target, fresh bool, args []string) (remote.Result, error) {
	if err := remote.CheckArgs(args); err != nil {
		return remote.Result{}, err
	}
	c := call{host: t.Host, fresh: fresh, args: args}
	f.mu.Lock()
	f.calls = append(f.calls, c)
	f.mu.Unlock()
	if f.handle != nil {
		if r, err := f.handle(ctx, c); err != nil || r.Code != 0 || r.Stdout != nil {
			return r, err
		}
	}
	return okAnswer(c), nil
}

func okAnswer(c call) remote.Result {
	switch c.verb() {
	case "activate":
		return jsonResult(0, `{"state":"awaiting-confirm","mode":"switch"}`)
	case "confirm":
		return jsonResult(0, `{"state":"confirmed"}`)
	case "wait":
		return jsonResult(0, `{"state":"confirmed"}`)
	}
	return remote.Result{}
}

func jsonResult(code int, line string) remote.Result {
	return remote.Result{Code: code, Stdout: []byte(`{"progress":"x"}` + "\n" + line + "\n")}
}

func (f *fakeRemote) Run(ctx context.Context, t remote.Target, args ...string) (remote.Result, error) {
	return f.do(ctx, t, false, args)
}

func (f *fakeRemote) Fresh(ctx context.Context, t remote.Target, args ...string) (remote.Result, error) {
	return f.do(ctx, t, true, args)
}

// last returns the last call of verb to host, or nil.
func (f *fakeRemote) last(host, verb string) *call {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := len(f.calls) - 1; i >= 0; i-- {
		if c := f.calls[i]; c.host == host && c.verb() == verb {
			return &c
		}
	}
	return nil
}

func (f *fakeRemote) verbs(host string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, c := range f.calls {
		if c.host == host {
			v := c.verb()
			if c.fresh {
				v += "(fresh)"
			}
			out = append(out, v)
		}
	}
	return out
}

// fakeChecker returns res for every path.
type fakeChecker struct{ res *closure.Result }

func (f fakeChecker) Check(ctx context.Context, root string) (*closure.Result, error) {
	r := *f.res
	r.Root = root
	return &r, nil
}

func okChecker(deploy.Node) deploy.Checker { return fakeChecker{&closure.Result{Paths: 3}} }

func hosts(n int) []deploy.Node {
	var nodes []deploy.Node
	for i := 0; i < n; i++ {
		nodes = append(nodes, deploy.Node{
			Name: fmt.Sprintf("h%02d", i), Hostname: fmt.Sprintf("host%d", i), Path: sys1,
			Settings: deploy.Settings{MagicRollback: true, AutoRollback: true, ConfirmTimeout: 2 * time.Second,
				ActivationTimeout: 10 * time.Second, DeployerPath: "deployer"},
		})
	}
	return nodes
}

func opts(r remote.Runner) deploy.Options {
	return deploy.Options{Mode: hostverb.Switch, ID: "d-1", Remote: r, Checker: okChecker,
		Grace: 2 * time.Second, Retry: 10 * time.Millisecond}
}

func TestRunOK(t *testing.T) {
	fr := &fakeRemote{}
	rep := deploy.Run(context.Background(), hosts(1), opts(fr))
	if err := rep.Err(); err != nil {
		t.Fatal(err)
	}
	want := "fetch activate confirm(fresh)"
	if got := strings.Join(fr.verbs("host0"), " "); got != want {
		t.Fatalf("verbs = %q, want %q", got, want)
	}
	fr.mu.Lock()
	act := strings.Join(fr.calls[1].args, " ")
	fr.mu.Unlock()
	wantAct := "sudo -n deployer activate --mode switch --id d-1 --confirm-timeout 2s --magic-rollback=true --auto-rollback=true " + sys1
	if act != wantAct {
		t.Fatalf("activate argv\n got %s\nwant %s", act, wantAct)
	}
	h := rep.Hosts[0]
	var steps []string
	for _, s := range h.Steps {
		steps = append(steps, s.Name)
	}
	if strings.Join(steps, ",") != "closure,fetch,activate,confirm" || h.Result != deploy.OK {
		t.Fatalf("steps %v result %s", steps, h.Result)
	}
}

func TestRunParallel(t *testing.T) {
	const n = 6
	var started atomic.Int32
	all := make(chan struct{})
	fr := &fakeRemote{handle: func(ctx context.Context, c call) (remote.Result, error) {
		if c.verb() != "activate" {
			return remote.Result{}, nil
		}
		if started.Add(1) == n {
			close(all)
		}
		select { // nobody finishes before everybody started
		case <-all:
			return remote.Result{}, nil
		case <-time.After(10 * time.Second):
			return remote.Result{Code: 1}, nil
		}
	}}
	rep := deploy.Run(context.Background(), hosts(n), opts(fr))
	if err := rep.Err(); err != nil {
		t.Fatalf("not all hosts ran at once: %v", err)
	}
}

func TestRunParallelBound(t *testing.T) {
	var cur, peak atomic.Int32
	fr := &fakeRemote{handle: func(ctx context.Context, c call) (remote.Result, error) {
		if c.verb() == "fetch" {
			n := cur.Add(1)
			for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
			}
			time.Sleep(20 * time.Millisecond)
		}
		if c.verb() == "confirm" {
			cur.Add(-1)
		}
		return remote.Result{}, nil
	}}
	o := opts(fr)
	o.Parallel = 2
	rep := deploy.Run(context.Background(), hosts(6), o)
	if err := rep.Err(); err != nil {
		t.Fatal(err)
	}
	if p := peak.Load(); p > 2 {
		t.Fatalf("peak parallel hosts = %d, want <= 2", p)
	}
}

func TestRunRefusedClosure(t *testing.T) {
	fr := &fakeRemote{}
	o := opts(fr)
	missing := "/nix/store/2c6kzph7l0dcbfmjap64f0czdafn3b7x-glibc"
	unsigned := "/nix/store/3c6kzph7l0dcbfmjap64f0czdafn3b7x-evil"
	o.Checker = func(n deploy.Node) deploy.Checker {
		if n.Name == "h01" {
			return fakeChecker{&closure.Result{Missing: []string{missing}, Unsigned: []string{unsigned}}}
		}
		return fakeChecker{&closure.Result{Paths: 3}}
	}
	rep := deploy.Run(context.Background(), hosts(2), o)
	if len(fr.verbs("host1")) != 0 {
		t.Fatalf("refused host was touched: %v", fr.verbs("host1"))
	}
	h := rep.Hosts[1]
	if h.Result != deploy.Refused || len(h.Missing) != 1 || len(h.Unsigned) != 1 || !strings.Contains(h.Error, "glibc") {
		t.Fatalf("host report %+v", h)
	}
	if rep.Hosts[0].Result != deploy.OK {
		t.Fatalf("good host: %+v", rep.Hosts[0])
	}
	err := rep.Err()
	if !errors.Is(err, deploy.ErrDeploy) || !strings.Contains(err.Error(), "h01: refused") || strings.Contains(err.Error(), "h00") {
		t.Fatalf("Err = %v", err)
	}
}

func TestRunOutcomes(t *testing.T) {
	tests := []struct {
		name    string
		handle  func(ctx context.Context, c call) (remote.Result, error)
		mode    hostverb.Mode
		magic   bool
		want    deploy.Outcome
		verbs   string
		errText string
	}{
		{
			name: "activation failed, auto rollback",
			handle: func(ctx context.Context, c call) (remote.Result, error) {
				if c.verb() == "activate" {
					return jsonResult(1, `{"state":"failed","rolledBack":true,"reason":"switch-to-configuration exited 4"}`), nil
				}
				return remote.Result{}, nil
			},
			want: deploy.RolledBack, verbs: "fetch activate", errText: "exited 4",
		},
		{
			name: "confirm says rolled back",
			handle: func(ctx context.Context, c call) (remote.Result, error) {
				switch c.verb() {
				case "confirm":
					return jsonResult(6, `{"state":"rolled-back","reason":"confirm timeout"}`), nil
				case "wait":
					return jsonResult(0, `{"state":"rolled-back"}`), nil
				}
				return remote.Result{}, nil
			},
			want: deploy.RolledBack, verbs: "fetch activate confirm(fresh) wait",
		},
		{
			name: "ssh drop during activate, then wait",
			handle: func(ctx context.Context, c call) (remote.Result, error) {
				switch c.verb() {
				case "activate":
					return remote.Result{Code: 255}, fmt.Errorf("%w: broken pipe", remote.ErrConnection)
				case "wait":
					return jsonResult(0, `{"state":"awaiting-confirm"}`), nil
				}
				return remote.Result{}, nil
			},
			want: deploy.OK, verbs: "fetch activate wait confirm(fresh)",
		},
		{
			name: "ssh drop, host still activating, then failed",
			handle: func() func(ctx context.Context, c call) (remote.Result, error) {
				var waits atomic.Int32
				return func(ctx context.Context, c call) (remote.Result, error) {
					switch c.verb() {
					case "activate":
						return remote.Result{Code: 255}, fmt.Errorf("%w: reset", remote.ErrConnection)
					case "wait":
						if waits.Add(1) == 1 {
							return remote.Result{Code: 255}, fmt.Errorf("%w: refused", remote.ErrConnection)
						}
						if waits.Load() == 2 {
							return jsonResult(0, `{"state":"activating"}`), nil
						}
						return jsonResult(0, `{"state":"failed","reason":"boom"}`), nil
					}
					return remote.Result{}, nil
				}
			}(),
			want: deploy.Failed, verbs: "fetch activate wait wait wait", errText: "boom",
		},
		{
			name: "confirm login impossible, host rolls back",
			handle: func(ctx context.Context, c call) (remote.Result, error) {
				switch c.verb() {
				case "confirm":
					return remote.Result{Code: 255}, fmt.Errorf("%w: connection refused", remote.ErrConnection)
				case "wait":
					return jsonResult(0, `{"state":"rolled-back"}`), nil
				}
				return remote.Result{}, nil
			},
			want: deploy.RolledBack,
		},
		{
			name: "locked",
			handle: func(ctx context.Context, c call) (remote.Result, error) {
				if c.verb() == "activate" {
					return jsonResult(3, `{"state":"failed","reason":"locked by deploy d-0 (switch) since 12:00"}`), nil
				}
				return remote.Result{}, nil
			},
			want: deploy.Refused, verbs: "fetch activate", errText: "d-0",
		},
		{
			name: "kernel change",
			handle: func(ctx context.Context, c call) (remote.Result, error) {
				if c.verb() == "activate" {
					return jsonResult(5, `{"state":"failed","reason":"kernel changed"}`), nil
				}
				return remote.Result{}, nil
			},
			want: deploy.RebootRequired, verbs: "fetch activate", errText: "kernel-change=boot",
		},
		{
			name: "switch became boot: no confirm",
			handle: func(ctx context.Context, c call) (remote.Result, error) {
				if c.verb() == "activate" {
					return jsonResult(0, `{"state":"confirmed","mode":"boot","rebootRequired":true}`), nil
				}
				return remote.Result{}, nil
			},
			want: deploy.OK, verbs: "fetch activate",
		},
		{
			name: "fetch fails",
			handle: func(ctx context.Context, c call) (remote.Result, error) {
				if c.verb() == "fetch" {
					return remote.Result{Code: 1, Stderr: []byte("error: path is not valid\n")}, nil
				}
				return remote.Result{}, nil
			},
			want: deploy.Failed, verbs: "fetch", errText: "not valid",
		},
		{
			name: "boot mode: no confirm", mode: hostverb.Boot,
			handle: func(ctx context.Context, c call) (remote.Result, error) {
				if c.verb() == "activate" {
					return jsonResult(0, `{"state":"confirmed","mode":"boot"}`), nil
				}
				return remote.Result{}, nil
			},
			want: deploy.OK, verbs: "fetch activate",
		},
		{
			name:  "magic rollback off: no confirm",
			magic: false,
			handle: func(ctx context.Context, c call) (remote.Result, error) {
				if c.verb() == "activate" {
					return jsonResult(0, `{"state":"confirmed"}`), nil
				}
				return remote.Result{}, nil
			},
			want: deploy.OK, verbs: "fetch activate",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fr := &fakeRemote{handle: tt.handle}
			o := opts(fr)
			if tt.mode != "" {
				o.Mode = tt.mode
			}
			nodes := hosts(1)
			nodes[0].Settings.MagicRollback = tt.magic || tt.name != "magic rollback off: no confirm"
			rep := deploy.Run(context.Background(), nodes, o)
			h := rep.Hosts[0]
			if h.Result != tt.want {
				t.Fatalf("result %s (%s), want %s", h.Result, h.Error, tt.want)
			}
			if tt.verbs != "" {
				if got := strings.Join(fr.verbs("host0"), " "); got != tt.verbs {
					t.Fatalf("verbs %q, want %q", got, tt.verbs)
				}
			}
			if tt.errText != "" && !strings.Contains(h.Error, tt.errText) {
				t.Fatalf("error %q lacks %q", h.Error, tt.errText)
			}
			err := rep.Err()
			if (tt.want == deploy.OK) != (err == nil) {
				t.Fatalf("Err = %v for %s", err, tt.want)
			}
			if err != nil && !strings.Contains(err.Error(), "h00: "+string(tt.want)) {
				t.Fatalf("summary %q does not name the host and its result", err)
			}
		})
	}
}

// v2Answer answers like a contract 2 host: every reply carries the marker.
func v2Answer(c call, healthy bool) remote.Result {
	switch c.verb() {
	case "fetch":
		return jsonResult(0, `{"contract":2,"fetched":["x"],"seconds":0.1}`)
	case "activate":
		return jsonResult(0, `{"contract":2,"state":"awaiting-confirm","mode":"switch"}`)
	case "health":
		if healthy {
			return jsonResult(0, `{"contract":2,"ok":true,"checks":[{"name":"nginx","ok":true,"exit":0,"attempts":1}]}`)
		}
		return jsonResult(1, `{"contract":2,"exitCode":1,"error":"activation failed: health check failed: nginx (exit 3: inactive)","ok":false,"checks":[{"name":"nginx","ok":false,"exit":3,"attempts":4}]}`)
	case "confirm":
		return jsonResult(0, `{"contract":2,"state":"confirmed"}`)
	case "wait":
		return jsonResult(0, `{"contract":2,"state":"rolled-back"}`)
	}
	return jsonResult(0, `{"contract":2}`)
}

// Command health checks run on the host, from the new system's own
// closure (the health verb); the push side never sends a command line.
// URL checks are fetched by the deployer.
func TestRunHealth(t *testing.T) {
	var urlOK atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !urlOK.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	tests := []struct {
		name           string
		hostOK, urlOK  bool
		v1             bool
		want           deploy.Outcome
		verbs, errText string
	}{
		{name: "healthy", hostOK: true, urlOK: true, want: deploy.OK, verbs: "fetch activate health confirm(fresh)"},
		{name: "host check fails", hostOK: false, urlOK: true, want: deploy.RolledBack, verbs: "fetch activate health confirm wait", errText: "nginx (exit 3: inactive)"},
		{name: "url check fails", hostOK: true, urlOK: false, want: deploy.RolledBack, verbs: "fetch activate health confirm wait", errText: "503"},
		{name: "contract 1 host", v1: true, hostOK: true, urlOK: true, want: deploy.RolledBack, verbs: "fetch activate confirm wait", errText: "speaks contract 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			urlOK.Store(tt.urlOK)
			fr := &fakeRemote{handle: func(ctx context.Context, c call) (remote.Result, error) {
				if tt.v1 {
					if c.verb() == "wait" {
						return jsonResult(0, `{"state":"rolled-back"}`), nil
					}
					return remote.Result{}, nil
				}
				return v2Answer(c, tt.hostOK), nil
			}}
			nodes := hosts(1)
			nodes[0].Settings.ConfirmTimeout = 400 * time.Millisecond
			nodes[0].Settings.HealthChecks = []deploy.HealthCheck{{Command: "systemctl is-active nginx"}, {URL: srv.URL}}
			rep := deploy.Run(context.Background(), nodes, opts(fr))
			h := rep.Hosts[0]
			verbs := strings.Join(fr.verbs("host0"), " ")
			if h.Result != tt.want || verbs != tt.verbs || !strings.Contains(h.Error, tt.errText) {
				t.Fatalf("result %s (%s), verbs %q; want %s, %q, error with %q", h.Result, h.Error, verbs, tt.want, tt.verbs, tt.errText)
			}
			fr.mu.Lock()
			for _, c := range fr.calls {
				if slices.Contains(c.args, "systemctl") || slices.Contains(c.args, "is-active") {
					t.Errorf("the push side sent the check's command line: %q", c.args)
				}
			}
			fr.mu.Unlock()
			if tt.want == deploy.OK {
				return
			}
			// Not confirmed but rejected, so the host rolls back now.
			if c := fr.last("host0", "confirm"); c == nil || c.fresh || !slices.Contains(c.args, "--reject") {
				t.Fatalf("the confirm call was %+v, want a --reject", c)
			}
			if hc := fr.last("host0", "health"); !tt.v1 && (hc == nil || strings.Join(hc.args[:5], " ") != "deployer health --id d-1 --timeout") {
				t.Fatalf("health call %+v", hc)
			}
		})
	}
}

type fakePins struct {
	mu           sync.Mutex
	pins, unpins []string
}

func (p *fakePins) Pin(ctx context.Context, s string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pins = append(p.pins, s)
	return nil
}

func (p *fakePins) Unpin(ctx context.Context, s string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.unpins = append(p.unpins, s)
	return nil
}

func TestRunPins(t *testing.T) {
	old := "/nix/store/4c6kzph7l0dcbfmjap64f0czdafn3b7x-nixos-system-old"
	prev := "/nix/store/5c6kzph7l0dcbfmjap64f0czdafn3b7x-nixos-system-prev"
	fr := &fakeRemote{handle: func(ctx context.Context, c call) (remote.Result, error) {
		if c.verb() == "status" {
			st := fmt.Sprintf(`{"current":{"path":%q,"generation":3},"generations":[{"number":1,"path":%q},{"number":2,"path":%q},{"number":3,"path":%q}]}`, sys1, old, prev, sys1)
			return jsonResult(0, st), nil
		}
		return remote.Result{}, nil
	}}
	o := opts(fr)
	p := &fakePins{}
	o.Pins = p
	rep := deploy.Run(context.Background(), hosts(1), o)
	if rep.Err() != nil {
		t.Fatal(rep.Err())
	}
	if fmt.Sprint(p.pins) != fmt.Sprint([]string{sys1}) || fmt.Sprint(p.unpins) != fmt.Sprint([]string{old}) {
		t.Fatalf("pins %v unpins %v", p.pins, p.unpins)
	}
}

// One push pins each system once and unpins each old one once, however
// many hosts run them, and never unpins a system it deploys elsewhere.
func TestRunPinsOncePerPush(t *testing.T) {
	old := "/nix/store/4c6kzph7l0dcbfmjap64f0czdafn3b7x-nixos-system-old"
	prev := "/nix/store/5c6kzph7l0dcbfmjap64f0czdafn3b7x-nixos-system-prev"
	fr := &fakeRemote{handle: func(ctx context.Context, c call) (remote.Result, error) {
		if c.verb() == "status" {
			st := fmt.Sprintf(`{"current":{"path":%q,"generation":3},"generations":[{"number":1,"path":%q},{"number":2,"path":%q},{"number":3,"path":%q}]}`, sys1, old, prev, sys1)
			return jsonResult(0, st), nil
		}
		return remote.Result{}, nil
	}}
	for _, tt := range []struct {
		name         string
		oldOnOne     bool
		pins, unpins string
	}{
		{"one system on 20 hosts", false, fmt.Sprint([]string{sys1}), fmt.Sprint([]string{old})},
		{"the old system is another host's new one", true, fmt.Sprint([]string{sys1, old}), "[]"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			nodes := hosts(20)
			if tt.oldOnOne {
				nodes[19].Path = old
			}
			o := opts(fr)
			p := &fakePins{}
			o.Pins = p
			if rep := deploy.Run(context.Background(), nodes, o); rep.Err() != nil {
				t.Fatal(rep.Err())
			}
			slices.Sort(p.pins)
			if fmt.Sprint(p.pins) != tt.pins || fmt.Sprint(p.unpins) != tt.unpins {
				t.Fatalf("pins %v unpins %v, want %s %s", p.pins, p.unpins, tt.pins, tt.unpins)
			}
		})
	}
}

// A failed pin is tried again by the next host of the system.
func TestRunPinRetriedAfterFailure(t *testing.T) {
	fr := &fakeRemote{handle: func(ctx context.Context, c call) (remote.Result, error) { return remote.Result{}, nil }}
	o := opts(fr)
	o.Parallel = 1
	p := &failingPins{fail: 1}
	o.Pins = p
	if rep := deploy.Run(context.Background(), hosts(3), o); rep.Err() != nil {
		t.Fatal(rep.Err())
	}
	if p.calls != 2 {
		t.Fatalf("%d pin calls, want 2 (one failed, one retried, then shared)", p.calls)
	}
}

type failingPins struct {
	mu          sync.Mutex
	fail, calls int
}

func (p *failingPins) Pin(ctx context.Context, s string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls++
	if p.calls <= p.fail {
		return errors.New("cache down")
	}
	return nil
}

func (p *failingPins) Unpin(ctx context.Context, s string) error { return nil }

func TestReportJSON(t *testing.T) {
	fr := &fakeRemote{handle: func(ctx context.Context, c call) (remote.Result, error) {
		if c.verb() == "activate" && c.host == "host1" {
			return jsonResult(1, `{"state":"failed","rolledBack":true,"reason":"boom"}`), nil
		}
		return remote.Result{}, nil
	}}
	rep := deploy.Run(context.Background(), hosts(2), opts(fr))
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		ID     string   `json:"id"`
		Mode   string   `json:"mode"`
		MS     *float64 `json:"ms"`
		Failed []string `json:"failed"`
		Hosts  []struct {
			Node, Hostname, Path, Mode, Result, Error string
			MS                                        *float64 `json:"ms"`
			Steps                                     []struct {
				Name  string   `json:"name"`
				Start string   `json:"start"`
				MS    *float64 `json:"ms"`
				Error string   `json:"error"`
			} `json:"steps"`
		} `json:"hosts"`
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got.ID != "d-1" || got.Mode != "switch" || got.MS == nil || fmt.Sprint(got.Failed) != "[h01]" || len(got.Hosts) != 2 {
		t.Fatalf("report %s", b)
	}
	h := got.Hosts[1]
	if h.Node != "h01" || h.Result != "rolled-back" || !strings.Contains(h.Error, "boom") || h.MS == nil || len(h.Steps) != 3 {
		t.Fatalf("host %s", b)
	}
	for _, s := range h.Steps {
		if s.Name == "" || s.Start == "" || s.MS == nil {
			t.Fatalf("step %+v in %s", s, b)
		}
	}
	if h.Steps[2].Name != "activate" || h.Steps[2].Error == "" {
		t.Fatalf("activate step %+v", h.Steps[2])
	}
}

func TestProgressLines(t *testing.T) {
	var b strings.Builder
	var mu sync.Mutex
	w := writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return b.Write(p) })
	o := opts(&fakeRemote{})
	o.Progress = deploy.NewLines(w)
	deploy.Run(context.Background(), hosts(2), o)
	out := b.String()
	for _, want := range []string{"[h00] closure", "[h01] activate", "[h00] confirm", "[h01] ok in"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// The push side speaks the host's contract: a contract 2 host gets the
// sudo-less forms; an older gate refuses those (exit 126, nothing run, no
// contract marker) and gets the same request again in its own form.
func TestRunContractNegotiation(t *testing.T) {
	// oldGate refuses what a contract 1 gate refused: root verbs without
	// sudo, status without --local.
	oldGate := func(ctx context.Context, c call) (remote.Result, error) {
		v := c.verb()
		root := v == "activate" || v == "confirm" || v == "wait" || v == "rollback" || v == "status"
		sudo := c.args[0] == "sudo"
		if root && !sudo && !(v == "status" && slices.Contains(c.args, "--local")) {
			return remote.Result{Code: 126, Stderr: []byte("deployer gate: refused by deployer gate: not a deployer host verb\n")}, nil
		}
		if v == "status" {
			return jsonResult(0, fmt.Sprintf(`{"current":{"path":%q,"generation":1}}`, sys1)), nil
		}
		return remote.Result{}, nil
	}
	for _, tt := range []struct {
		name     string
		handle   func(ctx context.Context, c call) (remote.Result, error)
		activate string
		status   []string
	}{
		{"contract 2 host", func(ctx context.Context, c call) (remote.Result, error) {
			if c.verb() == "status" {
				return jsonResult(0, fmt.Sprintf(`{"contract":2,"current":{"path":%q,"generation":1}}`, sys1)), nil
			}
			return v2Answer(c, true), nil
		}, "deployer activate", []string{"deployer status"}},
		{"contract 1 host", oldGate, "sudo -n deployer activate", []string{"deployer status", "deployer status --local --json"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fr := &fakeRemote{handle: tt.handle}
			rep := deploy.Run(context.Background(), hosts(1), opts(fr))
			if err := rep.Err(); err != nil {
				t.Fatal(err)
			}
			if c := fr.last("host0", "activate"); c == nil || !strings.HasPrefix(strings.Join(c.args, " "), tt.activate+" --mode switch --id d-1") {
				t.Fatalf("activate %+v, want %q", c, tt.activate)
			}
			fr2 := &fakeRemote{handle: tt.handle}
			st := deploy.Status(context.Background(), fr2, hosts(1))
			if st[0].Status == nil || st[0].Status.Current.Path != sys1 {
				t.Fatalf("status %+v", st[0])
			}
			var got []string
			for _, c := range fr2.calls {
				got = append(got, strings.Join(c.args, " "))
			}
			if !slices.Equal(got, tt.status) {
				t.Fatalf("status calls %q, want %q", got, tt.status)
			}
		})
	}
}
