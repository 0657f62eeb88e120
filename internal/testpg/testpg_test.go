package testpg_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/bos55/concordia/internal/testpg"
)

func TestMain(m *testing.M) { testpg.Main(m) }

// TestStartRestart checks the server listens only on its socket, serves
// fresh databases, and comes back after Restart.
func TestStartRestart(t *testing.T) {
	s := testpg.Start(t, testpg.Options{})
	sock := filepath.Join(s.SocketDir(), ".s.PGSQL.5432")
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("no unix socket: %v", err)
	}
	a, b := s.CreateDB(t), s.CreateDB(t)
	if a == b {
		t.Fatalf("CreateDB returned %s twice", a)
	}
	s.Restart(t)
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("no unix socket after restart: %v", err)
	}
	s.CreateDB(t)
}

func TestShared(t *testing.T) {
	if testpg.Shared(t) != testpg.Shared(t) {
		t.Fatal("Shared started two servers")
	}
}
