// Command cache is Concordia's Nix binary cache: it serves the machine's
// /nix/store and the paths CI uploads, signed and zstd-compressed. This file
// only lists the subcommands; each lives in its own file and the logic in
// internal/ packages.
package main

import (
	"os"

	"github.com/bos55/concordia/internal/cli"
)

func main() {
	cmds := []*cli.Command{
		newServeCommand(),
		newKeygenCommand(),
		newVersionCommand(),
		newGCCommand(), newVerifyCommand(), newPinCommand(), newForgetCommand(), newTokenCommand(),
		newMigrateCommand(),
	}
	os.Exit(cli.Main("cache", "cache: Concordia's Nix binary cache (serve, sign, take uploads)", cmds, os.Args[1:], nil))
}
