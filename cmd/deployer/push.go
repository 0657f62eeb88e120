package main

import "github.com/bos55/concordia/internal/cli"

// pushSideCommands: push, status, rollback (run from CI or a workstation).
func pushSideCommands() []*cli.Command { return nil }
