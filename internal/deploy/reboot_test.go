package deploy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/deploy"
	"github.com/bos55/concordia/internal/hostverb"
	"github.com/bos55/concordia/internal/remote"
)

const sys0 = "/nix/store/2c6kzph7l0dcbfmjap64f0czdafn3b7x-nixos-system-web1-24.11"

// bootHost is a host that reboots: its status answers the old boot id for
// a while after the reboot verb (the reboot has not started), then not at
// all (down), then a new boot id with its boot default booted (or what
// bootInto says).
type bootHost struct {
	mu          sync.Mutex
	contract    int
	bootID      string
	boots       int
	booted      hostverb.System
	bootDefault hostverb.System
	gens        map[int]string
	// After a reboot verb: sameFor statuses with the old id, then downFor
	// connection failures (never: down for good), then the new boot.
	sameFor, downFor int
	never            bool
	bootInto         []hostverb.System // the next boots' systems, in order; default the boot default
	healthExit       int
	loseAnswer       bool     // the reboot verb's answer is lost (the host reboots all the same)
	phase            []string // what each status call met: same, down, up
	rebooting        bool
	left             [2]int
}

func newBootHost() *bootHost {
	return &bootHost{contract: hostverb.Contract, bootID: "boot-0", gens: map[int]string{1: sys0, 2: sys1},
		booted: hostverb.System{Path: sys0, Generation: 1}, bootDefault: hostverb.System{Path: sys1, Generation: 2},
		sameFor: 1, downFor: 2}
}

func (b *bootHost) reply(v any) remote.Result {
	raw, _ := json.Marshal(v)
	var m map[string]any
	json.Unmarshal(raw, &m)
	m["contract"] = b.contract
	line, _ := json.Marshal(m)
	code := 0
	if c, ok := m["exitCode"].(float64); ok {
		code = int(c)
	}
	return remote.Result{Code: code, Stdout: append(line, '\n')}
}

func (b *bootHost) status() *hostverb.Status {
	st := &hostverb.Status{Booted: b.booted, Current: b.booted, Profile: b.bootDefault, BootDefault: b.bootDefault,
		RebootPending: b.booted.Path != b.bootDefault.Path}
	if b.contract >= 4 {
		st.BootID = b.bootID
	}
	return st
}

func (b *bootHost) handle(ctx context.Context, c call) (remote.Result, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch c.verb() {
	case "fetch":
		return b.reply(hostverb.Reply{Fetched: &hostverb.Fetched{}}), nil
	case "activate":
		return b.reply(hostverb.Reply{Record: &hostverb.Record{State: hostverb.Confirmed, Mode: hostverb.Boot, RebootRequired: true}}), nil
	case "status":
		if b.rebooting {
			switch {
			case b.left[0] > 0:
				b.left[0]--
				b.phase = append(b.phase, "same")
			case b.never || b.left[1] > 0:
				b.left[1]--
				b.phase = append(b.phase, "down")
				return remote.Result{Code: 255}, fmt.Errorf("%w: connection refused", remote.ErrConnection)
			default:
				b.rebooting = false
				b.boots++
				b.bootID = fmt.Sprintf("boot-%d", b.boots)
				b.booted = b.bootDefault
				if len(b.bootInto) > 0 {
					b.booted, b.bootInto = b.bootInto[0], b.bootInto[1:]
				}
				b.phase = append(b.phase, "up")
			}
		}
		return b.reply(hostverb.Reply{Status: b.status()}), nil
	case "reboot":
		b.rebooting, b.left = true, [2]int{b.sameFor, b.downFor}
		if b.loseAnswer {
			return remote.Result{Code: 255}, fmt.Errorf("%w: connection reset", remote.ErrConnection)
		}
		return b.reply(hostverb.Reply{Rebooting: &hostverb.Rebooting{BootIDBefore: b.bootID, RebootAt: time.Now()}}), nil
	case "rollback":
		n := 0
		for i, a := range c.args {
			if a == "--generation" && i+1 < len(c.args) {
				n, _ = strconv.Atoi(c.args[i+1])
			}
		}
		if p, ok := b.gens[n]; ok && slicesContain(c.args, "--boot") {
			b.bootDefault = hostverb.System{Path: p, Generation: n}
			return b.reply(hostverb.Reply{}), nil
		}
		return b.reply(hostverb.Reply{ExitCode: hostverb.ExitInvalid, Error: "no such generation"}), nil
	case "health":
		if b.healthExit != 0 {
			return b.reply(hostverb.Reply{ExitCode: b.healthExit, Error: "health check failed: web (exit 3: down)",
				Health: &hostverb.Health{Checks: []hostverb.CheckResult{{Name: "web", Exit: 3}}}}), nil
		}
		return b.reply(hostverb.Reply{Health: &hostverb.Health{OK: true, Checks: []hostverb.CheckResult{{Name: "web", OK: true}}}}), nil
	}
	return remote.Result{Code: 126, Stdout: []byte(`{"contract":4,"exitCode":126,"error":"not faked"}` + "\n")}, nil
}

func slicesContain(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

func rebootOpts(fr *fakeRemote) deploy.Options {
	o := opts(fr)
	o.RebootOnly, o.RebootTimeout, o.Mode = true, 5*time.Second, ""
	return o
}

func stepNames(h deploy.HostReport) string {
	var names []string
	for _, s := range h.Steps {
		names = append(names, s.Name)
	}
	return strings.Join(names, ",")
}

// A lost connection and an answer with the same boot id both mean "not
// back yet"; a new boot id with the expected system is done.
func TestRebootWaitsForNewBootID(t *testing.T) {
	bh := newBootHost()
	fr := &fakeRemote{handle: bh.handle}
	rep := deploy.Run(context.Background(), hosts(1), rebootOpts(fr))
	h := rep.Hosts[0]
	if h.Result != deploy.OK || rep.Err() != nil {
		t.Fatalf("%s: %s", h.Result, h.Error)
	}
	if got := stepNames(h); got != "reboot-status,reboot,reboot-wait,boot-check" {
		t.Fatalf("steps %s", got)
	}
	if got := strings.Join(bh.phase, ","); got != "same,down,down,up" {
		t.Fatalf("status calls met %s", got)
	}
	if got := fr.verbs("host0"); strings.Join(got, " ") != "status reboot status status status status" {
		t.Fatalf("verbs %v", got)
	}
	if c := fr.last("host0", "reboot"); c == nil || strings.Join(c.args, " ") != "deployer reboot --id d-1" {
		t.Fatalf("reboot argv %+v", c)
	}
}

// The reboot verb's answer lost with the connection: the boot id says
// whether the host rebooted.
func TestRebootAnswerLost(t *testing.T) {
	bh := newBootHost()
	bh.loseAnswer = true
	fr := &fakeRemote{handle: bh.handle}
	rep := deploy.Run(context.Background(), hosts(1), rebootOpts(fr))
	h := rep.Hosts[0]
	if h.Result != deploy.OK || h.Steps[1].Name != deploy.StepReboot || !strings.Contains(h.Steps[1].Detail, "waiting for a new boot id") {
		t.Fatalf("%s %s %+v", h.Result, h.Error, h.Steps)
	}
}

// The host booted another system than its boot default: the boot default
// goes back to the generation booted before, one more reboot, rolled back.
func TestRebootWrongSystemRollsBack(t *testing.T) {
	bh := newBootHost()
	bh.bootInto = []hostverb.System{{Path: sys2, Generation: 0}}
	fr := &fakeRemote{handle: bh.handle}
	rep := deploy.Run(context.Background(), hosts(1), rebootOpts(fr))
	h := rep.Hosts[0]
	if h.Result != deploy.RolledBack || !strings.Contains(h.Error, "booted "+sys2+", not the expected "+sys1) || !strings.Contains(h.Error, "generation 1") {
		t.Fatalf("%s: %s", h.Result, h.Error)
	}
	if got := stepNames(h); got != "reboot-status,reboot,reboot-wait,boot-check,boot-rollback,reboot,reboot-wait,boot-check" {
		t.Fatalf("steps %s", got)
	}
	if c := fr.last("host0", "rollback"); c == nil || !strings.HasSuffix(strings.Join(c.args, " "), "--boot --generation 1") {
		t.Fatalf("rollback argv %+v", c)
	}
	if bh.booted.Path != sys0 || bh.bootDefault.Generation != 1 {
		t.Fatalf("host ends booted %+v, default %+v", bh.booted, bh.bootDefault)
	}
}

// A failing health check after the reboot rolls back the same way; a host
// that fails to come back the second time is Failed, not RolledBack.
func TestRebootUnhealthy(t *testing.T) {
	nodes := hosts(1)
	nodes[0].Settings.HealthChecks = []deploy.HealthCheck{{Command: "systemctl is-active web"}}
	bh := newBootHost()
	bh.healthExit = 1
	fr := &fakeRemote{handle: bh.handle}
	rep := deploy.Run(context.Background(), nodes, rebootOpts(fr))
	h := rep.Hosts[0]
	if h.Result != deploy.RolledBack || !strings.Contains(h.Error, "web (exit 3: down)") {
		t.Fatalf("%s: %s", h.Result, h.Error)
	}
	if c := fr.last("host0", "health"); c == nil || !slicesContain(c.args, "--booted") {
		t.Fatalf("health argv %+v", c)
	}

	bh = newBootHost()
	bh.healthExit = 1
	fr = &fakeRemote{handle: func(ctx context.Context, c call) (remote.Result, error) {
		if c.verb() == "rollback" {
			bh.mu.Lock()
			bh.never = true // the second reboot never ends
			bh.mu.Unlock()
		}
		return bh.handle(ctx, c)
	}}
	o := rebootOpts(fr)
	o.RebootTimeout = 300 * time.Millisecond
	rep = deploy.Run(context.Background(), nodes, o)
	if h := rep.Hosts[0]; h.Result != deploy.Failed || !strings.Contains(h.Error, "did not come back within 300ms") {
		t.Fatalf("%s: %s", h.Result, h.Error)
	}
}

func TestRebootNotBack(t *testing.T) {
	bh := newBootHost()
	bh.never = true
	fr := &fakeRemote{handle: bh.handle}
	o := rebootOpts(fr)
	o.RebootTimeout = 400 * time.Millisecond
	start := time.Now()
	rep := deploy.Run(context.Background(), hosts(1), o)
	h := rep.Hosts[0]
	if h.Result != deploy.Failed || !strings.Contains(h.Error, "did not come back within 400ms") || !strings.Contains(h.Error, "connection refused") {
		t.Fatalf("%s: %s", h.Result, h.Error)
	}
	if slicesContain(fr.verbs("host0"), "rollback") {
		t.Fatal("rolled back a host that is not there")
	}
	t.Logf("gave up after %s", time.Since(start).Round(time.Millisecond))
}

// A host of an older contract is not asked to reboot at all.
func TestRebootOldContract(t *testing.T) {
	bh := newBootHost()
	bh.contract = 3
	fr := &fakeRemote{handle: bh.handle}
	rep := deploy.Run(context.Background(), hosts(1), rebootOpts(fr))
	h := rep.Hosts[0]
	if h.Result != deploy.Failed || !strings.Contains(h.Error, "update the host's deployer") || !strings.Contains(h.Error, "contract 3") {
		t.Fatalf("%s: %s", h.Result, h.Error)
	}
	if got := fr.verbs("host0"); strings.Join(got, " ") != "status" {
		t.Fatalf("verbs %v", got)
	}
}

// --when-required leaves a host alone whose status says no reboot is
// pending.
func TestRebootWhenRequired(t *testing.T) {
	bh := newBootHost()
	bh.bootDefault = bh.booted
	fr := &fakeRemote{handle: bh.handle}
	o := rebootOpts(fr)
	o.WhenRequired = true
	rep := deploy.Run(context.Background(), hosts(1), o)
	if h := rep.Hosts[0]; h.Result != deploy.OK || stepNames(h) != "reboot-status" || h.Steps[0].Detail != "no reboot pending" {
		t.Fatalf("%s %s %+v", h.Result, h.Error, h.Steps)
	}
}

// push --mode boot --reboot: activate, then the reboot into the new
// system.
func TestPushBootReboot(t *testing.T) {
	bh := newBootHost()
	fr := &fakeRemote{handle: bh.handle}
	o := opts(fr)
	o.Mode, o.Reboot, o.RebootTimeout = hostverb.Boot, true, 5*time.Second
	rep := deploy.Run(context.Background(), hosts(1), o)
	h := rep.Hosts[0]
	if h.Result != deploy.OK || stepNames(h) != "closure,fetch,activate,reboot-status,reboot,reboot-wait,boot-check" {
		t.Fatalf("%s %s: %s", h.Result, h.Error, stepNames(h))
	}
	if h.RebootRequired {
		t.Fatal("still reboot required after the reboot")
	}
	// The boot default is not the deployed system: something else changed
	// it, nothing is rebooted.
	bh = newBootHost()
	bh.bootDefault = hostverb.System{Path: sys2, Generation: 3}
	fr = &fakeRemote{handle: bh.handle}
	o.Remote = fr
	rep = deploy.Run(context.Background(), hosts(1), o)
	if h := rep.Hosts[0]; h.Result != deploy.Failed || !strings.Contains(h.Error, "not rebooting") || slicesContain(fr.verbs("host0"), "reboot") {
		t.Fatalf("%s %s %v", h.Result, h.Error, fr.verbs("host0"))
	}
}
