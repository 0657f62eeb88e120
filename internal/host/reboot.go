package host

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/bos55/concordia/internal/hostverb"
)

// DefaultBootIDFile is where the kernel names the running boot: a new
// random id every boot, which is how the push side tells that a host
// really rebooted (uptime can be faked by a fast reboot, a boot id not).
const DefaultBootIDFile = "/proc/sys/kernel/random/boot_id"

// DefaultRebootDelay is how long after its answer the reboot verb reboots
// the host: long enough for the answer to leave over ssh.
const DefaultRebootDelay = 2 * time.Second

// Rebooter starts the host's reboot after delay and returns at once; the
// reboot must not depend on the caller (the agent, its ssh session) still
// being there.
type Rebooter interface {
	Reboot(ctx context.Context, delay time.Duration) error
}

// SystemdReboot reboots the way NixOS does, `systemctl reboot`, run from a
// transient timer (`systemd-run --on-active`), so the verb's process and
// session may end first; without systemd as PID 1, from a detached child
// that sleeps first.
type SystemdReboot struct{}

// RebootUnit names the transient unit of the scheduled reboot: a second
// reboot request while one is pending is refused by systemd itself.
const RebootUnit = "concordia-reboot"

// Reboot implements Rebooter.
func (SystemdReboot) Reboot(ctx context.Context, delay time.Duration) error {
	secs := max(1, int((delay+time.Second-1)/time.Second))
	systemctl := systemdTool("systemctl")
	if systemdBooted() {
		cmd := exec.CommandContext(ctx, systemdTool("systemd-run"), "--on-active="+strconv.Itoa(secs)+"s", "--collect", "--quiet",
			"--unit="+RebootUnit, "--", systemctl, "reboot")
		cmd.Env = activationEnv()
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%w: schedule the reboot (systemd-run): %v: %s", hostverb.ErrFailed, err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	cmd := exec.Command("/bin/sh", "-c", `sleep "$1"; exec "$2" reboot`, "reboot", strconv.Itoa(secs), systemctl)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.Env = activationEnv()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%w: start the reboot: %v", hostverb.ErrFailed, err)
	}
	go cmd.Wait()
	return nil
}

// ReadBootID reads the running boot's id.
func ReadBootID(o Options) (string, error) {
	o = o.withDefaults()
	b, err := os.ReadFile(o.BootIDFile)
	if err != nil {
		return "", fmt.Errorf("%w: boot id: %v", hostverb.ErrFailed, err)
	}
	id := strings.TrimSpace(string(b))
	if id == "" || len(id) > 64 {
		return "", fmt.Errorf("%w: boot id in %s is not one", hostverb.ErrFailed, o.BootIDFile)
	}
	return id, nil
}

// Reboot is the reboot verb: it answers the boot id the host runs now and
// when it reboots, then reboots it a moment later. It refuses while a
// deploy or another switch holds the host (a reboot in the middle of an
// activation would leave half of it), taking the host lock to know.
func Reboot(ctx context.Context, o Options, id string) (*hostverb.Rebooting, error) {
	o = o.withDefaults()
	if err := hostverb.ValidID(id); err != nil {
		return nil, err
	}
	before, err := ReadBootID(o)
	if err != nil {
		return nil, err
	}
	lock, err := lockHost(o, &hostverb.Holder{ID: id, Mode: "reboot", Started: time.Now().UTC(), PID: os.Getpid()})
	if err != nil {
		return nil, err
	}
	defer lock.Close()
	if err := switchBusy(ctx, o); err != nil {
		return nil, err
	}
	at := time.Now().UTC().Add(o.RebootDelay)
	if err := o.Rebooter.Reboot(ctx, o.RebootDelay); err != nil {
		return nil, err
	}
	o.Logger.Info("reboot scheduled", "id", id, "bootId", before, "at", at.Format(time.RFC3339))
	return &hostverb.Rebooting{BootIDBefore: before, RebootAt: at}, nil
}

// RollbackBoot is rollback --boot --generation N: the system profile goes
// to generation gen, which must exist and be no newer than the profile's
// current one, and that generation's switch-to-configuration boot makes
// it the boot loader's default. Nothing is activated: the running system
// stays until the next boot. It takes the host lock, as Rollback does.
func RollbackBoot(ctx context.Context, o Options, gen int) error {
	o = o.withDefaults()
	if err := hostverb.ValidID(o.ID); err != nil {
		return err
	}
	if gen < 1 || gen > hostverb.MaxGeneration {
		return fmt.Errorf("%w: generation %d", hostverb.ErrInvalid, gen)
	}
	cur, gens, err := profileGenerations(o)
	if err != nil {
		return err
	}
	var target *hostverb.Generation
	for i := range gens {
		if gens[i].Number == gen {
			target = &gens[i]
		}
	}
	switch {
	case target == nil:
		return fmt.Errorf("%w: profile %s has no generation %d", hostverb.ErrInvalid, o.Profile, gen)
	case gen > cur.Number:
		return fmt.Errorf("%w: generation %d is newer than the profile's current %d: only an older one can become the boot default again", hostverb.ErrInvalid, gen, cur.Number)
	}
	if err := validSystem(target.Path, o.StoreDir); err != nil {
		return err
	}
	lock, err := lockHost(o, &hostverb.Holder{ID: o.ID, Mode: hostverb.Boot, Path: target.Path, Started: time.Now().UTC(), PID: os.Getpid()})
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := switchBusy(ctx, o); err != nil {
		return err
	}
	ctx = context.WithoutCancel(ctx)
	if gen != cur.Number {
		if err := o.Nix.SwitchGeneration(ctx, o.Profile, gen); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(deploysDir(o), 0o700); err != nil {
		return err
	}
	logPath := LogPath(o, o.ID)
	code, err := o.Switcher.Switch(ctx, target.Path, hostverb.Boot, logPath, SwitchOptions{})
	if err != nil {
		return err
	}
	if code != 0 {
		return fmt.Errorf("%w: generation %d's switch-to-configuration boot exited %d (see %s)", hostverb.ErrFailed, gen, code, logPath)
	}
	o.Logger.Info("boot default set back", "from", cur.Number, "to", gen, "system", target.Path)
	return nil
}

// validSystem checks that system is a directory right under the store
// with a switch-to-configuration: what RollbackBoot runs.
func validSystem(system, storeDir string) error {
	if storeDir == "" {
		storeDir = hostverb.DefaultStoreDir
	}
	if filepath.Dir(system) != filepath.Clean(storeDir) {
		return fmt.Errorf("%w: generation's system %s is not in %s", hostverb.ErrInvalid, system, storeDir)
	}
	stc := filepath.Join(system, "bin", "switch-to-configuration")
	fi, err := os.Stat(stc)
	if err != nil || fi.Mode()&0o111 == 0 {
		return fmt.Errorf("%w: %s is not a NixOS system (no %s)", hostverb.ErrInvalid, system, stc)
	}
	if real, err := filepath.EvalSymlinks(stc); err != nil || !strings.HasPrefix(real, filepath.Clean(storeDir)+"/") {
		return fmt.Errorf("%w: %s leads outside the store", hostverb.ErrInvalid, stc)
	}
	return nil
}

// errNoBootedChecks: health --booted runs only on the system the host
// booted and runs.
var errNoBootedChecks = errors.New("the running system is not the booted one")

// HealthBooted is health --booted: the checks the booted system ships, run
// as Health runs a deploy's, on a host whose running system is the booted
// one (after a reboot no deploy awaits confirmation).
func HealthBooted(ctx context.Context, o Options, timeout time.Duration) (*hostverb.Health, error) {
	o = o.withDefaults()
	booted, err := os.Readlink(o.BootedSystem)
	if err != nil {
		return nil, fmt.Errorf("%w: no booted system: %v", hostverb.ErrInvalid, err)
	}
	if cur, _ := os.Readlink(o.CurrentSystem); cur != booted {
		return nil, fmt.Errorf("%w: %w (%s, booted %s)", hostverb.ErrInvalid, errNoBootedChecks, cur, booted)
	}
	return runChecks(ctx, o, "booted", booted, timeout)
}
