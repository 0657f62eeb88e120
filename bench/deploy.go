package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// The deployer at fleet size. The deploy package's scale test starts the
// simulated fleet (a harness that needs testing.TB, hence go test) and, in
// rounds, has the real deployer binary, a process of its own, push to 1,
// 10 and N hosts with --parallel N: systems whose switch-to-configuration
// sleeps, fetched onto the hosts beforehand, so that the pushes wait
// rather than compute and what grows with N is the deployer's work and
// the hosts' share of this machine's cores. It prints one "scale:" line
// per push, parsed here. Needs root, like the fleet.

// deployScale is the fleet of a run: hosts, rounds, each activation's sleep.
func (b *bench) deployScale() (hosts, runs int, sleep time.Duration) {
	if b.o.quick {
		return 5, 1, 2 * time.Second
	}
	return 100, min(b.o.runs, 3), 20 * time.Second
}

func deploySystem(n int) string {
	if n == 1 {
		return "deployer push, 1 host"
	}
	return fmt.Sprintf("deployer push, %d hosts --parallel %d", n, n)
}

func (b *bench) benchDeploy(ctx context.Context) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("the simulated fleet needs root")
	}
	n, runs, sleep := b.deployScale()
	cmd := exec.CommandContext(ctx, "go", "test", "-count=1", "-run", "^TestE2EScale$", "-v", "-timeout", "60m", "./internal/deploy")
	// The caller's environment, Go's caches included (a fresh HOME would
	// mean a fresh module and build cache: minutes of compiling). The
	// fleet gives its own nix commands their own HOME.
	cmd.Env = append(os.Environ(), "CONCORDIA_E2E_SCALE="+strconv.Itoa(n), "CONCORDIA_E2E_SCALE_RUNS="+strconv.Itoa(runs),
		"CONCORDIA_E2E_SCALE_SLEEP="+sleep.String())
	// The test's output also goes to a file as it comes: a full run takes
	// a while, and its figures are worth reading before it ends.
	logPath := filepath.Join(b.work, "deploy-scale.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logf.Close()
	var buf bytes.Buffer
	cmd.Stdout = io.MultiWriter(&buf, logf)
	cmd.Stderr = cmd.Stdout
	b.log.Info("deploy scale test", "hosts", n, "rounds", runs, "sleep", sleep, "log", logPath)
	err = cmd.Run()
	out := buf.Bytes()
	if err != nil {
		return fmt.Errorf("deploy scale test: %w: %s", err, lastLines(string(out), 10))
	}
	pushes, err := parseScale(string(out))
	if err != nil {
		return err
	}
	// The test pushes to 1, 10 and n hosts in turn in each round: the
	// i-th push of each size is of round i, so the ratios are paired.
	b.rep.pair("deploy")
	sizes := map[int]bool{}
	for _, p := range pushes {
		sizes[p.hosts] = true
		sys := deploySystem(p.hosts)
		h := float64(p.hosts)
		b.rep.add("deploy", sys, "seconds, deploy", p.wall)
		b.rep.add("deploy", sys, "deployer CPU seconds", p.selfCPU)
		b.rep.add("deploy", sys, "deployer CPU ms per host", 1000*p.selfCPU/h)
		b.rep.add("deploy", sys, "deployer peak RSS MiB", float64(p.peakRSS)/1024)
		b.rep.add("deploy", sys, "deployer peak RSS MiB per host", float64(p.peakRSS)/1024/h)
		b.rep.add("deploy", sys, "ssh children CPU ms per host", 1000*p.childCPU/h)
		b.rep.add("deploy", sys, "ssh masters CPU ms per host", 1000*p.masterCPU/h)
		b.rep.add("deploy", sys, "push side CPU ms per host (deployer, ssh, masters)", 1000*(p.selfCPU+p.childCPU+p.masterCPU)/h)
		b.rep.add("deploy", sys, "hosts' daemons CPU ms per host", 1000*p.hostCPU/h)
		b.rep.add("deploy", sys, "machine CPU seconds during the push", p.machineCPU)
		b.rep.add("deploy", sys, "ssh logins per host", p.logins)
		for _, s := range p.steps {
			b.rep.add("deploy", sys, "step "+s.name+" ms (median host)", s.ms)
		}
	}
	if !sizes[1] || !sizes[n] {
		return fmt.Errorf("deploy scale test printed no push of 1 and %d hosts: %s", n, lastLines(string(out), 10))
	}
	one, all := deploySystem(1), deploySystem(n)
	b.rep.targets = append(b.rep.targets,
		comparison{"deploy", "seconds, deploy", all, one, true, 1.5, fmt.Sprintf("deploy to %d hosts vs 1 host (time ratio)", n)},
		comparison{"deploy", "deployer CPU ms per host", all, one, true, 1.0, fmt.Sprintf("deployer's own CPU per host, %d hosts vs 1 host (<= 1: no faster than linear)", n)},
		comparison{"deploy", "deployer peak RSS MiB per host", all, one, true, 1.0, fmt.Sprintf("deployer's peak RSS per host, %d hosts vs 1 host (<= 1: no faster than linear)", n)},
		comparison{"deploy", "ssh logins per host", all, "", true, 2, fmt.Sprintf("ssh logins per host, %d hosts (one multiplexed master, one confirm login)", n)},
	)
	if sizes[10] && n > 10 {
		ten := deploySystem(10)
		b.rep.targets = append(b.rep.targets,
			comparison{"deploy", "seconds, deploy", ten, one, true, 0, "deploy to 10 hosts vs 1 host (time ratio)"},
			comparison{"deploy", "deployer CPU ms per host", ten, one, true, 1.0, "deployer's own CPU per host, 10 hosts vs 1 host"},
			comparison{"deploy", "deployer peak RSS MiB per host", ten, one, true, 1.0, "deployer's peak RSS per host, 10 hosts vs 1 host"},
		)
	}
	b.rep.loads = append(b.rep.loads, fmt.Sprintf("deploy: %d simulated hosts on this machine, %d round(s) of pushes to 1, 10 and %d hosts interleaved; each push a fresh one-path system whose switch-to-configuration sleeps %s, substituted onto the hosts before the push (the fetch verb then finds it valid); --parallel = the hosts, pins on, the confirm over a fresh login", n, runs, n, sleep))
	b.rep.note("deploy: the deployer is the real binary, a process of its own. Its CPU is its own (utime+stime of its /proc stat, read once it has exited, before it is reaped; clock ticks of 10 ms), without the ssh processes it ran, whose CPU (wait4's total less its own) is the ssh children row; the ssh masters (forked off by ControlPersist, so no one's children) are read from /proc every 100 ms. Its peak RSS is its VmHWM, read every 10 ms while it runs. Logins are the \"Accepted publickey\" lines the hosts' sshd logged during the push. The hosts' daemons row is the CPU of the hosts' sshd, nix-daemon and agent socket with the processes they reaped (sessions, gate, host verbs, daemon workers), a lower bound of the hosts' side: the detached activation is not among them. The machine row is the whole machine's busy CPU meanwhile (other work on a shared machine included).")
	return nil
}

// scalePush is one "scale:" line of the test.
type scalePush struct {
	hosts                                                           int
	wall, selfCPU, childCPU, masterCPU, hostCPU, machineCPU, logins float64
	peakRSS                                                         int64
	steps                                                           []step
}

type step struct {
	name string
	ms   float64
}

// parseScale reads the test's "scale: key=value ..." lines.
func parseScale(out string) ([]scalePush, error) {
	var pushes []scalePush
	for _, line := range strings.Split(out, "\n") {
		_, rest, ok := strings.Cut(line, "scale: hosts=")
		if !ok {
			continue
		}
		kv := map[string]string{}
		for _, f := range strings.Fields("hosts=" + rest) {
			if k, v, ok := strings.Cut(f, "="); ok {
				kv[k] = v
			}
		}
		num := func(k string) float64 { v, _ := strconv.ParseFloat(kv[k], 64); return v }
		p := scalePush{wall: num("wall_s"), selfCPU: num("self_cpu_s"), childCPU: num("child_cpu_s"), masterCPU: num("master_cpu_s"), hostCPU: num("host_cpu_s"),
			machineCPU: num("machine_cpu_s"), logins: num("logins_per_host"), peakRSS: int64(num("peak_rss_kib"))}
		p.hosts, _ = strconv.Atoi(kv["hosts"])
		if p.hosts <= 0 || p.wall <= 0 {
			return nil, fmt.Errorf("deploy scale test: unreadable line %q", line)
		}
		for _, s := range strings.Split(kv["steps"], ",") {
			if name, ms, ok := strings.Cut(s, ":"); ok {
				v, _ := strconv.ParseFloat(ms, 64)
				p.steps = append(p.steps, step{name, v})
			}
		}
		pushes = append(pushes, p)
	}
	if len(pushes) == 0 {
		return nil, fmt.Errorf("deploy scale test printed no figures")
	}
	sort.SliceStable(pushes, func(i, j int) bool { return pushes[i].hosts < pushes[j].hosts })
	return pushes, nil
}
