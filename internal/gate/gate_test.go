package gate_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bos55/concordia/internal/gate"
	"github.com/bos55/concordia/internal/hostverb"
)

// fakeAgent accepts one connection, reads the request and answers with
// answer (nothing: it goes away mid-request).
func fakeAgent(t *testing.T, answer string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		bufio.NewReader(c).ReadBytes('\n')
		c.Write([]byte(answer))
	}()
	return sock
}

func run(t *testing.T, sock, line string) (int, string, string) {
	t.Helper()
	var out, errb strings.Builder
	code := gate.Run(context.Background(), gate.Options{Stdout: &out, Stderr: &errb, Socket: sock}, line)
	return code, out.String(), errb.String()
}

// An agent that takes the request and goes away (an activation restarting
// it) must not read as a failed activation: exit 255 makes the push side
// ask the host again, as after a lost ssh connection.
func TestAgentLostIsConnectionLoss(t *testing.T) {
	sock := fakeAgent(t, "")
	code, out, _ := run(t, sock, "deployer wait --id d-1")
	if code != hostverb.ExitLost || !strings.Contains(out, contractMarker) {
		t.Fatalf("exit %d %s", code, out)
	}
}

func TestAgentUnreachableNothingRan(t *testing.T) {
	code, out, errs := run(t, filepath.Join(t.TempDir(), "none.sock"), "deployer status")
	if code != hostverb.ExitFailed || !strings.Contains(errs, "not reachable") || !strings.Contains(out, contractMarker) {
		t.Fatalf("exit %d %s %s", code, out, errs)
	}
}

func TestAgentAnswerRelayed(t *testing.T) {
	sock := fakeAgent(t, `{"log":"working"}`+"\n"+`{"final":true,"exit":3,"reply":{"contract":3,"exitCode":3,"error":"host is locked by another deploy: d-0"}}`+"\n")
	code, out, errs := run(t, sock, "deployer activate --id d-1 /nix/store/0c6kzph7l0dcbfmjap64f0czdafn3b7x-nixos-system-a")
	if code != hostverb.ExitLocked || !strings.Contains(out, "d-0") || !strings.Contains(errs, "working") || !strings.Contains(errs, "locked") {
		t.Fatalf("exit %d\nstdout %s\nstderr %s", code, out, errs)
	}
}

func TestRefusalIsOneLine(t *testing.T) {
	code, out, errs := run(t, "/nonexistent", "sh -c id")
	if code != hostverb.ExitRefused || strings.Count(strings.TrimSpace(errs), "\n") != 0 || !strings.Contains(out, `"exitCode":126`) {
		t.Fatalf("exit %d %q %q", code, out, errs)
	}
}

// contractMarker is what every answer of this contract carries.
var contractMarker = fmt.Sprintf(`"contract":%d`, hostverb.Contract)
