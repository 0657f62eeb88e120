package server_test

import (
	"bytes"
	"os/exec"
)

func runBzip2(in []byte) ([]byte, error) {
	cmd := exec.Command("bzip2", "-c")
	cmd.Stdin = bytes.NewReader(in)
	return cmd.Output()
}
