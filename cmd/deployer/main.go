// Command deployer pushes NixOS systems from the cache to the fleet and,
// on each host, activates them with magic rollback. The same binary is both
// sides: push/status/rollback run on CI or a workstation, activate/confirm
// and gate run on the host. This file only lists the subcommands.
package main

import (
	"os"

	"github.com/bos55/concordia/internal/cli"
)

func main() {
	os.Exit(cli.Main("deployer", "deployer: push NixOS systems from the cache to hosts, with magic rollback", commands(), os.Args[1:], nil))
}
