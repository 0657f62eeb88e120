package host

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/bos55/concordia/internal/hostverb"
	"github.com/bos55/concordia/internal/nixcli"
)

// Inspect reads the host's systems, generations and lock.
func Inspect(ctx context.Context, o Options) (*hostverb.Status, error) {
	o = o.withDefaults()
	gens, err := nixcli.Generations(o.Profile)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	st := &hostverb.Status{Generations: gens, Lock: lockHolder(o)}
	genOf := func(path string) int {
		n := 0
		for _, g := range gens {
			if g.Path == path {
				n = g.Number
			}
		}
		return n
	}
	read := func(link string) hostverb.System {
		p, err := os.Readlink(link)
		if err != nil {
			return hostverb.System{}
		}
		return hostverb.System{Path: p, Generation: genOf(p)}
	}
	st.Current, st.Booted = read(o.CurrentSystem), read(o.BootedSystem)
	if g, ok, err := nixcli.CurrentGeneration(o.Profile); err != nil {
		return nil, err
	} else if ok {
		st.Profile = hostverb.System{Path: g.Path, Generation: g.Number}
	}
	st.BootDefault, st.BootDefaultSource = st.Profile, "profile"
	if sys, src := loaderDefault(o, gens); sys.Path != "" {
		st.BootDefault, st.BootDefaultSource = sys, src
	}
	st.TestActive = st.Current.Path != "" && st.BootDefault.Path != "" && st.Current.Path != st.BootDefault.Path
	// A reboot is pending when the boot default or the running system has
	// a kernel or module set other than the booted one's; an initrd alone
	// only recommends one (it changes with most nixpkgs bumps). A plain
	// switch with the same kernel does not count: rebooting would change
	// nothing that is not already running.
	for _, c := range []struct{ sys, what string }{{st.BootDefault.Path, "boot default's"}, {st.Current.Path, "running system's"}} {
		if c.sys == "" || st.Booted.Path == "" || c.sys == st.Booted.Path {
			continue
		}
		bc, err := compareBoot(st.Booted.Path, c.sys)
		switch {
		case err != nil:
			st.RebootReasons = append(st.RebootReasons, fmt.Sprintf("%s kernel cannot be compared with the booted one: %v", c.what, err))
			st.RebootPending = true
		case bc.required():
			st.RebootReasons = append(st.RebootReasons, fmt.Sprintf("%s %v differ from the booted system's", c.what, bc.names()))
			st.RebootPending = true
		case bc.initrd:
			st.RebootSuggested = true
		}
	}
	if failed, err := o.Units.Failed(ctx); err == nil {
		st.UnitsFailed = failed
	}
	if id, err := ReadBootID(o); err == nil {
		st.BootID = id
	}
	return st, nil
}

// loaderDefault reads what the boot loader starts next: systemd-boot's
// loader.conf default entry, or GRUB's first entry when it is the default;
// empty when neither can be read.
func loaderDefault(o Options, gens []hostverb.Generation) (hostverb.System, string) {
	genPath := func(n int) string {
		for _, g := range gens {
			if g.Number == n {
				return g.Path
			}
		}
		return ""
	}
	if b, err := os.ReadFile(filepath.Join(o.BootDir, "loader", "loader.conf")); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) != 2 || f[0] != "default" {
				continue
			}
			// nixos-generation-N.conf, or -N-specialisation-X.conf
			rest, ok := strings.CutPrefix(f[1], "nixos-generation-")
			if !ok {
				continue
			}
			num, _, _ := strings.Cut(strings.TrimSuffix(rest, ".conf"), "-")
			if n, err := strconv.Atoi(num); err == nil {
				if p := genPath(n); p != "" {
					return hostverb.System{Path: p, Generation: n}, "systemd-boot"
				}
			}
		}
	}
	if b, err := os.ReadFile(filepath.Join(o.BootDir, "grub", "grub.cfg")); err == nil {
		cfg := string(b)
		if strings.Contains(cfg, "set default=0") || strings.Contains(cfg, `set default="0"`) {
			// The first menuentry's init= names its toplevel.
			if i := strings.Index(cfg, "menuentry "); i >= 0 {
				if j := strings.Index(cfg[i:], " init="); j >= 0 {
					init := strings.Fields(cfg[i+j+len(" init="):])[0]
					sys := filepath.Dir(init)
					for _, g := range gens {
						if g.Path == sys {
							return hostverb.System{Path: sys, Generation: g.Number}, "grub"
						}
					}
					return hostverb.System{Path: sys}, "grub"
				}
			}
		}
	}
	return hostverb.System{}, ""
}

// Rollback is the rollback verb: the profile goes back to the generation
// before the current one, which is activated with switch. It takes the
// host lock, so it never races a deploy; o.ID names it as the holder.
func Rollback(ctx context.Context, o Options) error {
	o = o.withDefaults()
	if err := hostverb.ValidID(o.ID); err != nil {
		return err
	}
	cur, gens, err := profileGenerations(o)
	if err != nil {
		return err
	}
	var prev *hostverb.Generation
	for i := range gens {
		if gens[i].Number < cur.Number {
			prev = &gens[i]
		}
	}
	if prev == nil {
		return fmt.Errorf("%w: no generation before %d to roll back to", hostverb.ErrFailed, cur.Number)
	}
	lock, err := lockHost(o, &hostverb.Holder{ID: o.ID, Mode: hostverb.Switch, Path: prev.Path, Started: time.Now().UTC(), PID: os.Getpid()})
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := switchBusy(ctx, o); err != nil {
		return err
	}
	ctx = context.WithoutCancel(ctx)
	if err := o.Nix.SwitchGeneration(ctx, o.Profile, prev.Number); err != nil {
		return err
	}
	if err := os.MkdirAll(deploysDir(o), 0o700); err != nil {
		return err
	}
	logPath := LogPath(o, o.ID)
	failedBefore, _ := o.Units.Failed(ctx)
	code, err := o.Switcher.Switch(ctx, prev.Path, hostverb.Switch, logPath, SwitchOptions{NoCheck: true})
	if err != nil {
		return err
	}
	if code == 4 { // failed units: fine if only those failed before
		if after, err := o.Units.Failed(ctx); err == nil && len(minus(after, failedBefore)) == 0 {
			code = 0
		}
	}
	if code != 0 && code != hostverb.ExitRebootRequired {
		return fmt.Errorf("%w: generation %d's switch-to-configuration exited %d (see %s)", hostverb.ErrFailed, prev.Number, code, logPath)
	}
	o.Logger.Info("rolled back", "from", cur.Number, "to", prev.Number)
	return nil
}

// profileGenerations returns the system profile's current generation and
// all of them; a profile without one is ErrFailed (nothing to go back to).
func profileGenerations(o Options) (hostverb.Generation, []hostverb.Generation, error) {
	cur, ok, err := nixcli.CurrentGeneration(o.Profile)
	if err != nil {
		return cur, nil, err
	}
	if !ok {
		return cur, nil, fmt.Errorf("%w: profile %s has no generation", hostverb.ErrFailed, o.Profile)
	}
	gens, err := nixcli.Generations(o.Profile)
	return cur, gens, err
}
