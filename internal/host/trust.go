package host

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/bos55/concordia/internal/hostverb"
	"github.com/bos55/concordia/internal/nixcli"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/local"
	"github.com/bos55/concordia/pkg/narinfo"
)

// Trust is what Activate asks about a store path before it runs anything
// from it: the path's record in the store's database and the keys whose
// signatures the host accepts.
type Trust interface {
	// PathInfo returns the record of the valid store path p; an error
	// wrapping store.ErrNotFound when p is not valid in the database.
	PathInfo(ctx context.Context, p string) (*store.PathInfo, error)
	// TrustedKeys are the host's trusted-public-keys.
	TrustedKeys(ctx context.Context) ([]narinfo.PublicKey, error)
}

// NixTrust is the host's real Nix: path records straight from the store's
// SQLite database (stable since Nix 2.8 and in Lix, unlike the JSON of
// `nix path-info`, which changed shape twice), and trusted-public-keys
// from Nix's own configuration. Close releases the database.
type NixTrust struct {
	StoreDir string // default /nix/store
	DBPath   string // default /nix/var/nix/db/db.sqlite
	Nix      *nixcli.Exec
	Logger   *slog.Logger

	once sync.Once
	db   *local.Store
	err  error
}

// PathInfo implements Trust.
func (t *NixTrust) PathInfo(ctx context.Context, p string) (*store.PathInfo, error) {
	t.once.Do(func() {
		log := t.Logger
		if log == nil {
			log = slog.New(slog.DiscardHandler)
		}
		t.db, t.err = local.Open(ctx, local.Options{StoreDir: t.StoreDir, DBPath: t.DBPath, MaxConns: 2, Logger: log}) // one is pinned for the WAL, see local
	})
	if t.err != nil {
		return nil, fmt.Errorf("open the store's database: %w", t.err)
	}
	_, hash, _, err := narinfo.ParseStorePath(p)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", store.ErrNotFound, err)
	}
	info, err := t.db.PathInfo(ctx, hash)
	if err != nil {
		return nil, err
	}
	if info.StorePath != p {
		return nil, fmt.Errorf("%w: the store has %s, not %s", store.ErrNotFound, info.StorePath, p)
	}
	return info, nil
}

// TrustedKeys implements Trust.
func (t *NixTrust) TrustedKeys(ctx context.Context) ([]narinfo.PublicKey, error) {
	n := t.Nix
	if n == nil {
		n = &nixcli.Exec{}
	}
	keys, err := n.TrustedPublicKeys(ctx)
	if err != nil {
		return nil, err
	}
	var out []narinfo.PublicKey
	for _, k := range keys {
		pk, err := narinfo.ParsePublicKey(k)
		if err != nil {
			return nil, fmt.Errorf("trusted-public-keys: %q: %w", k, err)
		}
		out = append(out, pk)
	}
	return out, nil
}

// Close implements io.Closer.
func (t *NixTrust) Close() error {
	if t.db != nil {
		return t.db.Close()
	}
	return nil
}

// checkSystem refuses, before anything changes, what the deploy key must
// not be able to activate: a path that is not a real directory in the
// store (a symlink from `nix-store --add` points anywhere), one not valid
// in the database, one no trusted key signed (a content-addressed or
// locally added path does not count: anyone on the host can make one), a
// bin/switch-to-configuration that resolves outside the system's own
// closure, and anything not shaped like a NixOS system. The message says
// which check failed.
func checkSystem(ctx context.Context, o Options, path string) error {
	if c, ok := o.Trust.(io.Closer); ok {
		defer c.Close()
	}
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("%w: %s is not in the store (fetch it first)", hostverb.ErrInvalid, path)
	case err != nil:
		return fmt.Errorf("%w: %s: %v", hostverb.ErrInvalid, path, err)
	case fi.Mode()&os.ModeSymlink != 0:
		return fmt.Errorf("%w: %s is a symlink, not a system: refused", hostverb.ErrInvalid, path)
	case !fi.IsDir():
		return fmt.Errorf("%w: %s is not a directory, not a system: refused", hostverb.ErrInvalid, path)
	}
	info, err := o.Trust.PathInfo(ctx, path)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("%w: %s is not valid in the Nix database (fetch it first)", hostverb.ErrInvalid, path)
	}
	if err != nil {
		return err
	}
	keys, err := o.Trust.TrustedKeys(ctx)
	if err != nil {
		return err
	}
	if err := signedBy(info, keys); err != nil {
		return err
	}
	stc := filepath.Join(path, "bin", "switch-to-configuration")
	if err := insideClosure(ctx, o, path, stc); err != nil {
		return err
	}
	fi, err = os.Stat(stc)
	if err != nil || !fi.Mode().IsRegular() || fi.Mode()&0o111 == 0 {
		return fmt.Errorf("%w: %s is not a NixOS system: no executable bin/switch-to-configuration", hostverb.ErrInvalid, path)
	}
	_, e1 := os.Stat(filepath.Join(path, "nixos-version"))
	_, e2 := os.Stat(filepath.Join(path, "kernel"))
	if e1 != nil && e2 != nil {
		return fmt.Errorf("%w: %s is not a NixOS system: no nixos-version or kernel", hostverb.ErrInvalid, path)
	}
	return nil
}

// signedBy checks that one of info's signatures verifies against a trusted
// key. Unlike Nix's substitution rule, a content address is not enough:
// any local user can add a content-addressed path with chosen content.
func signedBy(info *store.PathInfo, keys []narinfo.PublicKey) error {
	if len(keys) == 0 {
		return fmt.Errorf("%w: the host trusts no key (trusted-public-keys is empty), so nothing can be activated", hostverb.ErrInvalid)
	}
	fp := narinfo.Fingerprint(info.StorePath, narinfo.SHA256(info.NarHash), info.NarSize, info.References)
	for _, sig := range info.Sigs {
		for _, k := range keys {
			if k.Verify(fp, sig) {
				return nil
			}
		}
	}
	what := "no signature"
	if len(info.Sigs) > 0 {
		names := make([]string, len(info.Sigs))
		for i, s := range info.Sigs {
			names[i], _, _ = strings.Cut(s, ":")
		}
		what = "signatures only by untrusted keys (" + strings.Join(names, ", ") + ")"
	}
	if info.CA != "" {
		what += "; it is content-addressed, which anyone on the host can make"
	}
	return fmt.Errorf("%w: %s has %s: not signed by a key this host trusts, refused", hostverb.ErrInvalid, info.StorePath, what)
}

// insideClosure checks that file, followed through every symlink, lands
// in a store path of system's closure (the paths it references, directly
// or not). A system whose switch-to-configuration points elsewhere would
// run code no signature covers.
func insideClosure(ctx context.Context, o Options, system, file string) error {
	real, err := filepath.EvalSymlinks(file)
	if err != nil {
		return fmt.Errorf("%w: %s is not a NixOS system: %v", hostverb.ErrInvalid, system, err)
	}
	rel, err := filepath.Rel(o.StoreDir, real)
	if err != nil || rel == "." || strings.HasPrefix(rel, "..") {
		return fmt.Errorf("%w: %s resolves to %s, outside the store: refused", hostverb.ErrInvalid, file, real)
	}
	owner := filepath.Join(o.StoreDir, strings.SplitN(rel, string(filepath.Separator), 2)[0])
	seen := map[string]bool{system: true}
	queue := []string{system}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if p == owner {
			return nil
		}
		info, err := o.Trust.PathInfo(ctx, p)
		if err != nil {
			return fmt.Errorf("%w: closure of %s: %s: %v", hostverb.ErrInvalid, system, p, err)
		}
		for _, r := range info.References {
			if !seen[r] {
				seen[r] = true
				queue = append(queue, r)
			}
		}
	}
	return fmt.Errorf("%w: %s resolves to %s, outside the closure of %s: refused", hostverb.ErrInvalid, file, real, system)
}
