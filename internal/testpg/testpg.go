// Package testpg starts throwaway PostgreSQL servers for tests: a real
// server on a unix socket in a temporary directory, never on TCP, so the
// shared-index code is tested against the database it will meet.
package testpg

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
)

// Options tune a server.
type Options struct {
	// Fsync keeps fsync on; off by default because tests other than
	// crash tests do not need durability and it is much faster.
	Fsync bool
}

// Server is one running PostgreSQL cluster owned by the test binary.
type Server struct {
	bin  string
	dir  string // socket directory, also holds data/ and log
	opts Options
	n    atomic.Int64
}

// BinDir is where the PostgreSQL binaries are: $CONCORDIA_PG_BIN or the
// Debian location of PostgreSQL 15.
func BinDir() string {
	if d := os.Getenv("CONCORDIA_PG_BIN"); d != "" {
		return d
	}
	return "/usr/lib/postgresql/15/bin"
}

// skip skips the test when servers are optional, and fails it when the
// CI script requires them (CONCORDIA_REQUIRE_SERVERS=1), so a missing
// PostgreSQL never silently passes there.
func skip(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CONCORDIA_REQUIRE_SERVERS") == "1" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

// Start starts a server stopped when t ends.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	s, err := start(os.TempDir(), opts)
	if err != nil {
		if _, ok := err.(missingError); ok {
			skip(t, "%v", err)
		}
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

type missingError struct{ error }

func start(parent string, opts Options) (*Server, error) {
	bin := BinDir()
	if _, err := os.Stat(filepath.Join(bin, "initdb")); err != nil {
		return nil, missingError{fmt.Errorf("testpg: no PostgreSQL binaries (set CONCORDIA_PG_BIN): %w", err)}
	}
	dir, err := os.MkdirTemp(parent, "testpg")
	if err != nil {
		return nil, fmt.Errorf("testpg: %w", err)
	}
	// The server runs as postgres (initdb refuses root), which must reach
	// the directory; the socket path must stay under 107 bytes.
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, fmt.Errorf("testpg: %w", err)
	}
	s := &Server{bin: bin, dir: dir, opts: opts}
	if os.Geteuid() == 0 {
		if out, err := exec.Command("chown", "postgres:postgres", dir).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("testpg: chown %s: %v: %s", dir, err, out)
		}
	}
	if out, err := s.run("initdb", "-D", s.data(), "-A", "trust", "-U", "concordia", "-E", "UTF8", "--no-sync"); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("testpg: initdb: %v: %s", err, out)
	}
	if err := s.startServer(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return s, nil
}

func (s *Server) data() string { return filepath.Join(s.dir, "data") }

// run runs a PostgreSQL binary, as postgres when we are root.
func (s *Server) run(name string, args ...string) ([]byte, error) {
	path := filepath.Join(s.bin, name)
	var cmd *exec.Cmd
	if os.Geteuid() == 0 {
		cmd = exec.Command("runuser", append([]string{"-u", "postgres", "--", path}, args...)...)
	} else {
		cmd = exec.Command(path, args...)
	}
	cmd.Dir = s.dir
	return cmd.CombinedOutput()
}

func (s *Server) startServer() error {
	o := fmt.Sprintf("-k %s -c listen_addresses='' -c max_connections=200", s.dir)
	if !s.opts.Fsync {
		o += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
	}
	out, err := s.run("pg_ctl", "-D", s.data(), "-o", o, "-l", filepath.Join(s.dir, "log"), "-w", "-t", "60", "start")
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(s.dir, "log"))
		return fmt.Errorf("testpg: pg_ctl start: %v: %s\n%s", err, out, log)
	}
	return nil
}

// SocketDir is the directory holding the server's unix socket.
func (s *Server) SocketDir() string { return s.dir }

// URL is a connection URL for database db as user concordia.
func (s *Server) URL(db string) string {
	return fmt.Sprintf("postgres://concordia@/%s?host=%s", db, s.dir)
}

// CreateDB creates a fresh database, so one server serves many tests
// without them seeing each other's data, and returns its URL.
func (s *Server) CreateDB(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("t%d_%d", os.Getpid(), s.n.Add(1))
	if out, err := s.run("createdb", "-h", s.dir, "-U", "concordia", name); err != nil {
		t.Fatalf("testpg: createdb: %v: %s", err, out)
	}
	return s.URL(name)
}

// Restart stops the server (fast: clients are disconnected, open
// transactions aborted) and starts it again, for fault tests.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	if out, err := s.run("pg_ctl", "-D", s.data(), "-m", "fast", "-w", "stop"); err != nil {
		t.Fatalf("testpg: pg_ctl stop: %v: %s", err, out)
	}
	if err := s.startServer(); err != nil {
		t.Fatal(err)
	}
}

// Stop stops the server immediately and removes its files.
func (s *Server) Stop() {
	s.run("pg_ctl", "-D", s.data(), "-m", "immediate", "-w", "stop")
	os.RemoveAll(s.dir)
}

var (
	sharedMu  sync.Mutex
	shared    *Server
	sharedErr error
)

// Shared is one server for the whole test binary, started by its first
// user and stopped by Main: tests take a database each with CreateDB.
func Shared(t testing.TB) *Server {
	t.Helper()
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if shared == nil && sharedErr == nil {
		shared, sharedErr = start(os.TempDir(), Options{})
	}
	if sharedErr != nil {
		if _, ok := sharedErr.(missingError); ok {
			skip(t, "%v", sharedErr)
		}
		t.Fatal(sharedErr)
	}
	return shared
}

// Main runs a package's tests and then stops the shared server; call it
// from TestMain.
func Main(m interface{ Run() int }) {
	code := m.Run()
	sharedMu.Lock()
	if shared != nil {
		shared.Stop()
	}
	sharedMu.Unlock()
	os.Exit(code)
}

// StartIn starts a server in a new directory under parent (os.TempDir()
// when empty) for programs other than tests, like the benchmark runner;
// the caller stops it with Stop. The directory must be reachable by the
// postgres user and short enough for a socket path.
func StartIn(parent string, opts Options) (*Server, error) {
	if parent == "" {
		parent = os.TempDir()
	}
	return start(parent, opts)
}

// NewDB is CreateDB without a test: it creates a fresh database and
// returns its URL.
func (s *Server) NewDB() (string, error) {
	name := fmt.Sprintf("t%d_%d", os.Getpid(), s.n.Add(1))
	if out, err := s.run("createdb", "-h", s.dir, "-U", "concordia", name); err != nil {
		return "", fmt.Errorf("testpg: createdb: %v: %s", err, out)
	}
	return s.URL(name), nil
}
