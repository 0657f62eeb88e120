package server_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/auth"
	"github.com/bos55/concordia/internal/server"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/upload"
)

// TestHelperServe is not a test: run by TestPutCrash as a separate
// process (this test binary re-executed), it serves an upload store until
// killed.
func TestHelperServe(t *testing.T) {
	dir := os.Getenv("CONCORDIA_HELPER_SERVE")
	if dir == "" {
		t.Skip("helper process only")
	}
	ctx := context.Background()
	up, err := upload.Open(ctx, filepath.Join(dir, "up"), upload.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	toks, err := auth.Load(filepath.Join(dir, "tokens"), nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	srv, err := server.New(server.Options{Stores: []store.Store{up}, Upload: &server.Uploads{Store: up, Tokens: toks}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.WriteFile(filepath.Join(dir, "addr.tmp"), []byte(ln.Addr().String()), 0o644)
	os.Rename(filepath.Join(dir, "addr.tmp"), filepath.Join(dir, "addr"))
	http.Serve(ln, srv)
	os.Exit(0)
}

// startHelper runs the server in a child process and returns its URL.
func startHelper(t *testing.T, dir string) (*exec.Cmd, string) {
	t.Helper()
	os.Remove(filepath.Join(dir, "addr"))
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperServe$")
	cmd.Env = append(os.Environ(), "CONCORDIA_HELPER_SERVE="+dir)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for i := 0; i < 500; i++ {
		if b, err := os.ReadFile(filepath.Join(dir, "addr")); err == nil {
			return cmd, "http://" + string(b)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("helper server did not start")
	return nil, ""
}

func tempFiles(t *testing.T, blobs string) []os.DirEntry {
	ents, _ := os.ReadDir(blobs)
	var out []os.DirEntry
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".tmp-") {
			out = append(out, e)
		}
	}
	return out
}

// TestPutCrash: the server is killed with SIGKILL in the middle of a NAR
// upload; after a restart nothing partial is served and a retry succeeds.
func TestPutCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	dir := t.TempDir()
	tok, line, _ := auth.Generate("ci", auth.Write)
	os.WriteFile(filepath.Join(dir, "tokens"), []byte(line+"\n"), 0o600)
	cmd, url := startHelper(t, dir)

	random := make([]byte, 4<<20)
	rand.Read(random)
	p := newUpPath(t, "crash-big", random)
	addr := strings.TrimPrefix(url, "http://")
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "PUT /nar/%s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n",
		p.fileName, addr, tok, len(p.file))
	half := len(p.file) / 2
	if _, err := conn.Write(p.file[:half]); err != nil {
		t.Fatal(err)
	}
	blobs := filepath.Join(dir, "up", "blobs")
	deadline := time.Now().Add(10 * time.Second)
	for {
		tmps := tempFiles(t, blobs)
		if len(tmps) == 1 {
			if fi, err := tmps[0].Info(); err == nil && fi.Size() > 0 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the upload never reached the disk")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	if len(tempFiles(t, blobs)) != 1 {
		t.Fatal("expected the partial temp file to survive the kill")
	}

	_, url = startHelper(t, dir)
	if n := len(tempFiles(t, blobs)); n != 0 {
		t.Fatalf("%d temp files after restart", n)
	}
	e := &upEnv{url: url, writeTok: tok}
	if code, _ := e.do(t, "HEAD", "/nar/"+p.fileName, "", nil); code != 404 {
		t.Fatalf("HEAD of the interrupted NAR after restart: %d", code)
	}
	if code, _ := e.do(t, "GET", "/"+p.hash+".narinfo", "", nil); code != 404 {
		t.Fatalf("narinfo after restart: %d", code)
	}
	e.upload(t, p)
	code, body := e.do(t, "GET", "/nar/"+p.fileName, "", nil)
	if code != 200 || body != string(p.file) {
		t.Fatalf("NAR after the retry: %d, %d bytes", code, len(body))
	}
}
