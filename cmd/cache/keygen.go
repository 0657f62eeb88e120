package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/bos55/concordia/internal/durable"

	"github.com/bos55/concordia/internal/cli"
	"github.com/bos55/concordia/pkg/narinfo"
)

type keygenOptions struct {
	secret string // secret key file; "" means ./NAME.sec
	public string // public key file; "" means ./NAME.pub
}

func newKeygenCommand() *cli.Command {
	var opts keygenOptions
	return &cli.Command{
		Name:  "keygen",
		Usage: "[--secret FILE] [--public FILE] NAME",
		Short: "generate an ed25519 signing key pair in Nix's format",
		Long: `Writes a new signing key pair, the same files
nix-store --generate-binary-cache-key NAME SECRET PUBLIC writes: the secret
key "NAME:base64(64 bytes)" (mode 0600) and the public key
"NAME:base64(32 bytes)" (mode 0644), each without a trailing newline. The
public key is also printed, ready for a client's trusted-public-keys.

NAME conventionally names the cache and a generation, e.g.
cache.example.org-1, so a key can later be rotated to cache.example.org-2.
Without --secret and --public the files are ./NAME.sec and ./NAME.pub.

Existing files are never overwritten: if either file exists, nothing is
written and the command fails. Each file appears atomically and is fsynced.`,
		Flags: func(fs *flag.FlagSet) {
			fs.StringVar(&opts.secret, "secret", "", "write the secret key to `FILE` (default ./NAME.sec)")
			fs.StringVar(&opts.public, "public", "", "write the public key to `FILE` (default ./NAME.pub)")
		},
		Run: func(ctx context.Context, env *cli.Env, args []string) error {
			return runKeygen(ctx, env, opts, args)
		},
	}
}

func runKeygen(_ context.Context, env *cli.Env, opts keygenOptions, args []string) error {
	if len(args) != 1 {
		return cli.Usagef("want exactly one key NAME, e.g. cache.example.org-1")
	}
	name := args[0]
	sec, pub, err := narinfo.GenerateKey(name)
	if err != nil {
		return cli.Usagef("%v", err)
	}
	if (opts.secret == "" || opts.public == "") && strings.ContainsRune(name, '/') {
		return cli.Usagef("key name %q contains '/': pass --secret and --public", name)
	}
	if opts.secret == "" {
		opts.secret = name + ".sec"
	}
	if opts.public == "" {
		opts.public = name + ".pub"
	}
	if filepath.Clean(opts.secret) == filepath.Clean(opts.public) {
		return cli.Usagef("--secret and --public name the same file %s", opts.secret)
	}
	// Check both first, so an existing public key does not leave a fresh
	// secret key behind.
	for _, p := range []string{opts.secret, opts.public} {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("keygen: %s already exists, refusing to overwrite it", p)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("keygen: %w", err)
		}
	}
	if err := writeNewFile(opts.secret, []byte(sec.String()), 0o600); err != nil {
		return err
	}
	if err := writeNewFile(opts.public, []byte(pub.String()), 0o644); err != nil {
		os.Remove(opts.secret) // written by us a moment ago: leave nothing behind
		return err
	}
	fmt.Fprintf(env.Stderr, "wrote secret key %s (keep it private) and public key %s\n", opts.secret, opts.public)
	fmt.Fprintln(env.Stdout, pub.String())
	return nil
}

// writeNewFile publishes data at path atomically and durably, and never
// replaces an existing file.
func writeNewFile(path string, data []byte, mode os.FileMode) error {
	err := durable.WriteNew(path, data, mode)
	if errors.Is(err, durable.ErrExists) {
		return fmt.Errorf("keygen: %s already exists, refusing to overwrite it", path)
	}
	if err != nil {
		return fmt.Errorf("keygen: %w", err)
	}
	return nil
}
