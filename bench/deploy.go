package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
)

var reDeploy = regexp.MustCompile(`(\d+) hosts?: (\d+)ms`)

// benchDeploy deploys to 1 and to N simulated hosts (closure already in the
// cache) through the deploy package's scale test, which starts the
// simulated fleet (a harness that needs testing.TB, hence go test) and
// runs the real push with --parallel N. Needs root, like the fleet.
func (b *bench) benchDeploy(ctx context.Context) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("the simulated fleet needs root")
	}
	n := 20
	if b.o.quick {
		n = 2
	}
	runs := b.o.runs
	if runs > 3 {
		runs = 3 // each run boots a whole fleet
	}
	for i := 0; i < runs; i++ {
		cmd := exec.CommandContext(ctx, "go", "test", "-count=1", "-run", "^TestE2EScale$", "-v", "-timeout", "20m", "./internal/deploy")
		cmd.Env = append(b.nixEnv(), "CONCORDIA_E2E_SCALE="+strconv.Itoa(n))
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("deploy scale test: %w: %s", err, lastLines(string(out), 10))
		}
		got := map[int]float64{}
		for _, m := range reDeploy.FindAllStringSubmatch(string(out), -1) {
			h, _ := strconv.Atoi(m[1])
			ms, _ := strconv.ParseFloat(m[2], 64)
			got[h] = ms / 1000
		}
		if got[1] == 0 || got[n] == 0 {
			return fmt.Errorf("deploy scale test printed no timings: %s", lastLines(string(out), 10))
		}
		b.rep.add("deploy", "deployer push, 1 host", "seconds, deploy", got[1])
		b.rep.add("deploy", fmt.Sprintf("deployer push, %d hosts --parallel %d", n, n), "seconds, deploy", got[n])
	}
	return nil
}
