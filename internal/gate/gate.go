// Package gate is the forced command of the deploy user's SSH key
// (authorized_keys `command="/path/deployer gate"`): it reads
// SSH_ORIGINAL_COMMAND, allows only the deployer's host verbs and runs them
// without a shell, so the key can never run anything else. Parsing is plain
// splitting on spaces; any character a shell would treat specially is
// refused rather than interpreted.
package gate

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// ErrRefused is returned for every command the gate does not allow.
var ErrRefused = errors.New("refused by deployer gate")

// ExitRefused is the exit code for a refused command (as a shell's "cannot execute").
const ExitRefused = 126

// sudoVerbs run as root through sudo; userVerbs run as the deploy user.
var (
	sudoVerbs = map[string]bool{"activate": true, "confirm": true, "wait": true, "status": true, "rollback": true}
	userVerbs = map[string]bool{"fetch": true, "status": true, "version": true}
)

// SudoCandidates are where sudo is looked for, NixOS's setuid wrapper first.
var SudoCandidates = []string{"/run/wrappers/bin/sudo", "/usr/bin/sudo", "/bin/sudo"}

func safeChar(c rune) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("/._=:,@+-", c)
}

// Parse turns the SSH command line into the argv to exec. self is the
// absolute path of this deployer binary and sudo the path of sudo; the
// returned argv always names them, never a program from the command line.
func Parse(cmdline, self, sudo string) ([]string, error) {
	if cmdline == "" {
		return nil, fmt.Errorf("%w: no command (interactive logins are not allowed)", ErrRefused)
	}
	if len(cmdline) > 8192 {
		return nil, fmt.Errorf("%w: command too long", ErrRefused)
	}
	for _, c := range cmdline {
		if c != ' ' && !safeChar(c) {
			return nil, fmt.Errorf("%w: character %q is not allowed", ErrRefused, c)
		}
	}
	var words []string
	for _, w := range strings.Split(cmdline, " ") {
		if w != "" {
			words = append(words, w)
		}
	}
	// The caller may name this binary by a link to it (on NixOS e.g.
	// /run/current-system/sw/bin/deployer for the store path); whatever
	// the name, only self is ever run.
	isSelf := func(w string) bool {
		if w == self || w == "deployer" {
			return true
		}
		if !filepath.IsAbs(w) {
			return false
		}
		r, err := filepath.EvalSymlinks(w)
		return err == nil && r == self
	}
	switch {
	case len(words) >= 2 && isSelf(words[0]) && userVerbs[words[1]]:
		if words[1] == "status" && !contains(words[2:], "--local") {
			return nil, fmt.Errorf("%w: only status --local runs on the host", ErrRefused)
		}
		return append([]string{self}, words[1:]...), nil
	case len(words) >= 4 && words[0] == "sudo" && words[1] == "-n" && isSelf(words[2]) && sudoVerbs[words[3]]:
		return append([]string{sudo, "-n", self}, words[3:]...), nil
	}
	return nil, fmt.Errorf("%w: %q is not a deployer host verb", ErrRefused, cmdline)
}

func contains(ws []string, s string) bool {
	for _, w := range ws {
		if w == s {
			return true
		}
	}
	return false
}

// Exec replaces the process with the allowed command (it returns only on
// error). The environment is passed on as sshd set it.
func Exec(argv []string) error {
	return syscall.Exec(argv[0], argv, os.Environ())
}

// FindSudo returns the first existing sudo of SudoCandidates.
func FindSudo() (string, error) {
	for _, p := range SudoCandidates {
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p, nil
		}
	}
	return "", errors.New("sudo not found")
}
