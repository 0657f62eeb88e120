// Package nixcli is the one place in Concordia that executes the Nix
// command-line tools (nix, nix-store, nix-env). Everything else talks to the
// Runner interface, so the deployer's host logic can be tested with a fake
// that needs no Nix at all, and so every exec of Nix is easy to audit.
package nixcli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/bos55/concordia/internal/hostverb"
)

// ErrInvalid reports a store path that is not valid in the local store.
var ErrInvalid = errors.New("path not valid in the store")

// Runner is what the deployer needs from Nix. Methods run the real tools in
// Exec; tests substitute a fake.
type Runner interface {
	// Realise makes the paths valid in the store, substituting them through
	// the store's configured substituters (for a non-root user: the daemon).
	Realise(ctx context.Context, paths ...string) error
	// Valid reports whether path is a valid path of the local store.
	Valid(ctx context.Context, path string) (bool, error)
	// SetProfile points profile at path, creating a new generation.
	SetProfile(ctx context.Context, profile, path string) error
	// SwitchGeneration points profile at an existing generation.
	SwitchGeneration(ctx context.Context, profile string, gen int) error
	// DeleteGeneration removes one generation of profile (not the current).
	DeleteGeneration(ctx context.Context, profile string, gen int) error
}

// Exec runs the real Nix tools found in PATH (or at the given paths).
type Exec struct {
	NixStore string   // default "nix-store"
	NixEnv   string   // default "nix-env"
	Env      []string // extra environment (e.g. NIX_REMOTE=daemon); nil: inherit
}

var _ Runner = (*Exec)(nil)

func (e *Exec) tool(name, def string) string {
	if name != "" {
		return name
	}
	// Prefer the NixOS and Debian locations over a PATH that sudo may reset.
	for _, p := range []string{"/run/current-system/sw/bin/" + def, "/nix/var/nix/profiles/default/bin/" + def, "/usr/bin/" + def} {
		if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	return def
}

func (e *Exec) run(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	if e.Env != nil {
		cmd.Env = append(os.Environ(), e.Env...)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		err = withCtx(ctx, err)
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > 2000 {
			msg = msg[len(msg)-2000:]
		}
		return stdout.Bytes(), fmt.Errorf("%s %s: %w: %s", filepath.Base(name), strings.Join(args, " "), err, msg)
	}
	return stdout.Bytes(), nil
}

// Realise runs nix-store --realise on the paths.
func (e *Exec) Realise(ctx context.Context, paths ...string) error {
	if len(paths) == 0 {
		return nil
	}
	_, err := e.run(ctx, e.tool(e.NixStore, "nix-store"), append([]string{"--realise"}, paths...)...)
	return err
}

// Valid runs nix-store --check-validity, which exits 1 for an invalid path.
func (e *Exec) Valid(ctx context.Context, path string) (bool, error) {
	cmd := exec.CommandContext(ctx, e.tool(e.NixStore, "nix-store"), "--check-validity", path)
	if e.Env != nil {
		cmd.Env = append(os.Environ(), e.Env...)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return true, nil
	case errors.As(err, &ee) && ee.ExitCode() == 1:
		return false, nil
	default:
		return false, fmt.Errorf("nix-store --check-validity %s: %w: %s", path, withCtx(ctx, err), strings.TrimSpace(stderr.String()))
	}
}

// withCtx adds ctx's error to err, the error of a command ctx ended, so
// that "signal: killed" says whether ctx killed it or something else did.
func withCtx(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%w (%w)", err, cerr)
	}
	return err
}

// SetProfile runs nix-env -p profile --set path.
func (e *Exec) SetProfile(ctx context.Context, profile, path string) error {
	_, err := e.run(ctx, e.tool(e.NixEnv, "nix-env"), "-p", profile, "--set", path)
	return err
}

// SwitchGeneration runs nix-env -p profile --switch-generation gen.
func (e *Exec) SwitchGeneration(ctx context.Context, profile string, gen int) error {
	_, err := e.run(ctx, e.tool(e.NixEnv, "nix-env"), "-p", profile, "--switch-generation", strconv.Itoa(gen))
	return err
}

// DeleteGeneration runs nix-env -p profile --delete-generations gen.
func (e *Exec) DeleteGeneration(ctx context.Context, profile string, gen int) error {
	_, err := e.run(ctx, e.tool(e.NixEnv, "nix-env"), "-p", profile, "--delete-generations", strconv.Itoa(gen))
	return err
}

// Generations lists profile's generations, oldest first, by reading the
// profile directory's <name>-<N>-link symlinks (what nix-env itself does),
// so it needs no exec and works on a fake profile directory in tests.
func Generations(profile string) ([]hostverb.Generation, error) {
	dir, base := filepath.Split(profile)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list generations %s: %w", profile, err)
	}
	var gens []hostverb.Generation
	for _, ent := range entries {
		n, ok := genNumber(base, ent.Name())
		if !ok {
			continue
		}
		link := filepath.Join(dir, ent.Name())
		target, err := os.Readlink(link)
		if err != nil {
			continue // not a link: not a generation
		}
		gens = append(gens, hostverb.Generation{Number: n, Link: link, Path: target})
	}
	sort.Slice(gens, func(i, j int) bool { return gens[i].Number < gens[j].Number })
	return gens, nil
}

// CurrentGeneration returns the generation profile points at; ok is false
// when the profile does not exist yet.
func CurrentGeneration(profile string) (g hostverb.Generation, ok bool, err error) {
	target, err := os.Readlink(profile)
	if errors.Is(err, os.ErrNotExist) {
		return hostverb.Generation{}, false, nil
	}
	if err != nil {
		return hostverb.Generation{}, false, fmt.Errorf("read profile %s: %w", profile, err)
	}
	n, ok := genNumber(filepath.Base(profile), filepath.Base(target))
	if !ok {
		return hostverb.Generation{}, false, fmt.Errorf("profile %s points at %s: not a generation link", profile, target)
	}
	link := filepath.Join(filepath.Dir(profile), filepath.Base(target))
	path, err := os.Readlink(link)
	if err != nil {
		return hostverb.Generation{}, false, fmt.Errorf("read generation %s: %w", link, err)
	}
	return hostverb.Generation{Number: n, Link: link, Path: path}, true, nil
}

// genNumber parses "<base>-<N>-link".
func genNumber(base, name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, base+"-")
	if !ok {
		return 0, false
	}
	num, ok := strings.CutSuffix(rest, "-link")
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(num)
	if err != nil || n <= 0 || strconv.Itoa(n) != num {
		return 0, false
	}
	return n, true
}

// TrustedPublicKeys returns Nix's trusted-public-keys setting, as the
// daemon of this host applies it (the same nix.conf). It asks `nix config
// show --json` (Nix 2.20 and later, Lix) and falls back to `nix show-config
// --json` (older Nix); both print every setting as {"value": ...}.
func (e *Exec) TrustedPublicKeys(ctx context.Context) ([]string, error) {
	nix := e.tool("", "nix")
	out, err := e.run(ctx, nix, "--extra-experimental-features", "nix-command", "config", "show", "--json")
	if err != nil && ctx.Err() != nil {
		return nil, fmt.Errorf("read trusted-public-keys: %w", err)
	}
	if err != nil {
		var err2 error
		if out, err2 = e.run(ctx, nix, "--extra-experimental-features", "nix-command", "show-config", "--json"); err2 != nil {
			return nil, fmt.Errorf("read trusted-public-keys: %w", errors.Join(err, err2))
		}
	}
	var cfg map[string]struct {
		Value json.RawMessage `json:"value"`
	}
	if err := json.Unmarshal(out, &cfg); err != nil {
		return nil, fmt.Errorf("read trusted-public-keys: %w", err)
	}
	var keys []string
	if v := cfg["trusted-public-keys"].Value; len(v) > 0 {
		if err := json.Unmarshal(v, &keys); err != nil {
			return nil, fmt.Errorf("read trusted-public-keys: %w", err)
		}
	}
	return keys, nil
}
