package main

import (
	"fmt"

	"github.com/bos55/concordia/internal/cli"
	"github.com/bos55/concordia/pkg/narinfo"
)

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
