// Package fleettest is the simulated NixOS fleet: N "hosts" on this machine,
// each a mount namespace with its own /nix (real store, database, profiles),
// /run and /boot, its own nix-daemon substituting from a test cache with
// signatures required, its own sshd on its own loopback address and its own
// root agent behind a socket-activated /run/deployer-agent.sock (as the
// NixOS module's deployer-agent.socket, with systemd's own
// systemd-socket-activate doing what systemd does). A shared `deploy` user,
// home /var/empty as the module sets it, logs in with a key forced through
// `deployer gate` and has no sudo at all; a fleet of contract 1 hosts
// (Options.Contract) gets the sudo rules those deployers needed instead.
//
// It is a normal package (not _test) so every package's tests can use it;
// it needs root, unshare, nsenter, nix, sshd and sudo, and skips otherwise.
package fleettest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"
)

// Options tune a fleet.
type Options struct {
	// Initial is the system every host boots with (built and published
	// first). Default: Good.
	Initial *System
	// NoInitial starts hosts with an empty store and no system.
	NoInitial bool
	// Cache makes the cache; default DefaultCache (Concordia's cache
	// server, falling back to NewFileCache).
	Cache func(t testing.TB) Cache
	// Deployer is the deployer binary the hosts run; default: go build
	// ./cmd/deployer.
	Deployer string
	// Contract is the host-verb contract the hosts are set up for: 2 (the
	// default) the root agent; 1 the sudo rules of contract 1 deployers
	// (with a Deployer built from such a release, see BuildRelease).
	Contract int
}

// Fleet is a set of simulated hosts sharing a cache and a deployer binary.
type Fleet struct {
	Dir       string // base dir (mode 0755, readable by deploy)
	Deployer  string // absolute path of the deployer binary the hosts run
	SSHConfig string // ssh -F SSHConfig hostN logs in as deploy
	Key       string // the deploy SSH private key
	Cache     Cache
	Hosts     []*Host
	Initial   string // store path of the initial system ("" with NoInitial)

	Contract int // host-verb contract the hosts are set up for

	salt        string
	nixEnv      []string
	sudoers     string
	servicesEnv string // what services.sh starts, from the NixOS module's own settings
}

// Host is one simulated NixOS host.
type Host struct {
	Name string // host1, host2, ... (the ssh_config alias)
	Dir  string // its folder: nix/, run/, boot/, etc-nix/, sshd files
	Addr string // loopback address sshd listens on
	Port int

	keeper *exec.Cmd
	stdin  io.WriteCloser
	mntNS  string
	nsFile *os.File   // h's mount namespace, held from boot to stop
	sim    *bootState // its boots and reboot requests (reboot.go)
}

const (
	deployUser = "deploy"
	// deployHome is what the NixOS module gives the deploy user: /var/empty,
	// root's and read-only, so nothing the deploy user runs (nix-store
	// --realise included) may count on a writable home.
	deployHome = "/var/empty"
	// OtherUser is a second unprivileged local user, as any host has: what
	// it can do (nix-store --add of anything) must not help the deploy key.
	OtherUser = "fleettest-other"
	// AgentSocket is where the hosts' root agents listen.
	AgentSocket = "/run/deployer-agent.sock"
)

// Need skips the test unless the simulated fleet can run here.
func Need(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("simulated fleet skipped in -short mode")
	}
	if os.Geteuid() != 0 {
		t.Skip("simulated fleet needs root (mount namespaces, sshd, sudo)")
	}
	for _, bin := range []string{"unshare", "nsenter", "nix-store", "nix-daemon", "nix-build", "nix", "/usr/sbin/sshd", "ssh", "ssh-keygen", "sudo", "visudo", "useradd", "runuser", "systemd-socket-activate"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("simulated fleet needs %s", bin)
		}
	}
}

// New starts n hosts in parallel; everything is torn down at cleanup.
func New(t testing.TB, n int, opts Options) *Fleet {
	t.Helper()
	Need(t)
	setupStart := time.Now()
	f := &Fleet{salt: randHex(4), nixEnv: nixEnv(t), Contract: opts.Contract}
	if f.Contract == 0 {
		f.Contract = 2
	}
	sweepStale()
	dir, err := os.MkdirTemp("/tmp", fmt.Sprintf("concordia-fleet-%d-", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	f.Dir = dir
	t.Cleanup(func() { removeAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := writeFakeSystemd(f.fakeBin()); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var buildErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		f.Deployer, buildErr = buildDeployer(opts.Deployer, filepath.Join(dir, "bin"))
	}()
	if opts.Cache == nil {
		opts.Cache = DefaultCache
	}
	f.Cache = opts.Cache(t)
	if !opts.NoInitial {
		sys := Good
		if opts.Initial != nil {
			sys = *opts.Initial
		}
		f.Initial = f.System(t, sys)
	}
	if err := ensureUser(); err != nil {
		t.Fatal(err)
	}
	f.Key = filepath.Join(dir, "id_ed25519")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fleettest-deploy", "-f", f.Key).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v %s", err, out)
	}
	wg.Wait()
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	if f.Contract == 1 {
		if err := f.installSudoers(t); err != nil {
			t.Fatal(err)
		}
		f.servicesEnv = "CONTRACT=1\nFAKEBIN=" + f.fakeBin() + "\n"
	} else if f.servicesEnv, err = agentEnv(f.Deployer, f.fakeBin()); err != nil {
		t.Fatal(err)
	}
	hostsStart := time.Now()
	f.bootHosts(t, n)
	t.Logf("fleettest: %d hosts booted in %s (setup before: %s; cache %T)", n, time.Since(hostsStart).Round(time.Millisecond),
		hostsStart.Sub(setupStart).Round(time.Millisecond), f.Cache)
	return f
}

// bootParallel bounds the hosts booting at once. A boot is mostly process
// starts (ssh-keygen, nix-store --init, the daemons, the initial system's
// substitution and activation), so a few per core keep the cores busy;
// a hundred at once on two cores would only make each boot slower than its
// timeout.
func bootParallel() int { return max(8, 4*runtime.NumCPU()) }

// bootHosts starts n hosts, bootParallel at a time, each on its own
// loopback address.
func (f *Fleet) bootHosts(t testing.TB, n int) {
	t.Helper()
	var wg sync.WaitGroup
	f.Hosts = make([]*Host, n)
	errs := make([]error, n)
	addrs := pickAddrs(n)
	for i := range n {
		f.Hosts[i] = &Host{Name: fmt.Sprintf("host%d", i+1), Dir: filepath.Join(f.Dir, fmt.Sprintf("host%d", i+1)), Addr: addrs[i].ip, Port: addrs[i].port}
	}
	sem := make(chan struct{}, bootParallel())
	for i := range n {
		h := f.Hosts[i]
		t.Cleanup(func() { f.stop(h) })
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			errs[i] = f.start(h)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if err := f.writeSSHConfig(); err != nil {
		t.Fatal(err)
	}
}

// fakeBin is where the fleet's fake systemctl and systemd-run are (the
// systems link them as sw/bin/).
func (f *Fleet) fakeBin() string { return filepath.Join(f.Dir, "fakebin") }

// Publish puts paths into the hosts' cache, signed.
func (f *Fleet) Publish(t testing.TB, paths ...string) {
	t.Helper()
	if err := f.Cache.Publish(context.Background(), paths...); err != nil {
		t.Fatal(err)
	}
}

// PublishUnsigned puts paths into the cache without signatures (FileCache only).
func (f *Fleet) PublishUnsigned(t testing.TB, paths ...string) {
	t.Helper()
	up, ok := f.Cache.(UnsignedPublisher)
	if !ok {
		t.Fatalf("fleettest: %T signs everything it serves; start the fleet with Options{Cache: fleettest.WithFileCache} to publish unsigned paths", f.Cache)
	}
	if err := up.PublishUnsigned(context.Background(), paths...); err != nil {
		t.Fatal(err)
	}
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

type addr struct {
	ip   string
	port int
}

// pickAddrs finds n distinct free loopback addresses in 127.100-199.x.y
// (port 22 when free there, else an ephemeral port), away from anything
// else. Distinct: a free address is not held, so a second draw of it
// would pass the check too, and two hosts' sshd cannot both listen there.
func pickAddrs(n int) []addr {
	var out []addr
	taken := map[string]bool{}
	for len(out) < n {
		a := func(max int64) int64 { v, _ := rand.Int(rand.Reader, big.NewInt(max)); return v.Int64() }
		ip := fmt.Sprintf("127.%d.%d.%d", 100+a(100), a(256), 2+a(250))
		if taken[ip] {
			continue
		}
		taken[ip] = true
		ln, err := net.Listen("tcp", ip+":22")
		if err == nil {
			ln.Close()
			out = append(out, addr{ip, 22})
			continue
		}
		if ln, err = net.Listen("tcp", ip+":0"); err == nil {
			out = append(out, addr{ip, ln.Addr().(*net.TCPAddr).Port})
			ln.Close()
		}
	}
	return out
}
