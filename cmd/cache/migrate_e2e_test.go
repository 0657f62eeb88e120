package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/bos55/concordia/internal/migrate"
	"github.com/bos55/concordia/internal/nartest"
	"github.com/bos55/concordia/internal/store/upload"
	"github.com/bos55/concordia/pkg/narinfo"
)

// migrateFixture uploads a two-path closure, a build log and a pin into
// the disk store in dir and returns the paths' NARs by hash part.
func migrateFixture(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	ctx := context.Background()
	s, err := upload.Open(ctx, dir, upload.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	enc, _ := zstd.NewWriter(nil)
	nars := map[string][]byte{}
	var prev string
	for _, tag := range []string{"lib", "app"} {
		n := nartest.File([]byte(strings.Repeat(tag, 1000)))
		file := enc.EncodeAll(n, nil)
		fh, nh := sha256.Sum256(file), sha256.Sum256(n)
		hs := sha256.Sum256([]byte("e2e-migrate-" + tag))
		hp := nixbase32.EncodeToString(hs[:20])
		name, fhash := nixbase32.EncodeToString(fh[:])+".nar.zst", narinfo.SHA256(fh[:])
		ni := &narinfo.NarInfo{StorePath: "/nix/store/" + hp + "-" + tag, URL: "nar/" + name, Compression: "zstd",
			FileHash: &fhash, FileSize: uint64(len(file)), NarHash: narinfo.SHA256(nh[:]), NarSize: uint64(len(n))}
		if prev != "" {
			ni.References = []string{prev}
		}
		if _, err := s.PutNAR(ctx, name, bytes.NewReader(file)); err != nil {
			t.Fatal(err)
		}
		if err := s.PutNarInfo(ctx, hp, strings.NewReader(ni.String())); err != nil {
			t.Fatal(err)
		}
		prev, nars[hp] = filepath.Base(ni.StorePath), n
	}
	drv := nixbase32.EncodeToString(make([]byte, 20)) + "-app.drv"
	if err := s.PutLog(ctx, drv, strings.NewReader("built app\n")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PinAs(ctx, "/nix/store/"+prev, "host", "deployer"); err != nil {
		t.Fatal(err)
	}
	return nars
}

// runMigrateBinary runs the built `cache migrate args...`.
func runMigrateBinary(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	cmd := exec.Command(cacheBinary(t), append([]string{"migrate"}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), out.String(), errb.String()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, out.String(), errb.String()
}

// TestMigrateCommand: `cache migrate` copies a disk store named by one
// config into the one another names, byte for byte with its log and pin;
// run again it copies nothing; it refuses to copy a store into itself,
// and says to stop the server of a store another process holds.
func TestMigrateCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	a, b := t.TempDir(), t.TempDir()
	cfgA, _ := writeCacheConfig(t, a, "")
	cfgB, _ := writeCacheConfig(t, b, "")
	nars := migrateFixture(t, filepath.Join(a, "upload"))

	code, stdout, stderr := runMigrateBinary(t, "--from", cfgA, "--to", cfgB, "--json")
	var rep migrate.Report
	if code != 0 || json.Unmarshal([]byte(stdout), &rep) != nil || rep.Copied != 2 || rep.Logs != 1 || rep.Pins != 1 {
		t.Fatalf("migrate: exit %d, report %+v\n%s\n%s", code, rep, stdout, stderr)
	}
	ctx := context.Background()
	dst, err := upload.Open(ctx, filepath.Join(b, "upload"), upload.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for hp, want := range nars {
		info, err := dst.PathInfo(ctx, hp)
		var got bytes.Buffer
		if err != nil || dst.NAR(ctx, info, &got) != nil || !bytes.Equal(got.Bytes(), want) {
			t.Errorf("%s at the destination: %v", hp, err)
		}
	}
	if pins, _ := dst.Pins(ctx); len(pins) != 1 || pins[0].Owner != "deployer" {
		t.Errorf("pins at the destination: %+v", pins)
	}
	dst.Close()

	code, stdout, stderr = runMigrateBinary(t, "--from", cfgA, "--to-dir", filepath.Join(b, "upload"))
	if code != 0 || !strings.Contains(stdout, "copied 0 of 2 paths") || !strings.Contains(stdout, "2 already there") {
		t.Errorf("second migrate: exit %d\n%s\n%s", code, stdout, stderr)
	}
	code, _, stderr = runMigrateBinary(t, "--from", cfgA, "--to-dir", filepath.Join(a, "upload"))
	if code != 2 || !strings.Contains(stderr, "same upload store") {
		t.Errorf("migrate into itself: exit %d, %s", code, stderr)
	}

	held, err := upload.Open(ctx, filepath.Join(b, "upload"), upload.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	code, _, stderr = runMigrateBinary(t, "--from", cfgA, "--to", cfgB)
	if code != 1 || !strings.Contains(stderr, "stop the server") {
		t.Errorf("migrate into a store another process holds: exit %d, %s", code, stderr)
	}
}
