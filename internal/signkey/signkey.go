// Package signkey finds the keys a cache server signs narinfos with: the
// secret key files it is given, or, with none given, a key of its own in
// its state directory, created on first start. That lets `cache serve`
// run with no configuration at all and still hand clients a stable
// trusted-public-keys line. The key format itself is pkg/narinfo's.
package signkey

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/bos55/concordia/internal/durable"
	"github.com/bos55/concordia/pkg/narinfo"
)

// The key files in the state directory.
const (
	SecretFile = "signing-key.sec"
	PublicFile = "signing-key.pub"
)

// Load loads the secret key files at paths, in order. With none it
// returns the state directory's key instead, creating it (named
// <hostname>-1) when there is none yet; generated reports that, so the
// caller can tell the operator which key clients must now trust.
func Load(paths []string, stateDir string) (keys []narinfo.SecretKey, generated bool, err error) {
	for _, p := range paths {
		k, err := narinfo.LoadSecretKeyFile(p)
		if err != nil {
			return nil, false, fmt.Errorf("sign key %s: %w", p, err)
		}
		keys = append(keys, k)
	}
	if len(keys) > 0 {
		return keys, false, nil
	}
	k, generated, err := State(stateDir)
	if err != nil {
		return nil, false, err
	}
	return []narinfo.SecretKey{k}, generated, nil
}

// State loads <dir>/signing-key.sec, or creates it (0600, atomically,
// never replacing one another process made at the same moment) with its
// public key beside it.
func State(dir string) (key narinfo.SecretKey, generated bool, err error) {
	secPath := filepath.Join(dir, SecretFile)
	k, err := narinfo.LoadSecretKeyFile(secPath)
	if err == nil {
		return k, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return narinfo.SecretKey{}, false, fmt.Errorf("state key %s: %w", secPath, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return narinfo.SecretKey{}, false, fmt.Errorf("state dir: %w", err)
	}
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "concordia"
	}
	sec, pub, err := narinfo.GenerateKey(host + "-1")
	if err != nil {
		return narinfo.SecretKey{}, false, err
	}
	if err := durable.WriteNew(secPath, []byte(sec.String()), 0o600); err != nil {
		if k, lerr := narinfo.LoadSecretKeyFile(secPath); lerr == nil {
			return k, false, nil // another server won the race
		}
		return narinfo.SecretKey{}, false, fmt.Errorf("state key: %w", err)
	}
	if err := durable.WriteNew(filepath.Join(dir, PublicFile), []byte(pub.String()), 0o644); err != nil {
		return narinfo.SecretKey{}, false, fmt.Errorf("state key: %w", err)
	}
	return sec, true, nil
}
