package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestReplicaStartErrors: a shared backend that cannot be used stops
// `cache serve` at start with an error naming what to fix.
func TestReplicaStartErrors(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	r := newReplicas(t)
	for _, tc := range []struct{ name, from, to, want string }{
		{"wrong secret key", fmt.Sprintf("%q", filepath.Join(r.dir, "s3-secret")), fmt.Sprintf("%q", filepath.Join(r.dir, "wrong-secret")), "wrong secret key"},
		{"missing bucket", fmt.Sprintf("bucket = %q", r.env.Bucket), `bucket = "no-such-bucket"`, `bucket "no-such-bucket" does not exist`},
		{"unreachable database", "host=" + r.env.PG.SocketDir(), "host=" + t.TempDir(), "database"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			os.WriteFile(filepath.Join(r.dir, "wrong-secret"), []byte("not-the-secret\n"), 0o600)
			cfgText := strings.Replace(r.cfg, tc.from, tc.to, 1)
			if cfgText == r.cfg {
				t.Fatalf("%q not in the config", tc.from)
			}
			state := t.TempDir()
			cfg := filepath.Join(state, "cache.toml")
			os.WriteFile(cfg, []byte(fmt.Sprintf("bind = \"127.0.0.1:0\"\nstate_dir = %q\nnix_db_path = \"\"\n", state)+cfgText), 0o600)
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			out, err := exec.CommandContext(ctx, cacheBinary(t), "serve", "--config", cfg).CombinedOutput()
			if err == nil || ctx.Err() != nil {
				t.Fatalf("serve did not fail at start (%v):\n%s", err, out)
			}
			if !strings.Contains(string(out), tc.want) || strings.Contains(string(out), r.env.MinIO.SecretKey) {
				t.Fatalf("serve's error does not name %q (or shows the secret):\n%s", tc.want, out)
			}
		})
	}
}

// TestReplicaKilledMidUpload: one replica is SIGKILLed with half a NAR
// received; the other keeps serving, the leftover is swept once past the
// pending grace period, and the retry through the survivor completes.
func TestReplicaKilledMidUpload(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	r := newReplicas(t)
	r.cfg = strings.Replace(r.cfg, "[upload]\n", "[upload]\npending_max_age = \"2s\"\n", 1)
	a, b := r.start(t, "a"), r.start(t, "b")

	// Several 5 MiB parts: a multipart upload in flight.
	up := newRandomUpload(12<<20, "replica-killed")
	file, name, base, ni := up.file, up.name, up.base, up.ni

	addr := strings.TrimPrefix(strings.TrimSuffix(a.url, "/"), "http://")
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "PUT /nar/%s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n", name, addr, r.tok, len(file))
	conn.Write(file[:len(file)*2/3])
	for deadline := time.Now().Add(30 * time.Second); ; {
		if len(r.env.Objects(t, "nar/")) > 0 {
			break // parts are in the bucket
		}
		if time.Now().After(deadline) {
			t.Fatal("no part of the upload reached the bucket")
		}
		time.Sleep(20 * time.Millisecond)
	}
	a.cmd.Process.Signal(syscall.SIGKILL)
	<-a.exited

	bURL := strings.TrimSuffix(b.url, "/")
	if code, _ := r.do(t, "GET", bURL+"/nix-cache-info"); code != 200 {
		t.Fatalf("the other replica: %d", code)
	}
	if code, _ := r.do(t, "HEAD", bURL+"/nar/"+name); code != 404 {
		t.Fatalf("HEAD of the interrupted NAR through the survivor: %d", code)
	}
	time.Sleep(3 * time.Second) // past pending_max_age
	if code, body := r.do(t, "POST", bURL+"/api/gc"); code != 200 {
		t.Fatalf("GC (which sweeps): %d %s", code, body)
	}
	if left := r.env.Objects(t, "nar/"); len(left) != 0 {
		t.Fatalf("left in the bucket after the sweep: %v", left)
	}
	put := func(path string, body []byte) {
		t.Helper()
		req := fmt.Sprintf("%s%s", bURL, path)
		code, msg := r.doBody(t, "PUT", req, body)
		if code != 200 {
			t.Fatalf("PUT %s: %d %s", path, code, msg)
		}
	}
	put("/nar/"+name, file)
	put("/"+base[:32]+".narinfo", []byte(ni.String()))
	if code, got := r.doBody(t, "GET", bURL+"/nar/"+name, nil); code != 200 || got != string(file) {
		t.Fatalf("NAR after the retry: %d", code)
	}
}
