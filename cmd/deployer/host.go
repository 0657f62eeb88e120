package main

import "github.com/bos55/concordia/internal/cli"

// hostSideCommands: activate, confirm, wait, gate (run on the host).
func hostSideCommands() []*cli.Command { return nil }
