package fleettest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// buildDeployer builds ./cmd/deployer of this module into dir (0755, so the
// deploy user can run it), or copies a given binary there.
func buildDeployer(given, dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	out := filepath.Join(dir, "deployer")
	if given == "" {
		var err error
		if given, err = processBinary("./cmd/deployer"); err != nil {
			return "", err
		}
	}
	b, err := os.ReadFile(given)
	if err != nil {
		return "", err
	}
	return out, os.WriteFile(out, b, 0o755)
}

type builtBinary struct {
	once sync.Once
	path string
	err  error
}

var (
	binMu    sync.Mutex
	binBuilt = map[string]*builtBinary{}
)

// processBinary builds pkg once per test process into
// /tmp/concordia-fleettest-bin-<pid>/ (linking the cache server takes many
// seconds on a loaded machine, and every test starts a fleet). Directories
// of processes that are gone are removed on the way.
func processBinary(pkg string) (string, error) {
	binMu.Lock()
	b, ok := binBuilt[pkg]
	if !ok {
		b = &builtBinary{}
		binBuilt[pkg] = b
	}
	binMu.Unlock()
	b.once.Do(func() {
		stale, _ := filepath.Glob("/tmp/concordia-fleettest-bin-*")
		for _, d := range stale {
			pid, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(d), "concordia-fleettest-bin-"))
			if err == nil && pid != os.Getpid() && syscall.Kill(pid, 0) != nil {
				os.RemoveAll(d)
			}
		}
		dir := fmt.Sprintf("/tmp/concordia-fleettest-bin-%d", os.Getpid())
		if b.err = os.MkdirAll(dir, 0o755); b.err != nil {
			return
		}
		b.path = filepath.Join(dir, filepath.Base(pkg))
		b.err = goBuild(pkg, b.path)
	})
	return b.path, b.err
}

// goBuild builds a package of this module (relative to its root) to out.
func goBuild(pkg, out string) error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	cmd := exec.Command(goBinary(), "build", "-o", out, pkg)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %v: %s", pkg, err, b)
	}
	return nil
}

func goBinary() string {
	if _, err := exec.LookPath("go"); err == nil {
		return "go"
	}
	return "/usr/local/go/bin/go"
}

// moduleRoot is the directory of this module's go.mod.
func moduleRoot() (string, error) {
	mod, err := exec.Command(goBinary(), "env", "GOMOD").Output()
	root := strings.TrimSpace(string(mod))
	if err != nil || root == "" || root == os.DevNull {
		return "", fmt.Errorf("find module root: %v", err)
	}
	return filepath.Dir(root), nil
}

// Contract1Release is the last commit whose deployer speaks host-verb
// contract 1 (sudo rules, `status --local`): the "previous release" the
// compatibility tests build.
const Contract1Release = "ab0e057871d986890d259e37ca6cec3d810403ad"

// BuildRelease builds ./cmd/deployer as it was at commit (from this
// repository's history, with `git archive`) once per test process, and
// returns the binary. It skips the test when the history does not hold
// the commit (a shallow clone).
func BuildRelease(t testing.TB, commit string) string {
	t.Helper()
	key := "release:" + commit
	binMu.Lock()
	b, ok := binBuilt[key]
	if !ok {
		b = &builtBinary{}
		binBuilt[key] = b
	}
	binMu.Unlock()
	b.once.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			b.err = err
			return
		}
		if err := exec.Command("git", "-C", root, "cat-file", "-e", commit+"^{commit}").Run(); err != nil {
			b.err = errSkip{fmt.Sprintf("commit %s is not in this clone's history (shallow clone?)", commit[:12])}
			return
		}
		dir := fmt.Sprintf("/tmp/concordia-fleettest-bin-%d/release-%s", os.Getpid(), commit[:12])
		os.RemoveAll(dir)
		if b.err = os.MkdirAll(dir, 0o755); b.err != nil {
			return
		}
		archive := exec.Command("git", "-C", root, "archive", "--format=tar", commit)
		untar := exec.Command("tar", "-x", "-C", dir)
		pipe, err := archive.StdoutPipe()
		if err != nil {
			b.err = err
			return
		}
		untar.Stdin = pipe
		if err := untar.Start(); err != nil {
			b.err = err
			return
		}
		var stderr strings.Builder
		archive.Stderr = &stderr
		if err := archive.Run(); err != nil {
			b.err = fmt.Errorf("git archive %s: %v %s", commit, err, stderr.String())
			return
		}
		if err := untar.Wait(); err != nil {
			b.err = fmt.Errorf("untar %s: %v", commit, err)
			return
		}
		b.path = filepath.Join(filepath.Dir(dir), "deployer-"+commit[:12])
		cmd := exec.Command(goBinary(), "build", "-o", b.path, "./cmd/deployer")
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod")
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("build the deployer of %s: %v: %s", commit[:12], err, out)
		}
	})
	var skip errSkip
	if errors.As(b.err, &skip) {
		t.Skip(skip.why)
	}
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

type errSkip struct{ why string }

func (e errSkip) Error() string { return e.why }
