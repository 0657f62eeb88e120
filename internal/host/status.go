package host

import (
	"context"
	"errors"
	"fmt"
	"os"
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
	st.TestActive = st.Current.Path != "" && st.Profile.Path != "" && st.Current.Path != st.Profile.Path
	// A reboot is pending when the boot default or the running system has a
	// kernel, initrd or module set other than the booted one's. A plain
	// switch with the same kernel does not count: rebooting would change
	// nothing that is not already running.
	if st.Profile.Path != "" && st.Booted.Path != "" && st.Profile.Path != st.Booted.Path {
		if diff, err := bootChanges(st.Booted.Path, st.Profile.Path); err != nil || len(diff) > 0 {
			st.RebootReasons = append(st.RebootReasons, fmt.Sprintf("boot default's %v differ from the booted system's", diff))
		}
	}
	if st.Current.Path != "" && st.Booted.Path != "" && st.Current.Path != st.Booted.Path {
		if diff, err := bootChanges(st.Booted.Path, st.Current.Path); err == nil && len(diff) > 0 {
			st.RebootReasons = append(st.RebootReasons, fmt.Sprintf("running system's %v differ from the booted kernel", diff))
		}
	}
	st.RebootPending = len(st.RebootReasons) > 0
	return st, nil
}

// Rollback is the rollback verb: the profile goes back to the generation
// before the current one, which is activated with switch. It takes the
// host lock, so it never races a deploy; o.ID names it as the holder.
func Rollback(ctx context.Context, o Options) error {
	o = o.withDefaults()
	if err := hostverb.ValidID(o.ID); err != nil {
		return err
	}
	cur, ok, err := nixcli.CurrentGeneration(o.Profile)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w: profile %s has no generation", hostverb.ErrFailed, o.Profile)
	}
	gens, err := nixcli.Generations(o.Profile)
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
	ctx = context.WithoutCancel(ctx)
	if err := o.Nix.SwitchGeneration(ctx, o.Profile, prev.Number); err != nil {
		return err
	}
	if err := os.MkdirAll(deploysDir(o), 0o700); err != nil {
		return err
	}
	logPath := LogPath(o, o.ID)
	code, err := o.Switcher.Switch(ctx, prev.Path, hostverb.Switch, logPath)
	if err != nil {
		return err
	}
	if code != 0 && code != hostverb.ExitRebootRequired {
		return fmt.Errorf("%w: generation %d's switch-to-configuration exited %d (see %s)", hostverb.ErrFailed, prev.Number, code, logPath)
	}
	o.Logger.Info("rolled back", "from", cur.Number, "to", prev.Number)
	return nil
}
