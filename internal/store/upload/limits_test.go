package upload_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os/exec"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/bos55/concordia/internal/limits"
	"github.com/bos55/concordia/internal/nartest"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/upload"
	"github.com/bos55/concordia/pkg/nar"
	"github.com/bos55/concordia/pkg/narinfo"
)

// compressedPath is a fake path whose uploaded file is file, of the given
// compression, and whose NAR is narBytes.
func compressedPath(name string, narBytes, file []byte, comp, ext string) *fakePath {
	p := &fakePath{hash: hashPart(name), nar: narBytes, file: file}
	p.base = p.hash + "-" + name
	fh, nh := sha256.Sum256(file), sha256.Sum256(narBytes)
	p.fileName = nixbase32.EncodeToString(fh[:]) + ext
	fileHash := narinfo.SHA256(fh[:])
	p.info = &narinfo.NarInfo{
		StorePath: "/nix/store/" + p.base, URL: "nar/" + p.fileName, Compression: comp,
		FileHash: &fileHash, FileSize: uint64(len(file)), NarHash: narinfo.SHA256(nh[:]), NarSize: uint64(len(narBytes)),
	}
	return p
}

func readAllStream(t testing.TB, r io.ReadCloser) []byte {
	t.Helper()
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func zstdStream(t testing.TB, r io.Reader) []byte {
	t.Helper()
	var b bytes.Buffer
	enc, _ := zstd.NewWriter(&b, zstd.WithEncoderConcurrency(1))
	if _, err := io.Copy(enc, r); err != nil {
		t.Fatal(err)
	}
	enc.Close()
	return b.Bytes()
}

func statusOf(err error) int {
	var se interface{ HTTPStatus() int }
	if errors.As(err, &se) {
		return se.HTTPStatus()
	}
	return 0
}

// TestPutNARRefusesOverLimits: every bound refuses its hostile upload
// while it streams, with the status and the config key in the error, and
// nothing is stored.
func TestPutNARRefusesOverLimits(t *testing.T) {
	small := nartest.File([]byte("hello"))
	deep := readAllStream(t, nartest.Deep(300, 10))
	wide := readAllStream(t, nartest.Wide(2000))
	var longName bytes.Buffer
	w := nar.NewWriter(&longName)
	w.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeDirectory})
	w.WriteHeader(&nar.Header{Path: "/" + strings.Repeat("x", 100), Type: nar.TypeSymlink, LinkTarget: strings.Repeat("t", 300)})
	w.Close()
	type tc struct {
		name   string
		p      *fakePath
		l      func(*limits.Limits)
		key    string
		status int
	}
	cases := []tc{
		{"xz dictionary", compressedPath("xz-bomb", small, nartest.XZDictBomb(small, 40), "xz", ".nar.xz"), nil, limits.KeyXZDict, 413},
		{"zstd window", compressedPath("zstd-bomb", small, nartest.ZstdWindowBomb(31, small), "zstd", ".nar.zst"), nil, limits.KeyZstdWindow, 413},
		{"depth", compressedPath("deep", deep, zstdBytes(t, deep), "zstd", ".nar.zst"), nil, limits.KeyDepth, 400},
		{"entries", compressedPath("wide", wide, zstdBytes(t, wide), "zstd", ".nar.zst"), func(l *limits.Limits) { l.MaxEntries = 1000 }, limits.KeyEntries, 400},
		{"name", compressedPath("name", longName.Bytes(), zstdBytes(t, longName.Bytes()), "zstd", ".nar.zst"), func(l *limits.Limits) { l.MaxNameLen = 99 }, limits.KeyNameLen, 400},
		{"target", compressedPath("target", longName.Bytes(), zstdBytes(t, longName.Bytes()), "zstd", ".nar.zst"), func(l *limits.Limits) { l.MaxTargetLen = 299 }, limits.KeyTargetLen, 400},
		{"size", compressedPath("size", makeNAR(t, make([]byte, 3<<20)), zstdBytes(t, makeNAR(t, make([]byte, 3<<20))), "zstd", ".nar.zst"), func(l *limits.Limits) { l.MaxNARSize = 2 << 20 }, limits.KeyNARSize, 413},
	}
	if _, err := exec.LookPath("lzip"); err == nil {
		cmd := exec.Command("lzip", "-0", "-c")
		cmd.Stdin = bytes.NewReader(small)
		lz, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		lz[5] = 29 // the header claims a 512 MiB dictionary
		cases = append(cases, tc{"lzip dictionary", compressedPath("lzip-bomb", small, lz, "lzip", ".nar.lzip"), nil, limits.KeyXZDict, 413})
	}
	if _, err := exec.LookPath("bzip2"); err == nil {
		zeros := makeNAR(t, make([]byte, 100<<20))
		cmd := exec.Command("bzip2", "-9", "-c")
		cmd.Stdin = bytes.NewReader(zeros)
		bz, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		cases = append(cases, tc{"ratio", compressedPath("bz-bomb", zeros, bz, "bzip2", ".nar.bz2"), nil, limits.KeyRatio, 413})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			l := limits.Default()
			if c.l != nil {
				c.l(&l)
			}
			s := openStore(t, dir, upload.Options{Limits: l})
			_, err := s.PutNAR(context.Background(), c.p.fileName, bytes.NewReader(c.p.file))
			t.Logf("%d bytes: %v", len(c.p.file), err)
			if !errors.Is(err, store.ErrInvalid) || statusOf(err) != c.status || !strings.Contains(err.Error(), c.key) {
				t.Fatalf("err = %v (status %d), want %d naming %s", err, statusOf(err), c.status, c.key)
			}
			if files := blobFiles(t, dir); len(files) != 0 {
				t.Errorf("left behind: %v", files)
			}
			if ok, _ := s.HasNAR(context.Background(), c.p.fileName); ok {
				t.Error("the refused NAR is pending")
			}
		})
	}
}

// TestStoredOverLimitsNotDecoded: a blob stored under looser limits (or by
// an older version) is kept and listed, but read paths refuse to decode
// it with an error that is neither ErrNotFound nor the client's fault.
func TestStoredOverLimitsNotDecoded(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	loose := limits.Default()
	loose.XZDictMax = 256 << 20
	loose.MaxNARSize = 1 << 30
	s := openStore(t, dir, upload.Options{Limits: loose, InlineMax: -1})
	payload := nartest.File([]byte("stored before the limits were lowered"))
	bomb := compressedPath("stored-bomb", payload, nartest.XZDictBomb(payload, 30), "xz", ".nar.xz") // 128 MiB dictionary
	big := newPath(t, "stored-big", make([]byte, 3<<20))
	for _, p := range []*fakePath{bomb, big} {
		if err := p.upload(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()

	strict := limits.Default()
	strict.MaxNARSize = 2 << 20
	s = openStore(t, dir, upload.Options{Limits: strict, InlineMax: -1})
	for _, tc := range []struct {
		p   *fakePath
		key string
	}{{bomb, limits.KeyXZDict}, {big, limits.KeyNARSize}} {
		_, err := narOf(t, s, tc.p.hash)
		t.Logf("%s: %v", tc.p.base, err)
		if err == nil || errors.Is(err, store.ErrNotFound) || statusOf(err) != 500 || !strings.Contains(err.Error(), tc.key) {
			t.Errorf("%s: err = %v (status %d), want a 500 naming %s", tc.p.base, err, statusOf(err), tc.key)
		}
		if _, err := s.PathInfo(ctx, tc.p.hash); err != nil {
			t.Errorf("%s is gone: %v", tc.p.base, err)
		}
	}
	if n := len(blobFiles(t, dir)); n != 2 {
		t.Errorf("%d blob files, want both kept", n)
	}
	rep, err := s.Verify(ctx, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Bad) != 2 {
		t.Errorf("verify: %+v, want both reported", rep.Bad)
	}
	for _, b := range rep.Bad {
		if !strings.Contains(b.Reason, "limits.") {
			t.Errorf("verify reason %q does not name the limit", b.Reason)
		}
	}
}
