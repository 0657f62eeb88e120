package agent_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/agent"
	"github.com/bos55/concordia/internal/host"
	"github.com/bos55/concordia/internal/hostverb"
)

// serve starts an agent on a socket in a temporary directory that anyone
// may connect to, so only the agent's own peer check decides.
func serve(t *testing.T, allow string) (string, host.Options) {
	t.Helper()
	dir, err := os.MkdirTemp("", "agent-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	o := host.Options{StateDir: filepath.Join(dir, "state"), StoreDir: filepath.Join(dir, "store"),
		Profile: filepath.Join(dir, "profiles", "system"), CurrentSystem: filepath.Join(dir, "current"), BootedSystem: filepath.Join(dir, "booted")}
	os.MkdirAll(filepath.Dir(o.Profile), 0o755)
	sock := filepath.Join(dir, "agent.sock")
	ln, err := agent.Listen(sock, 0)
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(sock, 0o666)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		(&agent.Server{AllowUser: allow, Host: o}).Serve(ctx, ln, 0)
	}()
	t.Cleanup(func() { cancel(); ln.Close(); <-done })
	return sock, o
}

// TestHelperClient is the client as another user (re-executed by the tests).
func TestHelperClient(t *testing.T) {
	sock := os.Getenv("AGENT_TEST_SOCKET")
	if sock == "" {
		t.Skip("helper")
	}
	line, code, err := agent.Call(context.Background(), sock, hostverb.Request{Verb: hostverb.VerbStatus}, os.Stderr)
	if err != nil {
		os.Stdout.WriteString("ERR " + err.Error())
		return
	}
	os.Stdout.WriteString(strconv.Itoa(code) + " " + string(line))
}

func callAs(t *testing.T, sock string, uid, gid uint32) string {
	t.Helper()
	// A copy of the test binary another user can run.
	dir, err := os.MkdirTemp("", "agent-test-bin-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	b, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "agent.test")
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^TestHelperClient$")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "AGENT_TEST_SOCKET="+sock)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
	out, err := cmd.Output()
	if len(out) == 0 {
		t.Logf("helper: %v", err)
	}
	return string(out)
}

func needRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to connect as other users")
	}
}

// The kernel's peer credentials decide: root and the configured user are
// answered, anybody else is refused (126) before the request is read.
func TestPeerCheck(t *testing.T) {
	needRoot(t)
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skip("no user nobody")
	}
	uid, _ := strconv.Atoi(nobody.Uid)
	gid, _ := strconv.Atoi(nobody.Gid)

	sock, _ := serve(t, "root-only-no-such-user")
	if out := callAs(t, sock, uint32(uid), uint32(gid)); !strings.HasPrefix(out, "126 ") || !strings.Contains(out, "may not use the deployer agent") {
		t.Fatalf("another user was answered: %q", out)
	}
	sock2, _ := serve(t, "nobody")
	if out := callAs(t, sock2, uint32(uid), uint32(gid)); !strings.HasPrefix(out, "0 ") || !strings.Contains(out, contractMarker) {
		t.Fatalf("the allowed user was refused: %q", out)
	}
	line, code, err := agent.Call(context.Background(), sock, hostverb.Request{Verb: hostverb.VerbStatus}, nil)
	if err != nil || code != 0 {
		t.Fatalf("root: %d %v %s", code, err, line)
	}
}

// Requests that the gate would never send are refused by the agent too:
// it trusts nothing of its client.
func TestHostileRequests(t *testing.T) {
	sock, o := serve(t, "")
	p := filepath.Join(o.StoreDir, "0c6kzph7l0dcbfmjap64f0czdafn3b7x-nixos-system-a")
	bad := []string{
		`{"contract":2,"request":{"verb":"shell"}}`,
		`{"contract":2,"request":{"verb":"status","path":"/tmp"}}`,
		`{"contract":2,"request":{"verb":"status"},"stateDir":"/tmp/x"}`,
		`{"contract":2,"request":{"verb":"status","stateDir":"/tmp/x"}}`,
		`{"contract":2,"request":{"verb":"activate","id":"../x","mode":"switch","path":"` + p + `","confirmTimeout":1000000000,"kernelChange":"report"}}`,
		`{"contract":2,"request":{"verb":"activate","id":"d","mode":"switch","path":"/tmp/evil","confirmTimeout":1000000000,"kernelChange":"report"}}`,
		`{"contract":2,"request":{"verb":"activate","id":"d","mode":"reboot","path":"` + p + `","confirmTimeout":1000000000,"kernelChange":"report"}}`,
		`{"contract":2,"request":{"verb":"activate","id":"d","mode":"switch","path":"` + p + `","confirmTimeout":1,"kernelChange":"report"}}`,
		`{"contract":2,"request":{"verb":"wait","id":"d","timeout":-1}}`,
		`{"contract":2,"request":{"verb":"fetch","paths":["` + p + `"]}}`,
		`{"contract":2,"request":{"verb":"status"}} trailing`,
		`not json`,
		strings.Repeat("x", 70<<10),
	}
	for _, req := range bad {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write([]byte(req + "\n"))
		var buf bytes.Buffer
		buf.ReadFrom(c)
		c.Close()
		var m agent.Message
		lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
		if err := json.Unmarshal([]byte(lines[len(lines)-1]), &m); err != nil || !m.Final || m.Exit != hostverb.ExitRefused {
			name := req
			if len(name) > 80 {
				name = name[:80]
			}
			t.Errorf("%s: answered %q", name, buf.String())
		}
	}
	if _, err := os.Stat(o.StateDir); !os.IsNotExist(err) {
		t.Fatalf("a refused request touched the state dir: %v", err)
	}
}

// contractMarker is what every answer of this contract carries.
var contractMarker = fmt.Sprintf(`"contract":%d`, hostverb.Contract)
