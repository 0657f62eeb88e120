package nixreplay

import (
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"compress/zlib"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// ErrCodec is returned when a compression method cannot be applied here:
// an unknown name, or a Debian tool (brotli, lz4, lzip, bzip2) that is not
// installed. Tests that need such a method should t.Skip on it.
var ErrCodec = errors.New("nixreplay: compression method unavailable")

// tools are the external programs used where Go has no encoder in go.mod
// (bzip2, brotli, lz4, lzip): the same reference implementations Nix links
// through libarchive and libbrotli, so their output is what Nix would
// produce byte-for-byte-ish and certainly what Nix decodes.
var tools = map[string]string{"bzip2": "bzip2", "br": "brotli", "lz4": "lz4", "lzip": "lzip"}

// Available reports whether method can be both encoded and decoded here.
func Available(method string) bool {
	switch method {
	case "", "none", "identity", "zstd", "xz", "gzip", "deflate":
		return true
	}
	t, ok := tools[method]
	if !ok {
		return false
	}
	_, err := exec.LookPath(t)
	return err == nil
}

// Compress encodes b with a Nix compression method name ("none", "xz",
// "bzip2", "zstd", "gzip", "br", "lz4", "lzip") or an HTTP content coding
// ("identity", "deflate").
func Compress(ctx context.Context, method string, b []byte) ([]byte, error) {
	var out bytes.Buffer
	switch method {
	case "", "none", "identity":
		return append([]byte(nil), b...), nil
	case "zstd":
		w, err := zstd.NewWriter(&out)
		if err != nil {
			return nil, err
		}
		w.Write(b)
		if err := w.Close(); err != nil {
			return nil, err
		}
		return out.Bytes(), nil
	case "xz":
		w, err := xz.NewWriter(&out)
		if err != nil {
			return nil, err
		}
		w.Write(b)
		if err := w.Close(); err != nil {
			return nil, err
		}
		return out.Bytes(), nil
	case "gzip":
		w := gzip.NewWriter(&out)
		w.Write(b)
		if err := w.Close(); err != nil {
			return nil, err
		}
		return out.Bytes(), nil
	case "deflate": // HTTP "deflate" is zlib (RFC 9110 8.4.1.2)
		w := zlib.NewWriter(&out)
		w.Write(b)
		if err := w.Close(); err != nil {
			return nil, err
		}
		return out.Bytes(), nil
	}
	return runTool(ctx, method, b, "-c")
}

// Decompress decodes b, compressed with method.
func Decompress(ctx context.Context, method string, b []byte) ([]byte, error) {
	var r io.Reader
	switch method {
	case "", "none", "identity":
		return append([]byte(nil), b...), nil
	case "zstd":
		d, err := zstd.NewReader(bytes.NewReader(b))
		if err != nil {
			return nil, err
		}
		defer d.Close()
		r = d
	case "xz":
		x, err := xz.NewReader(bytes.NewReader(b))
		if err != nil {
			return nil, err
		}
		r = x
	case "gzip":
		g, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			return nil, err
		}
		r = g
	case "deflate":
		z, err := zlib.NewReader(bytes.NewReader(b))
		if err != nil {
			return nil, err
		}
		r = z
	case "bzip2":
		r = bzip2.NewReader(bytes.NewReader(b))
	default:
		return runTool(ctx, method, b, "-d", "-c")
	}
	out, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("decompress %s: %w", method, err)
	}
	return out, nil
}

func runTool(ctx context.Context, method string, in []byte, args ...string) ([]byte, error) {
	t, ok := tools[method]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrCodec, method)
	}
	if _, err := exec.LookPath(t); err != nil {
		return nil, fmt.Errorf("%w: %s needs %s: %v", ErrCodec, method, t, err)
	}
	cmd := exec.CommandContext(ctx, t, args...)
	cmd.Stdin = bytes.NewReader(in)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%s %v: %v: %s", t, args, err, errb.String())
	}
	return out.Bytes(), nil
}

// Sniff names the compression of b by its magic bytes, as libarchive's
// archive_read_support_filter_all does for Nix 2.8-2.21 (compression.cc,
// ArchiveDecompressionSource), or "" when no filter recognises it. Brotli
// has no magic number and libarchive no brotli reader: Nix only decodes it
// when the method is named "br".
func Sniff(b []byte) string {
	switch {
	case bytes.HasPrefix(b, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		return "xz"
	case bytes.HasPrefix(b, []byte("BZh")):
		return "bzip2"
	case bytes.HasPrefix(b, []byte{0x1f, 0x8b}):
		return "gzip"
	case bytes.HasPrefix(b, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return "zstd"
	case bytes.HasPrefix(b, []byte{0x04, 0x22, 0x4d, 0x18}):
		return "lz4"
	case bytes.HasPrefix(b, []byte("LZIP")):
		return "lzip"
	}
	return ""
}
