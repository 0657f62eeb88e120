package upload_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/klauspost/compress/zstd"
	bolt "go.etcd.io/bbolt"

	"github.com/bos55/concordia/internal/limits"
	"github.com/bos55/concordia/internal/nartest"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/upload"
)

func readLog(t *testing.T, s *upload.Store, drv string) string {
	t.Helper()
	r, comp, err := s.BuildLog(context.Background(), drv)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if comp != "" {
		t.Fatalf("BuildLog said %q: the Logger contract is plain or bz2", comp)
	}
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func logFiles(t *testing.T, dir string) []string {
	t.Helper()
	if sharedBackend {
		return sharedEnvOf(t, dir).Objects(t, "log/")
	}
	ents, err := os.ReadDir(filepath.Join(dir, "logs"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// TestLogsAreFiles: a log is a zstd file under logs/ (read back plain
// through BuildLog, as the file through OpenLogFile), not bytes in the
// index, which keeps only a record.
func TestLogsAreFiles(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := openStore(t, dir, upload.Options{})
	drv := hashPart("files-drv") + "-files.drv"
	text := strings.Repeat("checking for a unique marker qq7x... yes\n", 50_000) // 2 MB
	if err := s.PutLog(ctx, drv, strings.NewReader(text)); err != nil {
		t.Fatal(err)
	}
	if got := readLog(t, s, drv); got != text {
		t.Fatalf("log read back: %d bytes, want %d", len(got), len(text))
	}
	f, enc, size, err := s.OpenLogFile(ctx, drv)
	if err != nil || enc != "zstd" {
		t.Fatalf("OpenLogFile: %q %v", enc, err)
	}
	file, _ := io.ReadAll(f)
	f.Close()
	if int64(len(file)) != size || size > int64(len(text))/20 {
		t.Fatalf("file of %d bytes (said %d) for a %d-byte log", len(file), size, len(text))
	}
	dec, _ := zstd.NewReader(bytes.NewReader(file))
	plain, err := io.ReadAll(dec)
	if err != nil || string(plain) != text {
		t.Fatalf("the file does not decode to the log: %v", err)
	}
	if files := logFiles(t, dir); len(files) != 1 || files[0] != drv+".zst" {
		t.Fatalf("logs/ holds %v", files)
	}
	s.Close()
	idx, _ := os.ReadFile(filepath.Join(dir, "index.db"))
	if bytes.Contains(idx, []byte("unique marker qq7x")) {
		t.Fatal("the log's text is in the index")
	}
	s = openStore(t, dir, upload.Options{})
	if got := readLog(t, s, drv); got != text {
		t.Fatal("log lost across a reopen")
	}
}

// TestLogBombRefusedWhileStreaming: logs that inflate past
// limits.max_log_size (a few KB of zstd that decode to 64 MiB of zeros,
// and a plain stream that never ends) are refused once they pass it, with
// nothing stored: no file, no temp file, no record, the index small.
func TestLogBombRefusedWhileStreaming(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	l := limits.Default()
	l.MaxLogSize = 32 << 20
	s := openStore(t, dir, upload.Options{Limits: l})
	legit := hashPart("bomb-legit") + "-legit.drv"
	if err := s.PutLog(ctx, legit, strings.NewReader("a real build\n")); err != nil {
		t.Fatal(err)
	}
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBestCompression))
	bomb := enc.EncodeAll(make([]byte, 64<<20), nil)
	for i, body := range []io.Reader{
		bytes.NewReader(bomb), bytes.NewReader(bomb), // decoded by the server, as Content-Encoding
		nartest.Zeros(1 << 40),
	} {
		drv := hashPart("bomb-"+string(rune('a'+i))) + "-bomb.drv"
		r := body
		if i < 2 {
			d, _ := zstd.NewReader(body)
			r = d
		}
		err := s.PutLog(ctx, drv, r)
		var le *limits.Error
		if !errors.As(err, &le) || le.Key != limits.KeyLogSize || le.HTTPStatus() != 413 {
			t.Fatalf("bomb %d (%d bytes compressed): %v, want a refusal naming %s", i, len(bomb), err, limits.KeyLogSize)
		}
		if _, _, err := s.BuildLog(ctx, drv); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("bomb %d stored: %v", i, err)
		}
	}
	if files := logFiles(t, dir); len(files) != 1 {
		t.Fatalf("logs/ after the bombs: %v", files)
	}
	if got := readLog(t, s, legit); got != "a real build\n" {
		t.Fatalf("the legit log: %q", got)
	}
	// The embedded index only; the bytes written, not its length (bbolt
	// grows the file 16 MiB at a time, sparse).
	if fi, err := os.Stat(filepath.Join(dir, "index.db")); err == nil && fi.Sys().(*syscall.Stat_t).Blocks*512 > 1<<20 {
		t.Fatalf("index of %d bytes written", fi.Sys().(*syscall.Stat_t).Blocks*512)
	}
}

// TestLogsMovedOutOfTheIndex: logs an older version kept whole in the
// index are moved into files on Open, byte for byte, and the old bucket
// goes; a crash leftover (temp file, file without record, record without
// file) is cleaned up.
func TestLogsMovedOutOfTheIndex(t *testing.T) {
	diskOnly(t) // logs kept in the bbolt index by an old version
	ctx := context.Background()
	dir := t.TempDir()
	s := openStore(t, dir, upload.Options{})
	s.Close()
	old := map[string]string{
		hashPart("old-a") + "-a.drv": "old log a\n",
		hashPart("old-b") + "-b.drv": strings.Repeat("old log b\n", 100_000),
	}
	db, err := bolt.Open(filepath.Join(dir, "index.db"), 0o644, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte("logs"))
		if err != nil {
			return err
		}
		for k, v := range old {
			if err := b.Put([]byte(k), []byte(v)); err != nil {
				return err
			}
		}
		return nil
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "logs", "."+hashPart("x")+"-x.drv.zst.tmp-123"), []byte("half"), 0o644)
	stray := hashPart("stray") + "-stray.drv"
	os.WriteFile(filepath.Join(dir, "logs", stray+".zst"), []byte("no record"), 0o644)

	s = openStore(t, dir, upload.Options{})
	for drv, text := range old {
		if got := readLog(t, s, drv); got != text {
			t.Fatalf("migrated log %s: %d bytes, want %d", drv, len(got), len(text))
		}
	}
	if files := logFiles(t, dir); len(files) != 2 {
		t.Fatalf("logs/ after the move: %v (want the two logs, no temp or stray file)", files)
	}
	if _, _, err := s.BuildLog(ctx, stray); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a file without a record served: %v", err)
	}
	s.Close()
	db, err = bolt.Open(filepath.Join(dir, "index.db"), 0o644, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.View(func(tx *bolt.Tx) error {
		if tx.Bucket([]byte("logs")) != nil {
			t.Error("the old logs bucket is still there")
		}
		return nil
	})
	db.Close()
	// A record whose file went is dropped on Open, not served broken.
	var drv string
	for drv = range old {
		break
	}
	os.Remove(filepath.Join(dir, "logs", drv+".zst"))
	s = openStore(t, dir, upload.Options{})
	if _, _, err := s.BuildLog(ctx, drv); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("log whose file is gone: %v", err)
	}
}
