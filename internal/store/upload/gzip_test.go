package upload_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/upload"
	"github.com/bos55/concordia/pkg/narinfo"
)

func gzipBytes(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// asBare makes p's file the compressed bytes file, named as Nix names a
// NAR in a compression its suffix table lacks: "<file hash>.nar", with
// the narinfo saying what it is in.
func asBare(p *fakePath, file []byte, comp string) {
	fh := sha256.Sum256(file)
	p.file = file
	p.fileName = nixbase32.EncodeToString(fh[:]) + ".nar"
	fileHash := narinfo.SHA256(fh[:])
	p.info.URL, p.info.Compression = "nar/"+p.fileName, comp
	p.info.FileHash, p.info.FileSize = &fileHash, uint64(len(file))
}

// TestBareNARInGzip: `nix copy --to ...?compression=gzip` PUTs
// nar/<filehash>.nar with gzip bytes and a narinfo saying Compression:
// gzip (seen with Nix 2.8). The store finds the compression in the bytes,
// keeps the blob as .nar.gz, and serves it under both names.
func TestBareNARInGzip(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir(), upload.Options{})
	p := newPath(t, "gz", bytes.Repeat([]byte("gzip me "), 500))
	asBare(p, gzipBytes(t, p.nar), "gzip")
	info, err := s.PutNAR(ctx, p.fileName, bytes.NewReader(p.file))
	if err != nil {
		t.Fatal(err)
	}
	if info.Compression != "gzip" || info.Name != strings.TrimSuffix(p.fileName, ".nar")+".nar.gz" {
		t.Fatalf("stored as %s in %q, want .nar.gz in gzip", info.Name, info.Compression)
	}
	if ok, err := s.HasNAR(ctx, p.fileName); !ok || err != nil {
		t.Fatalf("HasNAR(%s) = %v, %v after its upload", p.fileName, ok, err)
	}
	if err := s.PutNarInfo(ctx, p.hash, strings.NewReader(p.narinfo())); err != nil {
		t.Fatal(err)
	}
	ni, err := s.NarInfo(ctx, p.hash)
	if err != nil {
		t.Fatal(err)
	}
	if ni.Compression != "gzip" || ni.URL != "nar/"+info.Name {
		t.Fatalf("served URL %s, Compression %s; want nar/%s, gzip", ni.URL, ni.Compression, info.Name)
	}
	// The uploader's own narinfo (it caches what it sent) names the bare
	// .nar; the store's names .nar.gz: both are the gzip file.
	for _, name := range []string{p.fileName, info.Name} {
		f, size, err := s.OpenBlob(ctx, name)
		if err != nil {
			t.Fatalf("OpenBlob(%s): %v", name, err)
		}
		got, _ := io.ReadAll(f)
		f.Close()
		if !bytes.Equal(got, p.file) || size != int64(len(p.file)) {
			t.Fatalf("OpenBlob(%s) = %d bytes (size %d), want the %d uploaded", name, len(got), size, len(p.file))
		}
	}
	if got, err := narOf(t, s, p.hash); err != nil || !bytes.Equal(got, p.nar) {
		t.Fatalf("NAR of the gzip path: %v", err)
	}
	// A second upload of the same bytes is the same blob.
	again, err := s.PutNAR(ctx, p.fileName, bytes.NewReader(p.file))
	if err != nil || !again.Existed || again.Name != info.Name {
		t.Fatalf("second upload: %+v, %v", again, err)
	}
}

// TestBareNARSniffed: a bare .nar is stored in whatever compression its
// bytes are in, and a narinfo naming another is refused, naming both.
func TestBareNARSniffed(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		comp, ext string
		file      func(t testing.TB, nar []byte) []byte
	}{
		{"none", ".nar", func(_ testing.TB, nar []byte) []byte { return nar }},
		{"gzip", ".nar.gz", gzipBytes},
		{"zstd", ".nar.zst", zstdBytes},
	} {
		t.Run(tc.comp, func(t *testing.T) {
			s := openStore(t, t.TempDir(), upload.Options{})
			p := newPath(t, "sniff-"+tc.comp, []byte("contents of "+tc.comp))
			asBare(p, tc.file(t, p.nar), tc.comp)
			info, err := s.PutNAR(ctx, p.fileName, bytes.NewReader(p.file))
			if err != nil {
				t.Fatal(err)
			}
			if info.Compression != tc.comp || !strings.HasSuffix(info.Name, tc.ext) {
				t.Fatalf("stored as %s (%s), want %s", info.Name, info.Compression, tc.ext)
			}
			wrong := "gzip"
			if tc.comp == "gzip" {
				wrong = "none"
			}
			bad := *p.info
			bad.Compression = wrong
			err = s.PutNarInfo(ctx, p.hash, strings.NewReader(bad.String()))
			if !errors.Is(err, store.ErrInvalid) || !strings.Contains(err.Error(), `Compression "`+wrong+`" does not match the uploaded NAR file`) ||
				!strings.Contains(err.Error(), "which is in "+tc.comp) {
				t.Fatalf("narinfo saying %s for a %s file: %v", wrong, tc.comp, err)
			}
			if err := s.PutNarInfo(ctx, p.hash, strings.NewReader(p.narinfo())); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestBareNARRefused: a bare .nar in a compression the store cannot decode
// is refused saying which, and so is a narinfo naming one for a bare .nar.
func TestBareNARRefused(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir(), upload.Options{})
	for comp, head := range map[string][]byte{
		"lz4":  {0x04, 0x22, 0x4d, 0x18, 0x64, 0x40, 0xa7},
		"lzip": []byte("LZIP\x01\x0c\x00"),
	} {
		file := append(head, bytes.Repeat([]byte{0}, 100)...)
		fh := sha256.Sum256(file)
		name := nixbase32.EncodeToString(fh[:]) + ".nar"
		_, err := s.PutNAR(ctx, name, bytes.NewReader(file))
		if !errors.Is(err, store.ErrInvalid) || !strings.Contains(err.Error(), "is "+comp+"-compressed, which this cache does not take") {
			t.Errorf("%s upload as a bare .nar: %v", comp, err)
		}
		if ok, _ := s.HasNAR(ctx, name); ok {
			t.Errorf("the refused %s upload is kept", comp)
		}
	}
	p := newPath(t, "lz4-narinfo", []byte("x"))
	asBare(p, p.nar, "lz4")
	if _, err := s.PutNAR(ctx, p.fileName, bytes.NewReader(p.file)); err != nil {
		t.Fatal(err)
	}
	err := s.PutNarInfo(ctx, p.hash, strings.NewReader(p.narinfo()))
	if !errors.Is(err, store.ErrInvalid) || !strings.Contains(err.Error(), `Compression "lz4" of the NAR file`) {
		t.Fatalf("narinfo saying lz4 for a bare .nar: %v", err)
	}
}
