package deploy_test

// The deployer at fleet size: the real deployer binary, a process of its
// own, pushes to 1, 10 and N simulated hosts whose activation sleeps, so
// that what grows with N is the deployer's work (and the hosts' share of
// two cores), not the activations'. bench/deploy.go runs it and parses
// the "scale:" lines.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bos55/concordia/internal/deploy"
	"github.com/bos55/concordia/internal/fleettest"
)

// scaleOpts are TestE2EScale's knobs, from the environment (the bench
// sets them): CONCORDIA_E2E_SCALE=N hosts (required), _RUNS rounds of
// 1, 10, N hosts interleaved, _SLEEP each activation's sleep, _PREFETCH=0
// to leave the fetch to the deploy.
type scaleOpts struct {
	hosts, runs int
	sleep       time.Duration
	prefetch    bool
}

func scaleFromEnv(t *testing.T) scaleOpts {
	o := scaleOpts{runs: 1, sleep: 10 * time.Second, prefetch: true}
	o.hosts, _ = strconv.Atoi(os.Getenv("CONCORDIA_E2E_SCALE"))
	if o.hosts < 2 {
		t.Skip("set CONCORDIA_E2E_SCALE=N (e.g. 100) to compare the deployer's push to 1 host with N hosts")
	}
	if v, err := strconv.Atoi(os.Getenv("CONCORDIA_E2E_SCALE_RUNS")); err == nil && v > 0 {
		o.runs = v
	}
	if v, err := time.ParseDuration(os.Getenv("CONCORDIA_E2E_SCALE_SLEEP")); err == nil && v >= 0 {
		o.sleep = v
	}
	o.prefetch = os.Getenv("CONCORDIA_E2E_SCALE_PREFETCH") != "0"
	return o
}

// TestE2EScale measures the deployer itself: per round, pushes to 1 host,
// 10 hosts and N hosts (--parallel = the hosts), each a fresh system whose
// switch-to-configuration sleeps, fetched onto the hosts beforehand unless
// told otherwise. It logs one "scale:" line per push (wall time, the
// deployer process's own CPU and peak RSS, its ssh children's CPU, the
// machine's CPU, logins per host, per-step medians); no assertion on time.
func TestE2EScale(t *testing.T) {
	o := scaleFromEnv(t)
	e := newE2E(t, o.hosts, fleettest.Options{})
	sizes := []int{1}
	if o.hosts > 10 {
		sizes = append(sizes, 10)
	}
	sizes = append(sizes, o.hosts)
	t.Logf("scale setup: %d hosts, %d round(s) of %v, activation sleeps %s, prefetch %v", o.hosts, o.runs, sizes, o.sleep, o.prefetch)
	for r := 1; r <= o.runs; r++ {
		for _, n := range sizes {
			e.scalePush(o, r, e.f.Hosts[:n])
		}
	}
}

// scaleResult is one push's figures.
type scaleResult struct {
	wall                 time.Duration
	selfCPU, childCPU    float64 // seconds: the deployer alone, its waited-for children (ssh)
	peakRSS, totalMaxRSS int64   // KiB: the deployer's VmHWM, wait4's maxrss (it or a child)
	masterCPU            float64 // seconds: the ssh masters (ControlPersist forks them off: no one's children)
	hostCPU              float64 // seconds: the hosts' daemons and what they reaped
	machineCPU           float64 // seconds of busy CPU on the whole machine meanwhile
}

func (e *e2e) scalePush(o scaleOpts, round int, hosts []*fleettest.Host) {
	t := e.t
	t.Helper()
	n := len(hosts)
	sys := e.f.System(t, fleettest.System{Label: fmt.Sprintf("scale-%d-%d", round, n), Sleep: o.sleep})
	if o.prefetch {
		e.prefetch(sys, hosts)
	}
	dir := t.TempDir()
	nodes := map[string]any{}
	for _, h := range hosts {
		nodes[h.Name] = map[string]any{"hostname": h.Name, "profiles": map[string]any{"system": map[string]any{"path": sys}}}
	}
	doc, _ := json.Marshal(map[string]any{"sshOpts": []string{"-F", e.f.SSHConfig}, "confirmTimeout": 900,
		"activationTimeout": 900 + int(o.sleep.Seconds()), "nodes": nodes})
	nodesFile, report := filepath.Join(dir, "nodes.json"), filepath.Join(dir, "report.json")
	if err := os.WriteFile(nodesFile, doc, 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"push", "--file", nodesFile, "--parallel", strconv.Itoa(n), "--json", report,
		"--id", fmt.Sprintf("scale-%d-%d", round, n), "--cache", e.f.Cache.URL(), "--trusted-key", e.f.Cache.PublicKey()}
	if cc, ok := e.f.Cache.(*fleettest.ConcordiaCache); ok {
		args = append(args, "--netrc-file", cc.DeployNetrc())
	}
	before := make([]int, n)
	for i, h := range hosts {
		before[i] = logins(h)
	}
	host0 := hostsCPU(hosts)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	out := filepath.Join(dir, "deployer.log")
	// Short: the deployer's ssh control sockets go under it, and a unix
	// socket's path must fit in 108 bytes.
	tmp, err := os.MkdirTemp("/tmp", "cs")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	res, err := measure(ctx, out, tmp, e.f.Deployer, args...)
	if err != nil {
		b, _ := os.ReadFile(out)
		t.Fatalf("deployer push to %d hosts: %v\n%s", n, err, lastN(string(b), 40))
	}
	res.hostCPU = hostsCPU(hosts) - host0
	conns := 0
	for i, h := range hosts {
		conns += logins(h) - before[i]
	}
	var rep deploy.Report
	if b, err := os.ReadFile(report); err != nil || json.Unmarshal(b, &rep) != nil || len(rep.Hosts) != n || len(rep.Failed) != 0 {
		t.Fatalf("push to %d hosts: report %s %v", n, b, err)
	}
	for _, h := range hosts {
		if got := e.current(h); got != sys {
			t.Fatalf("%s runs %s after the push, want %s", h.Name, got, sys)
		}
	}
	t.Logf("scale: hosts=%d run=%d wall_s=%.3f self_cpu_s=%.3f child_cpu_s=%.3f master_cpu_s=%.3f peak_rss_kib=%d maxrss_kib=%d host_cpu_s=%.2f machine_cpu_s=%.2f logins_per_host=%.2f steps=%s",
		n, round, res.wall.Seconds(), res.selfCPU, res.childCPU, res.masterCPU, res.peakRSS, res.totalMaxRSS, res.hostCPU, res.machineCPU,
		float64(conns)/float64(n), stepMedians(&rep))
}

// prefetch has hosts substitute sys before the push (through their
// daemons, from the cache, signatures checked, as the fetch verb would),
// a few at a time.
func (e *e2e) prefetch(sys string, hosts []*fleettest.Host) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	errs := make([]error, len(hosts))
	for i, h := range hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			if out, err := e.f.Exec(h, "env", "NIX_REMOTE=daemon", "nix-store", "--realise", sys); err != nil {
				errs[i] = fmt.Errorf("%s: prefetch %s: %v %s", h.Name, sys, err, out)
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			e.t.Fatal(err)
		}
	}
}

// logins counts the logins h's sshd accepted: one per ssh connection
// (a multiplexed session opens none).
func logins(h *fleettest.Host) int {
	n := 0
	// sshd logs there; a system's activation that restarts it, here.
	for _, p := range []string{filepath.Join(h.Dir, "sshd.log"), filepath.Join(h.Dir, "run", "fleettest", "sshd.log")} {
		b, _ := os.ReadFile(p)
		n += bytes.Count(b, []byte("Accepted publickey"))
	}
	return n
}

// hostsCPU is the CPU time (seconds) of hosts' long-running processes,
// sshd, nix-daemon and the agent's socket, with the children they reaped:
// ssh sessions (the gate and the host verbs), the daemon's workers, the
// agents. A lower bound of the hosts' side: a detached activation is
// reaped by no one of them.
func hostsCPU(hosts []*fleettest.Host) float64 {
	var sum float64
	for _, h := range hosts {
		for _, p := range []string{"run/sshd.pid", "run/fleettest/nix-daemon.pid", "run/fleettest/agent.pid"} {
			b, err := os.ReadFile(filepath.Join(h.Dir, p))
			if err != nil {
				continue
			}
			pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil {
				continue
			}
			if self, children, err := procCPU(pid); err == nil {
				sum += self + children
			}
		}
	}
	return sum
}

// stepMedians is "name:ms,..." in step order, the median over hosts.
func stepMedians(r *deploy.Report) string {
	by := map[string][]float64{}
	var order []string
	for _, h := range r.Hosts {
		for _, s := range h.Steps {
			if by[s.Name] == nil {
				order = append(order, s.Name)
			}
			by[s.Name] = append(by[s.Name], s.Millis)
		}
	}
	var parts []string
	for _, name := range order {
		v := by[name]
		sort.Float64s(v)
		parts = append(parts, fmt.Sprintf("%s:%.0f", name, v[len(v)/2]))
	}
	return strings.Join(parts, ",")
}

// measure runs bin as a process of its own (output to the file out) and
// returns its figures. Its own CPU is read from /proc/PID/stat once it
// has exited and before it is reaped (waitid WNOWAIT): wait4's rusage
// alone would add the children it waited for (every ssh it ran). Its own
// peak RSS is its VmHWM, read every 10ms while it runs (a zombie has no
// memory to show); wait4's maxrss is the larger of it and any child's.
func measure(ctx context.Context, out, tmp, bin string, args ...string) (scaleResult, error) {
	var res scaleResult
	f, err := os.Create(out)
	if err != nil {
		return res, err
	}
	defer f.Close()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	// The ssh control directory goes under tmp, which the masters' titles
	// then name.
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	busy0 := machineBusy()
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return res, err
	}
	pid := cmd.Process.Pid
	stop := make(chan struct{})
	hwm := make(chan int64, 1)
	masters := make(chan float64, 1)
	go func() {
		var peak int64
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			if v := vmHWM(pid); v > peak {
				peak = v
			}
			select {
			case <-stop:
				hwm <- peak
				return
			case <-tick.C:
			}
		}
	}()
	go func() { masters <- watchMasters(stop, pid, tmp+"/") }()
	var info unix.Siginfo
	for {
		err = unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err != syscall.EINTR {
			break
		}
	}
	res.wall = time.Since(start)
	close(stop)
	res.peakRSS = <-hwm
	res.masterCPU = <-masters
	if err != nil {
		cmd.Wait()
		return res, fmt.Errorf("waitid: %w", err)
	}
	self, children, serr := procCPU(pid)
	werr := cmd.Wait()
	res.machineCPU = machineBusy() - busy0
	if werr != nil {
		return res, werr
	}
	if serr != nil {
		return res, serr
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	total := tv(ru.Utime) + tv(ru.Stime)
	res.selfCPU = self
	// The kernel's total, less the deployer's own: the children's, at
	// rusage's precision rather than the clock ticks' (children is the
	// same figure in ticks).
	res.childCPU = max(total-self, children)
	res.totalMaxRSS = ru.Maxrss
	return res, nil
}

func tv(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }

// clockTick is USER_HZ, the unit of /proc's CPU times (100 on Linux).
const clockTick = 100

// procCPU reads utime+stime and cutime+cstime (seconds) of pid from
// /proc/PID/stat.
func procCPU(pid int) (self, children float64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	// Fields after the command name (in parentheses, may hold spaces):
	// state is field 3, utime 14, stime 15, cutime 16, cstime 17.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: %q", pid, b)
	}
	fs := strings.Fields(string(b[i+1:]))
	if len(fs) < 15 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: %q", pid, b)
	}
	v := make([]float64, 4)
	for k := range v {
		n, err := strconv.ParseInt(fs[11+k], 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}
		v[k] = float64(n) / clockTick
	}
	return v[0] + v[1], v[2] + v[3], nil
}

// watchMasters sums, until stop, the CPU of the ssh masters: ssh
// processes whose command line holds mark (a master's title names its
// control socket) and whose parent is not the deployer (those are the
// sessions, its children).
// Masters are forked off by the first ssh of each host and live until the
// deployer closes them, reparented away from it, so no rusage counts
// them; their last reading before they go (every 100ms) is taken as
// their total.
func watchMasters(stop <-chan struct{}, deployer int, mark string) float64 {
	last := map[int]float64{}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			if _, seen := last[pid]; !seen {
				comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
				if string(bytes.TrimSpace(comm)) != "ssh" {
					continue
				}
				cl, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
				if !bytes.Contains(cl, []byte(mark)) || parent(pid) == deployer {
					continue
				}
			}
			if self, children, err := procCPU(pid); err == nil {
				last[pid] = self + children
			}
		}
		select {
		case <-stop:
			var sum float64
			for _, v := range last {
				sum += v
			}
			return sum
		case <-tick.C:
		}
	}
}

// parent is pid's parent pid (0 if unknown).
func parent(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	fs := strings.Fields(string(b[i+1:]))
	if len(fs) < 2 {
		return 0
	}
	p, _ := strconv.Atoi(fs[1])
	return p
}

// vmHWM is pid's peak RSS in KiB (0 once it is gone or a zombie).
func vmHWM(pid int) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			v, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return v
		}
	}
	return 0
}

// machineBusy is the machine's busy CPU time so far, in seconds (all
// cores: user, nice, system, irq, softirq, steal).
func machineBusy() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	fs := strings.Fields(line)
	if len(fs) < 9 || fs[0] != "cpu" {
		return 0
	}
	var busy int64
	for k, s := range fs[1:9] {
		if k == 3 || k == 4 { // idle, iowait
			continue
		}
		n, _ := strconv.ParseInt(s, 10, 64)
		busy += n
	}
	return float64(busy) / clockTick
}

func lastN(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
