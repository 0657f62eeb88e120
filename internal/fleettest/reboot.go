package fleettest

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
)

// A simulated host reboots the way the deployer reboots a real one: its
// fake systemctl's `reboot` leaves a request in the host's /run, which
// the fleet (the test process) picks up; RebootDelay later the fleet runs
// the reboot (Fleet.Reboot's steps). Each boot gets a new boot id, bind
// mounted over /proc/sys/kernel/random/boot_id inside the host, and is
// recorded (Boots), since /run, activation.log included, is emptied at
// every reboot.

// RebootDelay is how long a requested reboot takes to begin: a real one
// takes seconds, and the push side must not see the host go away before
// the reboot verb's answer reached it.
const RebootDelay = time.Second

// rebootRequest is the file the fake systemctl writes, inside the host.
const rebootRequest = "/run/fleettest/reboot-request"

// Boot is one boot of a simulated host.
type Boot struct {
	Host   string
	BootID string
	// System is the system it booted ("" when it did not come back).
	System string
	// Requested is when systemctl reboot asked for it (zero: the first
	// boot, or Fleet.Reboot); Down when the host's processes were killed
	// (zero: the first boot); Up when its sshd ran again (zero: it did
	// not come back, see NoReturn).
	Requested, Down, Up time.Time
}

// bootState is a host's boot history and its reboot watcher.
type bootState struct {
	mu       sync.Mutex
	boots    []Boot
	noReturn bool
	reboot   sync.Mutex // one reboot at a time
	stop     chan struct{}
	done     chan struct{}
	once     sync.Once
}

// halt stops the watcher and waits for a reboot in progress.
func (b *bootState) halt() {
	if b == nil {
		return
	}
	b.once.Do(func() { close(b.stop) })
	<-b.done
}

// NoReturn makes h's next reboot its last: its processes are killed and
// nothing starts again (no daemon, no sshd), as a host that hangs in its
// boot loader or firmware.
func (f *Fleet) NoReturn(h *Host) {
	h.sim.mu.Lock()
	h.sim.noReturn = true
	h.sim.mu.Unlock()
}

// Boots returns every host's boots, in the order they went down (first
// boots first).
func (f *Fleet) Boots() []Boot {
	var all []Boot
	for _, h := range f.Hosts {
		all = append(all, f.HostBoots(h)...)
	}
	sort.SliceStable(all, func(i, j int) bool { return all[i].Down.Before(all[j].Down) })
	return all
}

// HostBoots returns h's boots, oldest first.
func (f *Fleet) HostBoots(h *Host) []Boot {
	h.sim.mu.Lock()
	defer h.sim.mu.Unlock()
	return append([]Boot(nil), h.sim.boots...)
}

// BootID reads h's current boot id as its processes see it.
func (f *Fleet) BootID(h *Host) (string, error) {
	out, err := f.Exec(h, "cat", "/proc/sys/kernel/random/boot_id")
	return strings.TrimSpace(out), err
}

func (f *Fleet) recordBoot(h *Host, b Boot) {
	b.Host = h.Name
	b.BootID = h.bootID()
	if b.Up.IsZero() && b.Down.IsZero() || !b.Up.IsZero() {
		out, _ := f.Exec(h, "readlink", "/run/booted-system")
		b.System = strings.TrimSpace(out)
		if b.Up.IsZero() {
			b.Up = time.Now()
		}
	}
	h.sim.mu.Lock()
	h.sim.boots = append(h.sim.boots, b)
	h.sim.mu.Unlock()
}

// watchReboots serves h's reboot requests until the host stops.
func (f *Fleet) watchReboots(h *Host) {
	defer close(h.sim.done)
	req := filepath.Join(h.Dir, "run", strings.TrimPrefix(rebootRequest, "/run/"))
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-h.sim.stop:
			return
		case <-tick.C:
		}
		if _, err := os.Stat(req); err != nil {
			continue
		}
		requested := time.Now()
		os.Remove(req)
		select {
		case <-h.sim.stop:
			return
		case <-time.After(RebootDelay):
		}
		if err := f.reboot(h, requested); err != nil {
			fmt.Fprintf(os.Stderr, "fleettest: %s: reboot: %v\n", h.Name, err)
		}
	}
}

// reboot is Fleet.Reboot's work.
func (f *Fleet) reboot(h *Host, requested time.Time) error {
	h.sim.reboot.Lock()
	defer h.sim.reboot.Unlock()
	h.sim.mu.Lock()
	noReturn := h.sim.noReturn
	h.sim.mu.Unlock()
	down := time.Now()
	f.killAll(h, false)
	run := filepath.Join(h.Dir, "run")
	ents, _ := os.ReadDir(run)
	for _, e := range ents {
		if e.Name() != "fleettest" {
			os.RemoveAll(filepath.Join(run, e.Name()))
		}
	}
	for _, name := range []string{"nix-daemon.pid", "agent.pid", "reboot-request"} {
		os.Remove(filepath.Join(run, "fleettest", name))
	}
	if err := h.newBootID(); err != nil {
		return err
	}
	if noReturn {
		f.recordBoot(h, Boot{Requested: requested, Down: down})
		return nil
	}
	if out, err := f.Exec(h, "/bin/sh", filepath.Join(h.Dir, "bootsys.sh")); err != nil {
		return fmt.Errorf("%s: boot system: %v %s", h.Name, err, out)
	}
	if out, err := f.Exec(h, "/bin/sh", filepath.Join(h.Dir, "services.sh"), h.Dir); err != nil {
		return fmt.Errorf("%s: services: %v %s", h.Name, err, out)
	}
	if err := h.waitDaemon(); err != nil {
		return err
	}
	f.recordBoot(h, Boot{Requested: requested, Down: down, Up: time.Now()})
	return nil
}

// newBootID gives h a new random boot id, written in place: the bind
// mount over /proc/sys/kernel/random/boot_id holds the file's inode.
func (h *Host) newBootID() error {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40 // version 4, as the kernel's
	b[8] = b[8]&0x3f | 0x80
	id := fmt.Sprintf("%x-%x-%x-%x-%x\n", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
	return os.WriteFile(filepath.Join(h.Dir, "boot_id"), []byte(id), 0o444)
}

func (h *Host) bootID() string {
	b, _ := os.ReadFile(filepath.Join(h.Dir, "boot_id"))
	return strings.TrimSpace(string(b))
}
