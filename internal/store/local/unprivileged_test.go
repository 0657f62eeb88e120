package local_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/local"
)

// Environment of the child process TestUnprivileged starts as nobody.
const (
	childDBEnv   = "CONCORDIA_LOCAL_CHILD_DB"
	childRealEnv = "CONCORDIA_LOCAL_CHILD_REAL"
)

// TestUnprivileged opens a Nix database laid out and owned as on a real
// machine (root, directory 0755, db.sqlite 0644) as the user nobody, and
// shows what SQLite needs: without db.sqlite-wal/-shm Open fails with
// ErrWALMissing; after Prepare (as root) it works, sees paths Nix registers
// afterwards, and keeps the WAL files alive after Nix closes the database.
func TestUnprivileged(t *testing.T) {
	needNix(t)
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("setpriv not installed")
	}
	n := newChrootStore(t)
	b := n.build(t, "a", "c")
	db := n.dbPath()
	wal, shm := db+"-wal", db+"-shm"
	for _, p := range []string{filepath.Dir(db), db} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %v", p, st.Mode())
		if st.Mode().Perm()&0o022 != 0 {
			t.Fatalf("%s is writable by others: the test would prove nothing", p)
		}
	}
	bin := copyTestBinary(t)
	start := func(t *testing.T) *child {
		return startChild(t, setpriv, bin, db, n.realDir())
	}

	t.Run("NoWAL", func(t *testing.T) {
		if exists(wal) || exists(shm) {
			t.Fatalf("Nix left %s behind; the machine's default state is without it", wal)
		}
		c := start(t)
		if got := c.line(t); !strings.HasPrefix(got, "open walmissing") {
			t.Fatalf("child Open: %q, want ErrWALMissing", got)
		}
		if exists(wal) || exists(shm) {
			t.Error("the unprivileged reader created WAL files")
		}
	})

	// Left behind by a crash: a -wal without its -shm.
	t.Run("HalfWAL", func(t *testing.T) {
		must(t, os.WriteFile(wal, nil, 0o644))
		defer os.Remove(wal)
		c := start(t)
		if got := c.line(t); !strings.HasPrefix(got, "open walmissing") {
			t.Fatalf("child Open: %q, want ErrWALMissing", got)
		}
	})

	t.Run("Prepared", func(t *testing.T) {
		if err := local.Prepare(context.Background(), db); err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{wal, shm} {
			st, err := os.Stat(p)
			if err != nil {
				t.Fatalf("after Prepare: %v", err)
			}
			t.Logf("%s: %v", p, st.Mode())
		}
		c := start(t)
		if got := c.line(t); got != "open ok" {
			t.Fatalf("child Open: %q", got)
		}
		if got := c.ask(t, "info "+hashPart(t, b.out["a"])); got != "ok "+b.out["a"] {
			t.Errorf("info: %q", got)
		}
		nar := n.dump(t, b.out["c"])
		sum := sha256.Sum256(nar)
		if got, want := c.ask(t, "nar "+hashPart(t, b.out["c"])), fmt.Sprintf("ok %x %d", sum, len(nar)); got != want {
			t.Errorf("nar: %q, want %q", got, want)
		}
		// Nix writes while the unprivileged reader is open, then closes
		// as its last connection: the reader must see the new path, and
		// its lock must keep Nix from deleting the WAL files.
		n.buildMore(t, b, "fresh")
		if got := c.ask(t, "info "+hashPart(t, b.out["fresh"])); got != "ok "+b.out["fresh"] {
			t.Errorf("info of a path built while open: %q", got)
		}
		if !exists(wal) || !exists(shm) {
			t.Error("Nix deleted the WAL files while the reader was open")
		}
		if got := c.ask(t, "info "+rand32(t)); got != "notfound" {
			t.Errorf("info of a missing path: %q", got)
		}
	})

	// The reader opens while a writer holds the database (then SQLite maps
	// the -shm read-only instead of rebuilding the index in memory) and
	// sees what that writer commits.
	t.Run("WriterOpen", func(t *testing.T) {
		w, err := sql.Open("sqlite3", db)
		must(t, err)
		defer w.Close()
		w.SetMaxOpenConns(1)
		var count int
		must(t, w.QueryRow(`SELECT count(*) FROM ValidPaths`).Scan(&count))
		c := start(t)
		if got := c.line(t); got != "open ok" {
			t.Fatalf("child Open: %q", got)
		}
		if got := c.ask(t, "info "+hashPart(t, b.out["c"])); got != "ok "+b.out["c"] {
			t.Errorf("info: %q", got)
		}
		fake := "/nix/store/" + rand32(t) + "-written-while-open"
		_, err = w.Exec(`INSERT INTO ValidPaths (path, hash, registrationTime, narSize) VALUES (?, ?, 1, 8)`,
			fake, "sha256:"+strings.Repeat("00", 32))
		must(t, err)
		if got := c.ask(t, "info "+hashPart(t, fake)); got != "ok "+fake {
			t.Errorf("info of a row committed while open: %q", got)
		}
	})
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// copyTestBinary puts this test binary where nobody can run it.
func copyTestBinary(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	bin := filepath.Join(worldReadableTempDir(t), "local.test")
	dst, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	return bin
}

type child struct {
	in  io.WriteCloser
	out *bufio.Scanner
}

func startChild(t *testing.T, setpriv, bin, db, real string) *child {
	t.Helper()
	cmd := exec.Command(setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--",
		bin, "-test.run=^TestChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), childDBEnv+"="+db, childRealEnv+"="+real)
	cmd.Dir = "/"
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		in.Close()
		if err := cmd.Wait(); err != nil {
			t.Errorf("child: %v", err)
		}
	})
	c := &child{in: in, out: bufio.NewScanner(out)}
	if got := c.line(t); got == "uid 0" || !strings.HasPrefix(got, "uid ") {
		t.Fatalf("child runs as %q, want nobody", got)
	}
	return c
}

func (c *child) line(t *testing.T) string {
	t.Helper()
	if !c.out.Scan() {
		t.Fatalf("child ended: %v", c.out.Err())
	}
	return c.out.Text()
}

func (c *child) ask(t *testing.T, q string) string {
	t.Helper()
	if _, err := fmt.Fprintln(c.in, q); err != nil {
		t.Fatal(err)
	}
	return c.line(t)
}

// TestChild is the unprivileged side of TestUnprivileged; it does nothing
// in a normal run. It opens the store, reports, then answers "info <hash>"
// and "nar <hash>" lines from stdin until EOF.
func TestChild(t *testing.T) {
	db := os.Getenv(childDBEnv)
	if db == "" {
		t.Skip("only run by TestUnprivileged")
	}
	fmt.Println("uid", os.Geteuid())
	ctx := context.Background()
	s, err := local.Open(ctx, local.Options{DBPath: db, RealStoreDir: os.Getenv(childRealEnv)})
	switch {
	case errors.Is(err, local.ErrWALMissing):
		fmt.Println("open walmissing", err)
		return
	case err != nil:
		fmt.Println("open error", err)
		return
	}
	defer s.Close()
	fmt.Println("open ok")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		op, h, _ := strings.Cut(in.Text(), " ")
		info, err := s.PathInfo(ctx, h)
		switch {
		case errors.Is(err, store.ErrNotFound):
			fmt.Println("notfound")
			continue
		case err != nil:
			fmt.Println("error", err)
			continue
		}
		switch op {
		case "info":
			fmt.Println("ok", info.StorePath)
		case "nar":
			sum := sha256.New()
			cw := &countWriter{w: sum}
			if err := s.NAR(ctx, info, cw); err != nil {
				fmt.Println("error", err)
				continue
			}
			fmt.Println("ok", hex.EncodeToString(sum.Sum(nil)), cw.n)
		}
	}
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
