// Package testminio runs a real MinIO server on loopback for tests of the
// S3 blob store, so they exercise a real S3 implementation (multipart
// uploads, listing pages, error codes) rather than a mock that agrees
// with our assumptions.
//
// The binary is $CONCORDIA_MINIO (default /var/cache/concordia-test/minio).
// Without it a test skips, unless CONCORDIA_REQUIRE_SERVERS=1, when it
// fails: the full test script installs it and must not pass by skipping.
package testminio

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// DefaultBinary is where the test script keeps the MinIO binary.
const DefaultBinary = "/var/cache/concordia-test/minio"

// startTimeout bounds a server's start: about 5 s normally, much longer
// on a loaded shared machine.
const startTimeout = 60 * time.Second

// Server is one MinIO process with its data directory.
type Server struct {
	AccessKey string
	SecretKey string

	bin     string
	dataDir string
	logPath string
	addr    string // host:port of the S3 API
	console string // host:port of the (disabled) console

	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{} // closed when cmd has exited
	buckets int
}

// Binary is the MinIO binary tests use; a missing one skips t (or fails
// it when servers are required).
func Binary(t testing.TB) string {
	t.Helper()
	bin := os.Getenv("CONCORDIA_MINIO")
	if bin == "" {
		bin = DefaultBinary
	}
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("CONCORDIA_REQUIRE_SERVERS") == "1" {
			t.Fatalf("MinIO binary %s: %v (CONCORDIA_REQUIRE_SERVERS=1)", bin, err)
		}
		t.Skipf("no MinIO binary at %s (set CONCORDIA_MINIO)", bin)
	}
	return bin
}

// Start starts a server of t's own, stopped when t ends: for tests that
// stop, kill or restart it. Tests that only need a bucket should use
// Shared, which costs no start.
func Start(t testing.TB) *Server {
	t.Helper()
	s, err := newServer(Binary(t), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("MinIO log (tail):\n%s", s.LogTail())
		}
		s.Kill()
	})
	if err := s.start(); err != nil {
		t.Fatalf("%v\nMinIO log (tail):\n%s", err, s.LogTail())
	}
	return s
}

var shared struct {
	sync.Mutex
	inMain bool
	dir    string
	s      *Server
	err    error
}

// Main runs a test binary's tests with one shared server (see Shared),
// started by the first test that asks for it and stopped at the end:
// call it from TestMain as os.Exit(testminio.Main(m)).
func Main(m *testing.M) int {
	shared.Lock()
	shared.inMain = true
	shared.Unlock()
	code := m.Run()
	shared.Lock()
	defer shared.Unlock()
	if shared.s != nil {
		shared.s.Stop()
	}
	if shared.dir != "" {
		os.RemoveAll(shared.dir)
	}
	return code
}

// Shared is the test binary's shared server (Main must run the tests);
// tests share it through fresh buckets (Bucket) and must not stop it.
func Shared(t testing.TB) *Server {
	t.Helper()
	bin := Binary(t)
	shared.Lock()
	defer shared.Unlock()
	if !shared.inMain {
		t.Fatal("testminio.Shared needs TestMain to call testminio.Main")
	}
	if shared.s == nil && shared.err == nil {
		dir, err := os.MkdirTemp("", "testminio-")
		if err != nil {
			t.Fatal(err)
		}
		shared.dir = dir
		s, err := newServer(bin, dir)
		if err == nil {
			if err = s.start(); err != nil {
				err = fmt.Errorf("%w\nMinIO log (tail):\n%s", err, s.LogTail())
			}
		}
		shared.s, shared.err = s, err
	}
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	s := shared.s
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("shared MinIO log (tail):\n%s", s.LogTail())
		}
	})
	return s
}

func newServer(bin, dir string) (*Server, error) {
	api, err := freePort()
	if err != nil {
		return nil, err
	}
	console, err := freePort()
	if err != nil {
		return nil, err
	}
	s := &Server{
		AccessKey: "concordia-test",
		SecretKey: "secret-" + randomHex(8),
		bin:       bin,
		dataDir:   filepath.Join(dir, "data"),
		logPath:   filepath.Join(dir, "minio.log"),
		addr:      api,
		console:   console,
	}
	if err := os.MkdirAll(s.dataDir, 0o755); err != nil {
		return nil, err
	}
	return s, nil
}

// freePort picks a loopback port no one listens on now; MinIO binds it
// a moment later (a race other tests could lose only by binary chance).
func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Endpoint is the S3 API's URL.
func (s *Server) Endpoint() string { return "http://" + s.addr }

// Addr is the S3 API's host:port.
func (s *Server) Addr() string { return s.addr }

func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return errors.New("testminio: already running")
	}
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	home := filepath.Join(filepath.Dir(s.dataDir), "home")
	os.MkdirAll(home, 0o755)
	cmd := exec.Command(s.bin, "server", s.dataDir,
		"--address", s.addr, "--console-address", s.console,
		"--certs-dir", filepath.Join(home, "certs"), "--quiet")
	// A minimal environment: no proxies or credentials of the user's
	// leak in, and nothing that would make MinIO talk to the outside.
	cmd.Env = []string{
		"HOME=" + home,
		"PATH=/usr/bin:/bin",
		"MINIO_ROOT_USER=" + s.AccessKey,
		"MINIO_ROOT_PASSWORD=" + s.SecretKey,
		"MINIO_BROWSER=off",
		"MINIO_UPDATE=off",
		"MINIO_CALLHOME_ENABLE=off",
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("starting %s: %w", s.bin, err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		logf.Close()
		close(exited)
	}()
	s.cmd, s.exited = cmd, exited
	return s.waitReady(exited)
}

// waitReady polls MinIO's liveness probe until it answers 200.
func (s *Server) waitReady(exited chan struct{}) error {
	c := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return fmt.Errorf("MinIO at %s exited during start", s.addr)
		default:
		}
		resp, err := c.Get(s.Endpoint() + "/minio/health/live")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("MinIO at %s not live after %s", s.addr, startTimeout)
}

// Stop stops the server gracefully (SIGTERM, then SIGKILL after 30 s)
// and waits for it to exit.
func (s *Server) Stop() { s.signal(syscall.SIGTERM, 30*time.Second) }

// Kill kills the server (SIGKILL) and waits for it to exit.
func (s *Server) Kill() { s.signal(syscall.SIGKILL, 0) }

func (s *Server) signal(sig syscall.Signal, grace time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Signal(sig)
	if grace > 0 {
		select {
		case <-s.exited:
		case <-time.After(grace):
			s.cmd.Process.Kill()
		}
	}
	<-s.exited
	s.cmd, s.exited = nil, nil
}

// Restart stops the server (if running) and starts it again on the same
// port and data: for tests of a store whose S3 went away and came back.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop()
	if err := s.start(); err != nil {
		t.Fatalf("restarting MinIO: %v\nMinIO log (tail):\n%s", err, s.LogTail())
	}
}

// Client is a minio-go client of the server as its root user.
func (s *Server) Client(t testing.TB) *minio.Client {
	t.Helper()
	c, err := minio.New(s.addr, &minio.Options{
		Creds:  credentials.NewStaticV4(s.AccessKey, s.SecretKey, ""),
		Region: "us-east-1",
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Bucket creates a fresh, empty bucket for t and returns its name.
func (s *Server) Bucket(t testing.TB) string {
	t.Helper()
	s.mu.Lock()
	s.buckets++
	name := fmt.Sprintf("test-%d-%s", s.buckets, randomHex(4))
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Client(t).MakeBucket(ctx, name, minio.MakeBucketOptions{Region: "us-east-1"}); err != nil {
		t.Fatalf("creating bucket %s: %v", name, err)
	}
	return name
}

// LogTail is the last few KiB of the server's log.
func (s *Server) LogTail() string {
	b, err := os.ReadFile(s.logPath)
	if err != nil {
		return err.Error()
	}
	const max = 4 << 10
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return string(b)
}

// StartIn starts a server with its data under dir, for programs other
// than tests, like the benchmark runner: bin is the MinIO binary ("" for
// $CONCORDIA_MINIO or DefaultBinary). The caller stops it with Stop or
// Kill.
func StartIn(bin, dir string) (*Server, error) {
	if bin == "" {
		bin = os.Getenv("CONCORDIA_MINIO")
	}
	if bin == "" {
		bin = DefaultBinary
	}
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("testminio: no MinIO binary: %w", err)
	}
	s, err := newServer(bin, dir)
	if err != nil {
		return nil, err
	}
	if err := s.start(); err != nil {
		return nil, fmt.Errorf("%w\nMinIO log (tail):\n%s", err, s.LogTail())
	}
	return s, nil
}

// NewBucket is Bucket without a test: it creates a fresh, empty bucket
// and returns its name.
func (s *Server) NewBucket(ctx context.Context) (string, error) {
	s.mu.Lock()
	s.buckets++
	name := fmt.Sprintf("test-%d-%s", s.buckets, randomHex(4))
	s.mu.Unlock()
	c, err := minio.New(s.addr, &minio.Options{
		Creds:  credentials.NewStaticV4(s.AccessKey, s.SecretKey, ""),
		Region: "us-east-1",
	})
	if err != nil {
		return "", err
	}
	if err := c.MakeBucket(ctx, name, minio.MakeBucketOptions{Region: "us-east-1"}); err != nil {
		return "", fmt.Errorf("creating bucket %s: %w", name, err)
	}
	return name, nil
}

// Pid is the server process's id (0 when it is not running), for
// reading its resource use.
func (s *Server) Pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil || s.cmd.Process == nil {
		return 0
	}
	return s.cmd.Process.Pid
}
