package main

import (
	"fmt"
	"net/url"
	"os"
	"strings"

	"github.com/bos55/concordia/internal/cli"
	"github.com/bos55/concordia/pkg/narinfo"
)

func readToken(path string) (string, error) {
	if path == "" {
		return "", nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("cache token: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// netrcToken returns the password netrc holds for the cache's host: the
// cache accepts its token both as a Bearer token and as a Basic password,
// so the netrc CI already gives `nix copy` serves the deployer too.
func netrcToken(path, cache string) (string, error) {
	u, err := url.Parse(cache)
	if err != nil {
		return "", cli.Usagef("--cache %q: %v", cache, err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("netrc: %w", err)
	}
	words := strings.Fields(string(b))
	var machine, def string
	cur := ""
	for i := 0; i+1 < len(words); i++ {
		switch words[i] {
		case "machine":
			cur = words[i+1]
			i++
		case "default":
			cur = "\x00default"
		case "password":
			if cur == u.Hostname() && machine == "" {
				machine = words[i+1]
			}
			if cur == "\x00default" && def == "" {
				def = words[i+1]
			}
			i++
		}
	}
	if machine != "" {
		return machine, nil
	}
	return def, nil
}

func loadKeys(keys, files []string) ([]narinfo.PublicKey, error) {
	var out []narinfo.PublicKey
	for _, k := range keys {
		pk, err := narinfo.ParsePublicKey(k)
		if err != nil {
			return nil, cli.Usagef("--trusted-key %q: %v", k, err)
		}
		out = append(out, pk)
	}
	for _, f := range files {
		pk, err := narinfo.LoadPublicKeyFile(f)
		if err != nil {
			return nil, fmt.Errorf("--cache-key-file: %w", err)
		}
		out = append(out, pk)
	}
	return out, nil
}
