package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/bos55/concordia/internal/config"
	"github.com/bos55/concordia/pkg/narinfo"
)

// printWelcome tells whoever started the server what clients need: the
// public keys and the nix.conf lines.
func printWelcome(w io.Writer, addr string, cfg *config.Config, keys []narinfo.SecretKey, generated bool) {
	scheme := "http"
	if cfg.TLSCertPath != "" {
		scheme = "https"
	}
	url := scheme + "://" + addr
	if network, path, _ := config.SplitBind(cfg.Bind); network == "unix" {
		url = "unix:" + path
	}
	pubs := make([]string, len(keys))
	for i, k := range keys {
		pubs[i] = k.Public().String()
	}
	if generated {
		fmt.Fprintf(w, "Created signing key %s in %s\n", keys[0].Name(), cfg.StateDir)
	}
	fmt.Fprintf(w, "Public key: %s\n", strings.Join(pubs, " "))
	fmt.Fprintf(w, "nix.conf:\n  substituters = %s\n  trusted-public-keys = %s\n", url, strings.Join(pubs, " "))
	// Last, so whoever waits for this line has read the others.
	fmt.Fprintf(w, "Serving %s on %s\n", cfg.VirtualNixStore, url)
}
