package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/bos55/concordia/internal/auth"
	"github.com/bos55/concordia/internal/cli"
	"github.com/bos55/concordia/internal/server"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/upload"
	"github.com/bos55/concordia/pkg/nar"
	"github.com/bos55/concordia/pkg/narinfo"
)

// seedUploads puts n independent one-file paths into a new upload store
// and returns the store dir, the store paths and their NAR file names.
func seedUploads(t *testing.T, n int) (string, []string, []string) {
	t.Helper()
	dir := t.TempDir()
	ctx := context.Background()
	// Files, which the tests damage: small NARs would be in the index.
	s, err := upload.Open(ctx, dir, upload.Options{InlineMax: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	enc, _ := zstd.NewWriter(nil)
	var paths, files []string
	for i := range n {
		contents := bytes.Repeat([]byte{byte('a' + i)}, 5000)
		var buf bytes.Buffer
		w := nar.NewWriter(&buf)
		w.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeRegular, Size: int64(len(contents))})
		w.Write(contents)
		w.Close()
		file := enc.EncodeAll(buf.Bytes(), nil)
		fh, nh := sha256.Sum256(file), sha256.Sum256(buf.Bytes())
		hs := sha256.Sum256([]byte{byte(i)})
		base := nixbase32.EncodeToString(hs[:20]) + "-cmd-" + string(rune('a'+i))
		name := nixbase32.EncodeToString(fh[:]) + ".nar.zst"
		fhash := narinfo.SHA256(fh[:])
		ni := &narinfo.NarInfo{StorePath: "/nix/store/" + base, URL: "nar/" + name, Compression: "zstd",
			FileHash: &fhash, FileSize: uint64(len(file)), NarHash: narinfo.SHA256(nh[:]), NarSize: uint64(buf.Len())}
		if _, err := s.PutNAR(ctx, name, bytes.NewReader(file)); err != nil {
			t.Fatal(err)
		}
		if err := s.PutNarInfo(ctx, base[:32], strings.NewReader(ni.String())); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, ni.StorePath)
		files = append(files, name)
	}
	return dir, paths, files
}

func runUploadCmd(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var out, errb bytes.Buffer
	cmds := []*cli.Command{newGCCommand(), newVerifyCommand(), newPinCommand(), newForgetCommand(), newTokenCommand()}
	code := cli.Main("cache", "test", cmds, args, &cli.Env{Stdout: &out, Stderr: &errb})
	return code, out.String() + errb.String()
}

func TestVerifyCommand(t *testing.T) {
	dir, paths, files := seedUploads(t, 3)
	if code, out := runUploadCmd(t, "verify", "--dir", dir); code != 0 || !strings.Contains(out, "checked 3 NAR files") {
		t.Fatalf("clean verify: %d %s", code, out)
	}
	f := filepath.Join(dir, "blobs", files[1])
	data, _ := os.ReadFile(f)
	data[len(data)-5] ^= 0x40
	os.WriteFile(f, data, 0o644)
	code, out := runUploadCmd(t, "verify", "--dir", dir)
	if code != 1 || !strings.Contains(out, "DAMAGED "+files[1]) || !strings.Contains(out, paths[1]) {
		t.Fatalf("verify of a flipped byte: %d %s", code, out)
	}
	if !strings.Contains(out, "verify: 100%") {
		t.Fatalf("no plain progress lines off a terminal: %s", out)
	}
	code, out = runUploadCmd(t, "verify", "--repair", "--dir", dir)
	if code != 1 || !strings.Contains(out, "dropped "+paths[1]) {
		t.Fatalf("repair: %d %s", code, out)
	}
	if q, _ := os.ReadDir(filepath.Join(dir, "quarantine")); len(q) != 1 {
		t.Fatalf("quarantine: %v", q)
	}
	if code, out := runUploadCmd(t, "verify", "--dir", dir); code != 0 || !strings.Contains(out, "checked 2 NAR files") {
		t.Fatalf("verify after repair: %d %s", code, out)
	}
}

func TestPinAndGCCommands(t *testing.T) {
	dir, paths, _ := seedUploads(t, 3)
	if code, out := runUploadCmd(t, "pin", paths[0], "--note", "host1", "--dir", dir); code != 0 {
		t.Fatalf("pin: %s", out)
	}
	if code, out := runUploadCmd(t, "pin", "--list", "--dir", dir); code != 0 || !strings.Contains(out, paths[0]) || !strings.Contains(out, "host1") {
		t.Fatalf("pin --list: %d %s", code, out)
	}
	code, out := runUploadCmd(t, "gc", "--dry-run", "--max-size", "1", "--dir", dir)
	if code != 0 || strings.Count(out, "would delete /nix/store/") != 2 || strings.Contains(out, "would delete "+paths[0]) {
		t.Fatalf("gc --dry-run: %d %s", code, out)
	}
	code, out = runUploadCmd(t, "gc", "--max-size", "1", "--dir", dir)
	if code != 0 || strings.Count(out, "deleted /nix/store/") != 2 {
		t.Fatalf("gc: %d %s", code, out)
	}
	if code, out := runUploadCmd(t, "pin", "--remove", paths[0], "--dir", dir); code != 0 {
		t.Fatalf("unpin: %s", out)
	}
	if code, out := runUploadCmd(t, "gc", "--max-size", "1", "--dir", dir); code != 0 || !strings.Contains(out, "deleted "+paths[0]) {
		t.Fatalf("gc after unpin: %d %s", code, out)
	}
	if code, _ := runUploadCmd(t, "pin", "/etc/passwd", "--dir", dir); code == 0 {
		t.Fatal("pinned a non-store path")
	}
}

// TestVerifyCommandRemote: cache verify --cache URL against a running
// server, token from $CONCORDIA_TOKEN.
func TestVerifyCommandRemote(t *testing.T) {
	dir, _, files := seedUploads(t, 2)
	up, err := upload.Open(context.Background(), dir, upload.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	tokPath := filepath.Join(t.TempDir(), "tokens")
	tok, line, _ := auth.Generate("ops", auth.Admin)
	os.WriteFile(tokPath, []byte(line+"\n"), 0o600)
	toks, _ := auth.Load(tokPath, nil)
	srv, err := server.New(server.Options{Stores: []store.Store{up}, Upload: &server.Uploads{Store: up, Tokens: toks}})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	t.Setenv("CONCORDIA_TOKEN", tok)
	if code, out := runUploadCmd(t, "verify", "--cache", hs.URL); code != 0 || !strings.Contains(out, "checked 2 NAR files") {
		t.Fatalf("remote verify: %d %s", code, out)
	}
	f := filepath.Join(dir, "blobs", files[0])
	data, _ := os.ReadFile(f)
	data[len(data)-3] ^= 1
	os.WriteFile(f, data, 0o644)
	if code, out := runUploadCmd(t, "verify", "--cache", hs.URL); code != 1 || !strings.Contains(out, "DAMAGED "+files[0]) {
		t.Fatalf("remote verify of damage: %d %s", code, out)
	}
}

// TestForgetCommand: cache forget on the store directly, and with --cache
// on a running server, where it needs an admin token (a write token gets
// 403 and changes nothing); a path with no tombstone is an error.
func TestForgetCommand(t *testing.T) {
	dir, paths, _ := seedUploads(t, 2)
	if code, out := runUploadCmd(t, "gc", "--max-size", "1", "--dir", dir); code != 0 || !strings.Contains(out, "2 NAR hashes remembered") {
		t.Fatalf("gc: %d %s", code, out)
	}
	if code, out := runUploadCmd(t, "forget", paths[0], "--dir", dir); code != 0 || !strings.Contains(out, "forgot "+paths[0]) {
		t.Fatalf("forget: %d %s", code, out)
	}
	if code, out := runUploadCmd(t, "forget", paths[0], "--dir", dir); code == 0 {
		t.Fatalf("forget twice: %d %s", code, out)
	}
	if code, _ := runUploadCmd(t, "forget", "/etc/passwd", "--dir", dir); code == 0 {
		t.Fatal("forgot a non-store path")
	}

	up, err := upload.Open(context.Background(), dir, upload.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	tokPath := filepath.Join(t.TempDir(), "tokens")
	admin, al, _ := auth.Generate("ops", auth.Admin)
	write, wl, _ := auth.Generate("ci", auth.Read|auth.Write)
	os.WriteFile(tokPath, []byte(al+"\n"+wl+"\n"), 0o600)
	toks, _ := auth.Load(tokPath, nil)
	srv, err := server.New(server.Options{Stores: []store.Store{up}, Upload: &server.Uploads{Store: up, Tokens: toks}})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	t.Setenv("CONCORDIA_TOKEN", write)
	if code, out := runUploadCmd(t, "forget", paths[1], "--cache", hs.URL); code == 0 || !strings.Contains(out, "403") {
		t.Fatalf("forget with a write token: %d %s", code, out)
	}
	if st, _ := up.Stats(context.Background()); st.Tombstones != 1 {
		t.Fatalf("the refused forget changed the store: %+v", st)
	}
	t.Setenv("CONCORDIA_TOKEN", admin)
	if code, out := runUploadCmd(t, "forget", paths[1], "--cache", hs.URL); code != 0 || !strings.Contains(out, "forgot "+paths[1]) {
		t.Fatalf("forget as admin: %d %s", code, out)
	}
	if st, _ := up.Stats(context.Background()); st.Tombstones != 0 {
		t.Fatalf("tombstones left: %+v", st)
	}
}
