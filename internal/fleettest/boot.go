package fleettest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const bootScript = `set -e
H="$1"
. "$H/services.env"
mount --bind "$H/nix" /nix
mount --bind "$H/run" /run
mkdir -p /boot
mount --bind "$H/boot" /boot
# The host's own boot id (a new one each simulated boot), where the kernel
# keeps it: only this namespace sees the bind.
mount --bind "$H/boot_id" /proc/sys/kernel/random/boot_id
mkdir -p /run/sshd /run/fleettest /run/systemd/system
chmod 0755 /run/sshd
# Inside this host, systemctl and systemd-run are the simulated systemd's
# (whatever finds them: PATH, sudo's secure_path, /run/current-system).
mount --bind "$FAKEBIN/systemctl" /usr/bin/systemctl
mount --bind "$FAKEBIN/systemd-run" /usr/bin/systemd-run
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
# As on a systemd-booted host (the fake systemctl and systemd-run answer).
mkdir -p /run/sshd /run/fleettest /run/systemd/system
if ! up /run/fleettest/nix-daemon.pid; then
  rm -f /nix/var/nix/daemon-socket/socket
  NIX_CONF_DIR="$H/etc-nix" HOME="$H/home" XDG_CACHE_HOME="$H/home/.cache" setsid nix-daemon </dev/null >>"$H/nix-daemon.log" 2>&1 &
  echo $! > /run/fleettest/nix-daemon.pid
  i=0
  while [ ! -S /nix/var/nix/daemon-socket/socket ]; do
    sleep 0.01; i=$((i+1)); [ $i -lt 3000 ] || { echo "nix-daemon did not start" >&2; exit 1; }
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
     -E PATH="$FAKEBIN":/usr/sbin:/usr/bin:/sbin:/bin $AGENT_EXEC </dev/null >>"$H/agent.log" 2>&1 &
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
// It boots what systemd-boot would: the entry loader.conf names as its
// default (a rollback of the boot default changes only that), the
// profile's system when there is no loader yet or its default names no
// entry.
const bootSystemScript = `set -e
# What tmpfiles makes early in a boot, before stage 2 starts sshd.
mkdir -p /run/sshd /run/fleettest /run/systemd/system
chmod 0755 /run/sshd
sys=
conf=/boot/loader/loader.conf
if [ -f "$conf" ]; then
  entry=$(/bin/sed -n 's/^default[[:space:]]\{1,\}\([^[:space:]]*\).*/\1/p' "$conf" | /usr/bin/head -n1)
  if [ -n "$entry" ] && [ -f "/boot/loader/entries/$entry" ]; then
    sys=$(/bin/sed -n 's|^options.*init=\([^[:space:]]*\)/init.*|\1|p' "/boot/loader/entries/$entry" | /usr/bin/head -n1)
  fi
fi
if [ -z "$sys" ] || [ ! -d "$sys" ]; then sys=$(readlink -f /nix/var/nix/profiles/system); fi
ln -sfn "$sys" /run/booted-system
ln -sfn "$sys" /run/current-system
"$sys/activate"
`

func (f *Fleet) start(h *Host) error {
	h.sim = &bootState{stop: make(chan struct{}), done: make(chan struct{})}
	go f.watchReboots(h) // requests come only once the host runs
	if err := f.writeHostFiles(h); err != nil {
		return err
	}
	if err := h.newBootID(); err != nil {
		return err
	}
	if err := h.boot(); err != nil {
		return err
	}
	if err := f.installInitial(h); err != nil {
		return err
	}
	f.recordBoot(h, Boot{Host: h.Name})
	return nil
}

// writeHostFiles lays out h's directory: its sshd (accepting only the
// fleet's deploy key, forced through the gate), nix.conf trusting only the
// cache, and the scripts that boot it.
func (f *Fleet) writeHostFiles(h *Host) error {
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
	return nil
}

// boot starts h's keeper (the process whose mount namespace is the host)
// and waits for its services to say ready.
func (h *Host) boot() error {
	var err error
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
	// Held open until the host is stopped, so that its namespace (and the
	// namespace's inode number, which tells its processes) outlives the
	// host's last process: see processes.
	if h.nsFile, err = os.Open(fmt.Sprintf("/proc/%d/ns/mnt", h.keeper.Process.Pid)); err != nil {
		return err
	}
	if h.mntNS, err = os.Readlink(fmt.Sprintf("/proc/self/fd/%d", h.nsFile.Fd())); err != nil {
		return err
	}
	return h.waitDaemon()
}

// waitDaemon returns once h's nix-daemon accepts connections. services.sh
// waits for the daemon's socket file, which bind() makes before listen():
// a client that came in between would be refused.
func (h *Host) waitDaemon() error {
	sock := filepath.Join(h.Dir, "nix", "var", "nix", "daemon-socket", "socket")
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("unix", sock, 5*time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: nix-daemon does not accept connections: %v", h.Name, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// installInitial gives h the fleet's initial system the way a real host
// gets one: from the cache, through its daemon, signature checked.
func (f *Fleet) installInitial(h *Host) error {
	if f.Initial == "" {
		return nil
	}
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
	return nil
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
	if err := h.waitDaemon(); err != nil {
		t.Fatal(err)
	}
}

// Reboot simulates a reboot of h: every process in it is killed, /run is
// emptied, the boot loader's default becomes the booted and running
// system and its activation runs, the host gets a new boot id, then the
// daemon and sshd start. A host made NoReturn stays down.
func (f *Fleet) Reboot(t testing.TB, h *Host) {
	t.Helper()
	if err := f.reboot(h, time.Time{}); err != nil {
		t.Fatal(err)
	}
}

// killAll SIGKILLs every process of h (all of them, or all but the keeper)
// and returns once none is left, or after a minute; it returns how many it
// killed.
func (f *Fleet) killAll(h *Host, keeperToo bool) int {
	keeper := 0
	if !keeperToo && h.keeper != nil && h.keeper.Process != nil {
		keeper = h.keeper.Process.Pid
	}
	deadline := time.Now().Add(time.Minute)
	n := 0
	for {
		found := 0
		for _, pid := range f.processes(h) {
			if pid != keeper {
				syscall.Kill(pid, syscall.SIGKILL)
				found++
			}
		}
		n += found
		if found == 0 || time.Now().After(deadline) {
			return n
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// processes lists h's live processes (a zombie no longer counts):
//   - those in h's mount namespace. While h.nsFile holds it, the namespace
//     keeps its inode number, which the kernel otherwise hands to the next
//     namespace made anywhere (another test's host, or a private namespace
//     of a root Nix command) as soon as this one is gone;
//   - those in a namespace copied from h's: root Nix commands (nix-daemon's
//     workers, nix-env, nix show-config, nix-store as root) unshare a
//     private mount namespace after they start, which still has h's /nix;
//   - those whose environment names h's nix.conf folder (h's daemon and
//     agent, whatever namespace they are in).
func (f *Fleet) processes(h *Host) []int {
	root := "/" + filepath.Base(f.Dir) + "/" + h.Name + "/nix"
	conf := []byte("NIX_CONF_DIR=" + filepath.Join(h.Dir, "etc-nix") + "\x00")
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid)); err != nil {
			continue // gone, or a zombie
		} else if h.mntNS != "" && ns == h.mntNS {
			pids = append(pids, pid)
		} else if mountsNix(pid, root) {
			pids = append(pids, pid)
		} else if env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid)); err == nil && bytes.Contains(env, conf) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// mountsNix reports whether pid's /nix is a bind mount of a folder whose
// path ends in root.
func mountsNix(pid int, root string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		// ID parent major:minor root mountpoint ...
		f := strings.Fields(line)
		if len(f) > 4 && f[4] == "/nix" && strings.HasSuffix(strings.TrimSuffix(f[3], "//deleted"), root) {
			return true
		}
	}
	return false
}

func (f *Fleet) stop(h *Host) {
	if h.keeper == nil || h.keeper.Process == nil {
		return
	}
	h.sim.halt()
	f.killAll(h, true)
	if h.stdin != nil {
		h.stdin.Close()
	}
	h.keeper.Process.Kill()
	h.keeper.Wait()
	if h.nsFile != nil {
		h.nsFile.Close()
	}
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

// agentEnv reads the agent's socket and service settings from the NixOS
// module's own plain-Nix function (nixos/lib agentUnits), so the simulated
// hosts run the agent exactly as the module configures it, and renders
// them for services.sh.
func agentEnv(deployer, fakeBin string) (string, error) {
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
	return fmt.Sprintf("CONTRACT=2\nAGENT_SOCKET=%s\nAGENT_OWNER=%s\nAGENT_GROUP=%s\nAGENT_MODE=%s\nAGENT_ACCEPT=%s\nAGENT_EXEC='%s'\nFAKEBIN=%s\n",
		u.Socket.ListenStream, u.Socket.SocketUser, u.Socket.SocketGroup, u.Socket.SocketMode, accept, u.Service.ExecStart, fakeBin), nil
}
