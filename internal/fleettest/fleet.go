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
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
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
		f.servicesEnv = "CONTRACT=1\n"
	} else if f.servicesEnv, err = agentEnv(f.Deployer); err != nil {
		t.Fatal(err)
	}
	hostsStart := time.Now()
	f.Hosts = make([]*Host, n)
	errs := make([]error, n)
	addrs := pickAddrs(n)
	for i := range n {
		f.Hosts[i] = &Host{Name: fmt.Sprintf("host%d", i+1), Dir: filepath.Join(dir, fmt.Sprintf("host%d", i+1)), Addr: addrs[i].ip, Port: addrs[i].port}
	}
	for i := range n {
		h := f.Hosts[i]
		t.Cleanup(func() { f.stop(h) })
		wg.Add(1)
		go func() {
			defer wg.Done()
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
	t.Logf("fleettest: %d hosts booted in %s (setup before: %s; cache %T)", n, time.Since(hostsStart).Round(time.Millisecond),
		hostsStart.Sub(setupStart).Round(time.Millisecond), f.Cache)
	return f
}

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

// sweepStale removes what fleets of killed test processes left behind: their
// folders (named after the test's pid) and sudoers rules (naming the folder).
func sweepStale() {
	dirs, _ := filepath.Glob("/tmp/concordia-fleet-*-*")
	for _, d := range dirs {
		parts := strings.SplitN(strings.TrimPrefix(filepath.Base(d), "concordia-fleet-"), "-", 2)
		if pid, err := strconv.Atoi(parts[0]); err == nil && pid != os.Getpid() && syscall.Kill(pid, 0) != nil {
			removeAll(d)
		}
	}
	rules, _ := filepath.Glob("/etc/sudoers.d/concordia-fleettest-*")
	for _, r := range rules {
		b, err := os.ReadFile(r)
		if err != nil {
			continue
		}
		fields := strings.Fields(strings.SplitN(string(b), "\n", 2)[0])
		if len(fields) >= 4 && fields[1] == "concordia" && fields[2] == "fleettest" {
			if _, err := os.Stat(fields[3]); errors.Is(err, fs.ErrNotExist) {
				os.Remove(r)
			}
		}
	}
}

// pickAddrs finds free loopback addresses in 127.100-199.x.y (port 22 when
// free there, else an ephemeral port), away from anything else.
func pickAddrs(n int) []addr {
	var out []addr
	for len(out) < n {
		a := func(max int64) int64 { v, _ := rand.Int(rand.Reader, big.NewInt(max)); return v.Int64() }
		ip := fmt.Sprintf("127.%d.%d.%d", 100+a(100), a(256), 2+a(250))
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

// ensureUser creates the shared deploy user and the other local user once
// (under a machine-wide lock, since several test binaries may start fleets
// at the same time).
func ensureUser() error {
	lf, err := os.OpenFile("/tmp/concordia-fleettest.lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer lf.Close()
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX); err != nil {
		return err
	}
	// As on NixOS: /var/empty is root's, empty and not writable.
	if err := os.MkdirAll(deployHome, 0o555); err != nil {
		return err
	}
	for _, u := range []string{deployUser, OtherUser} {
		if exec.Command("id", "-u", u).Run() != nil {
			if out, err := exec.Command("useradd", "-r", "-U", "-M", "-d", deployHome, "-s", "/bin/sh", u).CombinedOutput(); err != nil {
				return fmt.Errorf("useradd %s: %v %s", u, err, out)
			}
		}
		// useradd -r leaves the account locked ("!"), which sshd refuses
		// even for key logins; '*' means "no password" without "locked".
		// The shell must be a real one: sshd runs the forced command with it.
		if out, err := exec.Command("usermod", "-p", "*", "-s", "/bin/sh", "-d", deployHome, u).CombinedOutput(); err != nil {
			return fmt.Errorf("usermod %s: %v %s", u, err, out)
		}
	}
	return nil
}

// installSudoers allows deploy exactly the host verbs of this fleet's binary,
// as contract 1 deployers needed (their module's rules, "VERB *").
func (f *Fleet) installSudoers(t testing.TB) error {
	d := f.Deployer
	rule := fmt.Sprintf("# concordia fleettest %s (removed when the test ends)\nDefaults:%s !requiretty\n%s ALL=(root) NOPASSWD: %s activate *, %s confirm *, %s wait *, %s status *, %s rollback *\n",
		f.Dir, deployUser, deployUser, d, d, d, d, d)
	tmp := filepath.Join(f.Dir, "sudoers")
	if err := os.WriteFile(tmp, []byte(rule), 0o440); err != nil {
		return err
	}
	if out, err := exec.Command("visudo", "-cf", tmp).CombinedOutput(); err != nil {
		return fmt.Errorf("visudo: %v %s", err, out)
	}
	// sudo ignores files in sudoers.d whose name has a dot.
	f.sudoers = "/etc/sudoers.d/concordia-fleettest-" + f.salt
	b, _ := os.ReadFile(tmp)
	if err := os.WriteFile(f.sudoers, b, 0o440); err != nil {
		return err
	}
	t.Cleanup(func() { os.Remove(f.sudoers) })
	return nil
}

func (f *Fleet) writeSSHConfig() error {
	var cfg, kh strings.Builder
	for _, h := range f.Hosts {
		fmt.Fprintf(&cfg, "Host %s\n  HostName %s\n  Port %d\n  User %s\n  IdentityFile %s\n  IdentitiesOnly yes\n"+
			"  UserKnownHostsFile %s\n  GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n  HostKeyAlias %s\n"+
			"  BatchMode yes\n  LogLevel ERROR\n  ConnectTimeout 10\n\n",
			h.Name, h.Addr, h.Port, deployUser, f.Key, filepath.Join(f.Dir, "known_hosts"), h.Name)
		pub, err := os.ReadFile(filepath.Join(h.Dir, "ssh_host_ed25519_key.pub"))
		if err != nil {
			return err
		}
		fields := strings.Fields(string(pub))
		fmt.Fprintf(&kh, "%s %s %s\n", h.Name, fields[0], fields[1])
	}
	if err := os.WriteFile(filepath.Join(f.Dir, "known_hosts"), []byte(kh.String()), 0o644); err != nil {
		return err
	}
	f.SSHConfig = filepath.Join(f.Dir, "ssh_config")
	return os.WriteFile(f.SSHConfig, []byte(cfg.String()), 0o644)
}

// Host returns the host named name (host1...).
func (f *Fleet) Host(name string) *Host {
	for _, h := range f.Hosts {
		if h.Name == name {
			return h
		}
	}
	return nil
}

const bootScript = `set -e
H="$1"
mount --bind "$H/nix" /nix
mount --bind "$H/run" /run
mkdir -p /boot
mount --bind "$H/boot" /boot
mkdir -p /run/sshd /run/fleettest
chmod 0755 /run/sshd
ln -sfn "$H/sshd_config" /run/fleettest/sshd_config
NIX_CONF_DIR="$H/etc-nix" nix-store --init
sh "$H/services.sh" "$H"
echo ready
read _ || true
# stdin closed: the test process is gone; stop what runs in this namespace.
kill -9 $(cat /run/fleettest/nix-daemon.pid /run/sshd.pid /run/fleettest/agent.pid 2>/dev/null) 2>/dev/null || true
`

// servicesScript (re)starts the host's nix-daemon, sshd and (contract 2)
// the agent's socket if not running. The socket is what the NixOS module's
// deployer-agent.socket makes: root's, group deploy, mode 0660, Accept=yes,
// so each connection gets its own agent process with no PATH but the
// unit's and nothing of the caller's environment.
const servicesScript = `H="$1"
. "$H/services.env"
up() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
mkdir -p /run/sshd /run/fleettest
if ! up /run/fleettest/nix-daemon.pid; then
  rm -f /nix/var/nix/daemon-socket/socket
  NIX_CONF_DIR="$H/etc-nix" HOME="$H/home" XDG_CACHE_HOME="$H/home/.cache" setsid nix-daemon </dev/null >>"$H/nix-daemon.log" 2>&1 &
  echo $! > /run/fleettest/nix-daemon.pid
  i=0
  while [ ! -S /nix/var/nix/daemon-socket/socket ]; do
    sleep 0.01; i=$((i+1)); [ $i -lt 1000 ] || { echo "nix-daemon did not start" >&2; exit 1; }
  done
fi
if ! up /run/sshd.pid; then
  rm -f /run/sshd.pid
  /usr/sbin/sshd -f /run/fleettest/sshd_config -E "$H/sshd.log"
  # sshd daemonizes before it listens; its pid file comes after listen().
  i=0
  while [ ! -s /run/sshd.pid ]; do
    sleep 0.01; i=$((i+1)); [ $i -lt 1000 ] || { echo "sshd did not start" >&2; exit 1; }
  done
fi
if [ "$CONTRACT" = 2 ] && ! up /run/fleettest/agent.pid; then
  rm -f "$AGENT_SOCKET"
  (umask 0177
   # shellcheck disable=SC2086 # AGENT_EXEC is the unit's ExecStart, split into words as systemd does
   setsid systemd-socket-activate $AGENT_ACCEPT -l "$AGENT_SOCKET" -E NIX_CONF_DIR="$H/etc-nix" \
     -E PATH=/usr/sbin:/usr/bin:/sbin:/bin $AGENT_EXEC </dev/null >>"$H/agent.log" 2>&1 &
   echo $! > /run/fleettest/agent.pid)
  i=0
  while [ ! -S "$AGENT_SOCKET" ]; do
    sleep 0.01; i=$((i+1)); [ $i -lt 1000 ] || { echo "agent socket did not appear" >&2; exit 1; }
  done
  chown "$AGENT_OWNER:$AGENT_GROUP" "$AGENT_SOCKET"
  chmod "$AGENT_MODE" "$AGENT_SOCKET"
fi
`

// bootSystemScript: what a boot does to the system links, then stage 2.
const bootSystemScript = `set -e
sys=$(readlink -f /nix/var/nix/profiles/system)
ln -sfn "$sys" /run/booted-system
ln -sfn "$sys" /run/current-system
"$sys/activate"
`

func (f *Fleet) start(h *Host) error {
	for _, d := range []string{"nix", "run", "boot", "etc-nix", "home"} {
		if err := os.MkdirAll(filepath.Join(h.Dir, d), 0o755); err != nil {
			return err
		}
	}
	os.Chmod(h.Dir, 0o755)
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(h.Dir, "ssh_host_ed25519_key")).CombinedOutput(); err != nil {
		return fmt.Errorf("%s: ssh-keygen: %v %s", h.Name, err, out)
	}
	pub, err := os.ReadFile(f.Key + ".pub")
	if err != nil {
		return err
	}
	files := map[string]string{
		"authorized_keys": fmt.Sprintf("restrict,command=\"%s gate\" %s", f.Deployer, pub),
		"sshd_config": fmt.Sprintf("ListenAddress %s:%d\nHostKey %s/ssh_host_ed25519_key\nAuthorizedKeysFile %s/authorized_keys\n"+
			"PidFile /run/sshd.pid\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nStrictModes no\n"+
			"PermitRootLogin no\nAllowUsers %s\nMaxStartups 200:30:400\nMaxSessions 100\nLogLevel VERBOSE\n",
			h.Addr, h.Port, h.Dir, h.Dir, deployUser),
		"etc-nix/nix.conf": fmt.Sprintf("substituters = %s\ntrusted-public-keys = %s\nrequire-sigs = true\nsandbox = false\n"+
			"build-users-group =\nnarinfo-cache-negative-ttl = 0\nnarinfo-cache-positive-ttl = 0\nconnect-timeout = 5\n"+
			"experimental-features = nix-command\ntrusted-users = root\nallowed-users = *\n",
			f.Cache.URL(), f.Cache.PublicKey()),
		"boot.sh":      bootScript,
		"services.sh":  servicesScript,
		"services.env": f.servicesEnv,
		"bootsys.sh":   bootSystemScript,
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(h.Dir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	h.keeper = exec.Command("unshare", "-m", "--propagation", "private", "/bin/sh", filepath.Join(h.Dir, "boot.sh"), h.Dir)
	h.keeper.Env = append(os.Environ(), "PATH=/usr/sbin:/usr/bin:/sbin:/bin")
	stdout, err := h.keeper.StdoutPipe()
	if err != nil {
		return err
	}
	if h.stdin, err = h.keeper.StdinPipe(); err != nil {
		return err
	}
	bootLog, err := os.Create(filepath.Join(h.Dir, "boot.log"))
	if err != nil {
		return err
	}
	h.keeper.Stderr = bootLog
	if err := h.keeper.Start(); err != nil {
		return fmt.Errorf("%s: start: %v", h.Name, err)
	}
	ready := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		ready <- line
		io.Copy(io.Discard, stdout)
	}()
	select {
	case line := <-ready:
		if strings.TrimSpace(line) != "ready" {
			b, _ := os.ReadFile(filepath.Join(h.Dir, "boot.log"))
			return fmt.Errorf("%s did not boot: %s", h.Name, b)
		}
	case <-time.After(60 * time.Second):
		return fmt.Errorf("%s: boot timed out", h.Name)
	}
	if h.mntNS, err = os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", h.keeper.Process.Pid)); err != nil {
		return err
	}
	if f.Initial != "" {
		// The initial system arrives like any other: from the cache,
		// through the host's daemon, signature checked.
		if out, err := f.Exec(h, "env", "NIX_REMOTE=daemon", "nix-store", "--realise", f.Initial); err != nil {
			return fmt.Errorf("%s: fetch initial system: %v %s", h.Name, err, out)
		}
		if out, err := f.Exec(h, "nix-env", "-p", "/nix/var/nix/profiles/system", "--set", f.Initial); err != nil {
			return fmt.Errorf("%s: set profile: %v %s", h.Name, err, out)
		}
		if out, err := f.Exec(h, f.Initial+"/bin/switch-to-configuration", "boot"); err != nil {
			return fmt.Errorf("%s: install boot entry: %v %s", h.Name, err, out)
		}
		if out, err := f.Exec(h, "/bin/sh", filepath.Join(h.Dir, "bootsys.sh")); err != nil {
			return fmt.Errorf("%s: boot system: %v %s", h.Name, err, out)
		}
	}
	return nil
}

// Namespace names h's mount namespace (as in /proc/PID/ns/mnt).
func (h *Host) Namespace() string { return h.mntNS }

// Exec runs argv inside h's mount namespace (as root, outside any SSH
// session) and returns its combined output.
func (f *Fleet) Exec(h *Host, argv ...string) (string, error) {
	cmd := exec.Command("nsenter", append([]string{"-t", strconv.Itoa(h.keeper.Process.Pid), "-m", "--"}, argv...)...)
	cmd.Env = append(os.Environ(), f.nixEnv...)
	cmd.Env = append(cmd.Env, "NIX_CONF_DIR="+filepath.Join(h.Dir, "etc-nix"), "PATH=/usr/sbin:/usr/bin:/sbin:/bin")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// ExecAs runs argv inside h's mount namespace as the unprivileged local
// user (e.g. OtherUser), with a clean environment; Nix commands go
// through the host's daemon, as any user's do.
func (f *Fleet) ExecAs(h *Host, user string, argv ...string) (string, error) {
	args := append([]string{"-t", strconv.Itoa(h.keeper.Process.Pid), "-m", "--", "runuser", "-u", user, "--",
		"env", "-i", "PATH=/usr/bin:/bin", "HOME=/tmp", "NIX_REMOTE=daemon"}, argv...)
	out, err := exec.Command("nsenter", args...).CombinedOutput()
	return string(out), err
}

// MustExec is Exec that fails the test on error.
func (f *Fleet) MustExec(t testing.TB, h *Host, argv ...string) string {
	t.Helper()
	out, err := f.Exec(h, argv...)
	if err != nil {
		t.Fatalf("%s: %q: %v\n%s", h.Name, argv, err, out)
	}
	return out
}

// Readlink reads a link inside h (e.g. /run/current-system).
func (f *Fleet) Readlink(t testing.TB, h *Host, link string) string {
	t.Helper()
	out, err := f.Exec(h, "readlink", link)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(out)
}

// ProfileGeneration returns the generation number and store path of h's
// system profile (0, "" if none).
func (f *Fleet) ProfileGeneration(t testing.TB, h *Host) (int, string) {
	t.Helper()
	l := f.Readlink(t, h, "/nix/var/nix/profiles/system")
	if l == "" {
		return 0, ""
	}
	n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(l, "system-"), "-link"))
	return n, f.Readlink(t, h, "/nix/var/nix/profiles/"+l)
}

// Generations lists h's system profile generation numbers.
func (f *Fleet) Generations(t testing.TB, h *Host) []int {
	t.Helper()
	ents, _ := os.ReadDir(filepath.Join(h.Dir, "nix", "var", "nix", "profiles"))
	var gens []int
	for _, e := range ents {
		if s, ok := strings.CutPrefix(e.Name(), "system-"); ok {
			if n, err := strconv.Atoi(strings.TrimSuffix(s, "-link")); err == nil {
				gens = append(gens, n)
			}
		}
	}
	return gens
}

// BootDefault returns the generation of h's default boot entry (0 if none)
// and whether its entry file exists.
func (f *Fleet) BootDefault(t testing.TB, h *Host) (int, bool) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(h.Dir, "boot", "loader", "loader.conf"))
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if s, ok := strings.CutPrefix(line, "default nixos-generation-"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(s, ".conf"))
			_, err := os.Stat(filepath.Join(h.Dir, "boot", "loader", "entries", fmt.Sprintf("nixos-generation-%d.conf", n)))
			return n, err == nil
		}
	}
	return 0, false
}

// ActivationLog returns h's /run/activation.log lines ("<action> <system> <time>").
func (f *Fleet) ActivationLog(t testing.TB, h *Host) []string {
	t.Helper()
	b, _ := os.ReadFile(filepath.Join(h.Dir, "run", "activation.log"))
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if l != "" {
			lines = append(lines, l)
		}
	}
	return lines
}

// SSHUp reports whether h's sshd is running.
func (f *Fleet) SSHUp(h *Host) bool {
	_, err := f.Exec(h, "/bin/sh", "-c", `[ -f /run/sshd.pid ] && kill -0 "$(cat /run/sshd.pid)"`)
	return err == nil
}

// StopSSH stops h's sshd (existing sessions stay, as with KillMode=process).
func (f *Fleet) StopSSH(t testing.TB, h *Host) {
	t.Helper()
	// Returns once sshd is gone: a listener that is still closing would let
	// the next login through on a loaded machine.
	f.MustExec(t, h, "/bin/sh", "-c", `p=$(cat /run/sshd.pid) && kill "$p" && rm -f /run/sshd.pid
i=0; while kill -0 "$p" 2>/dev/null; do sleep 0.01; i=$((i+1)); [ $i -lt 1000 ] || exit 1; done`)
}

// StartSSH starts h's sshd (and nix-daemon) if they are not running.
func (f *Fleet) StartSSH(t testing.TB, h *Host) {
	t.Helper()
	f.MustExec(t, h, "/bin/sh", filepath.Join(h.Dir, "services.sh"), h.Dir)
}

// Reboot simulates a reboot of h: every process in it is killed, /run is
// emptied, the boot default (the system profile) becomes the booted and
// running system and its activation runs, then the daemon and sshd start.
func (f *Fleet) Reboot(t testing.TB, h *Host) {
	t.Helper()
	f.killAll(h, false)
	run := filepath.Join(h.Dir, "run")
	ents, _ := os.ReadDir(run)
	for _, e := range ents {
		if e.Name() != "fleettest" {
			os.RemoveAll(filepath.Join(run, e.Name()))
		}
	}
	os.Remove(filepath.Join(run, "fleettest", "nix-daemon.pid"))
	os.Remove(filepath.Join(run, "fleettest", "agent.pid"))
	f.MustExec(t, h, "/bin/sh", filepath.Join(h.Dir, "bootsys.sh"))
	f.StartSSH(t, h)
}

// killAll SIGKILLs every process in h's mount namespace (all of them, or all
// but the keeper), and returns how many it found.
func (f *Fleet) killAll(h *Host, keeperToo bool) int {
	n := 0
	for range 20 {
		found := 0
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil || pid == os.Getpid() {
				continue
			}
			if !keeperToo && h.keeper != nil && pid == h.keeper.Process.Pid {
				continue
			}
			if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid)); err == nil && ns == h.mntNS {
				syscall.Kill(pid, syscall.SIGKILL)
				found++
			} else if env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid)); err == nil &&
				bytes.Contains(env, []byte("NIX_CONF_DIR="+filepath.Join(h.Dir, "etc-nix")+"\x00")) {
				// nix-daemon's workers unshare a mount namespace of their
				// own, so they escape the namespace match; the daemon's
				// environment still names this host's folder.
				syscall.Kill(pid, syscall.SIGKILL)
				found++
			}
		}
		n += found
		if found == 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	return n
}

func (f *Fleet) stop(h *Host) {
	if h.keeper == nil || h.keeper.Process == nil {
		return
	}
	if h.mntNS != "" {
		f.killAll(h, true)
	}
	if h.stdin != nil {
		h.stdin.Close()
	}
	h.keeper.Process.Kill()
	h.keeper.Wait()
}

// removeAll removes a tree that contains read-only store directories.
func removeAll(dir string) {
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			os.Chmod(p, 0o755)
		}
		return nil
	})
	os.RemoveAll(dir)
}

// SSH returns the command `ssh -F <fleet config> <host> <words...>` (a fresh
// login, no connection sharing), for tests that drive the host verbs.
func (f *Fleet) SSH(ctx context.Context, h *Host, words ...string) *exec.Cmd {
	args := append([]string{"-F", f.SSHConfig, "-o", "ControlMaster=no", "-o", "ControlPath=none", h.Name}, words...)
	return exec.CommandContext(ctx, "ssh", args...)
}

// agentEnv reads the agent's socket and service settings from the NixOS
// module's own plain-Nix function (nixos/lib agentUnits), so the simulated
// hosts run the agent exactly as the module configures it, and renders
// them for services.sh.
func agentEnv(deployer string) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	expr := fmt.Sprintf("(import %s/nixos/lib).agentUnits { user = %s; deployer = %s; }", root, nixString(deployUser), nixString(deployer))
	out, err := exec.Command("nix-instantiate", "--eval", "--strict", "--json", "-E", expr).Output()
	if err != nil {
		return "", fmt.Errorf("evaluate agentUnits: %v", err)
	}
	var u struct {
		Socket struct {
			ListenStream, SocketUser, SocketGroup, SocketMode string
			Accept                                            bool
		} `json:"socket"`
		Service struct{ ExecStart string } `json:"service"`
	}
	if err := json.Unmarshal(out, &u); err != nil {
		return "", fmt.Errorf("agentUnits: %v", err)
	}
	if u.Socket.ListenStream != AgentSocket {
		return "", fmt.Errorf("agentUnits listens on %s, fleettest expects %s", u.Socket.ListenStream, AgentSocket)
	}
	accept := ""
	if u.Socket.Accept {
		accept = "--accept"
	}
	return fmt.Sprintf("CONTRACT=2\nAGENT_SOCKET=%s\nAGENT_OWNER=%s\nAGENT_GROUP=%s\nAGENT_MODE=%s\nAGENT_ACCEPT=%s\nAGENT_EXEC='%s'\n",
		u.Socket.ListenStream, u.Socket.SocketUser, u.Socket.SocketGroup, u.Socket.SocketMode, accept, u.Service.ExecStart), nil
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
