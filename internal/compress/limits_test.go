package compress_test

import (
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"os/exec"
	"runtime"
	"testing"

	"github.com/ulikunitz/xz"

	"github.com/bos55/concordia/internal/compress"
	"github.com/bos55/concordia/internal/nartest"
)

func totalAlloc(f func()) uint64 {
	var a, b runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&a)
	f()
	runtime.ReadMemStats(&b)
	return b.TotalAlloc - a.TotalAlloc
}

func decodeAll(r io.Reader, codec string, l compress.DecodeLimits) (int64, error) {
	d, err := compress.NewReaderLimits(r, codec, l)
	if err != nil {
		return 0, err
	}
	defer d.Close()
	return io.Copy(io.Discard, d)
}

func wantLimit(t *testing.T, err error, limit string) *compress.LimitError {
	t.Helper()
	var le *compress.LimitError
	if !errors.As(err, &le) || le.Limit != limit {
		t.Fatalf("err = %v, want a %q LimitError", err, limit)
	}
	return le
}

// TestXZDictionaryBomb: the 136-byte stream is refused at its block
// header, without allocating the dictionary.
func TestXZDictionaryBomb(t *testing.T) {
	bomb := nartest.XZDictBomb(testData(77, 1), 40)
	var err error
	a := totalAlloc(func() { _, err = decodeAll(bytes.NewReader(bomb), "xz", compress.DecodeLimits{}) })
	le := wantLimit(t, err, compress.LimitXZDict)
	t.Logf("%d-byte bomb: %v; %d bytes allocated", len(bomb), err, a)
	if le.Got != 1<<32-1 || le.Max != compress.DefaultXZDict {
		t.Errorf("LimitError %+v", le)
	}
	if a > 1<<20 {
		t.Errorf("refusing the bomb allocated %d bytes", a)
	}
	// A cap above 4 GiB lets it through (and it is otherwise valid).
	if n, err := decodeAll(bytes.NewReader(bomb), "xz", compress.DecodeLimits{XZDict: 1 << 33, SizeHint: 64}); err != nil || n == 0 {
		t.Fatalf("with the cap raised: %d, %v", n, err)
	}
}

// TestXZDictionaryFitsTheData: a dictionary is never larger than the data
// it can refer to, when the block header or the caller says how large.
func TestXZDictionaryFitsTheData(t *testing.T) {
	if _, err := exec.LookPath("xz"); err != nil {
		t.Skip("xz not installed")
	}
	data := testData(100<<10, 3)
	for _, tc := range []struct {
		name string
		args []string
		hint int64
	}{
		{"hint", []string{"-9", "-c"}, int64(len(data))},
		{"block header sizes", []string{"-9", "-T2", "-c"}, 0}, // multi-threaded xz writes them
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command("xz", tc.args...)
			cmd.Stdin = bytes.NewReader(data)
			z, err := cmd.Output()
			if err != nil {
				t.Fatal(err)
			}
			var n int64
			a := totalAlloc(func() { n, err = decodeAll(bytes.NewReader(z), "xz", compress.DecodeLimits{SizeHint: tc.hint}) })
			if err != nil || n != int64(len(data)) {
				t.Fatalf("decoded %d, %v", n, err)
			}
			t.Logf("xz %v of %d bytes: %d bytes allocated", tc.args, len(data), a)
			if a > 4<<20 {
				t.Errorf("decoding allocated %d bytes for %d bytes of data (xz -9's dictionary is 64 MiB)", a, len(data))
			}
		})
	}
}

// TestXZContainerInterop decodes what xz writes in every shape the format
// allows (presets, checks, multi-block, concatenated and padded streams,
// empty input) byte for byte, and refuses every single-byte corruption of
// a small stream or decodes it to the original (never panics).
func TestXZContainerInterop(t *testing.T) {
	if _, err := exec.LookPath("xz"); err != nil {
		t.Skip("xz not installed")
	}
	xzOf := func(data []byte, args ...string) []byte {
		cmd := exec.Command("xz", append(args, "-c")...)
		cmd.Stdin = bytes.NewReader(data)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("xz %v: %v", args, err)
		}
		return out
	}
	data := testData(1<<20, 11)
	small := testData(2000, 12)
	cases := map[string]struct{ in, want []byte }{
		"-0":           {xzOf(data, "-0"), data},
		"-6e":          {xzOf(data, "-6e"), data},
		"crc32":        {xzOf(data, "-1", "--check=crc32"), data},
		"crc64":        {xzOf(data, "-1", "--check=crc64"), data},
		"sha256":       {xzOf(data, "-1", "--check=sha256"), data},
		"none":         {xzOf(data, "-1", "--check=none"), data},
		"blocks":       {xzOf(data, "-1", "--block-size=300000"), data},
		"threads":      {xzOf(data, "-1", "-T2", "--block-size=400000"), data},
		"empty":        {xzOf(nil), nil},
		"concatenated": {append(xzOf(small), xzOf(data[:1000])...), append(bytes.Clone(small), data[:1000]...)},
		"padded":       {append(append(xzOf(small), 0, 0, 0, 0, 0, 0, 0, 0), xzOf(small)...), append(bytes.Clone(small), small...)},
	}
	var ul bytes.Buffer
	uw, _ := xz.NewWriter(&ul)
	uw.Write(data)
	uw.Close()
	cases["ulikunitz writer"] = struct{ in, want []byte }{ul.Bytes(), data}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			d, err := compress.NewReader(bytes.NewReader(tc.in), "xz")
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(d)
			if err != nil || !bytes.Equal(got, tc.want) {
				t.Fatalf("decoded %d bytes (want %d), %v", len(got), len(tc.want), err)
			}
		})
	}
	for _, bad := range [][]byte{append(xzOf(small), 0, 0), append(xzOf(small), 'x', 0, 0, 0), xzOf(small)[:100]} {
		if _, err := io.ReadAll(mustXZ(t, bad)); err == nil {
			t.Errorf("%d bytes of damaged input decoded without error", len(bad))
		}
	}
	z := xzOf(small, "-0")
	for i := range z {
		for _, flip := range []byte{0x01} {
			c := bytes.Clone(z)
			c[i] ^= flip
			d, err := compress.NewReader(bytes.NewReader(c), "xz")
			if err != nil {
				continue
			}
			got, err := io.ReadAll(d)
			if err == nil && !bytes.Equal(got, small) {
				t.Fatalf("byte %d flipped: decoded other bytes without error", i)
			}
		}
	}
}

func mustXZ(t *testing.T, b []byte) io.Reader {
	d, err := compress.NewReader(bytes.NewReader(b), "xz")
	if err != nil {
		return errReader{err}
	}
	return d
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

func TestZstdWindowBomb(t *testing.T) {
	// Sanity: with a small window the same frame decodes.
	if n, err := decodeAll(bytes.NewReader(nartest.ZstdWindowBomb(0, []byte("hello"))), "zstd", compress.DecodeLimits{}); err != nil || n != 5 {
		t.Fatalf("1 KiB window: %d, %v", n, err)
	}
	for _, exp := range []byte{18, 31} { // 256 MiB, 2 TiB
		var err error
		a := totalAlloc(func() {
			_, err = decodeAll(bytes.NewReader(nartest.ZstdWindowBomb(exp, []byte("hello"))), "zstd", compress.DecodeLimits{})
		})
		wantLimit(t, err, compress.LimitZstdWindow)
		t.Logf("window 2^%d: %v; %d bytes allocated", 10+int(exp), err, a)
		if a > 16<<20 {
			t.Errorf("refusing a 2^%d window allocated %d bytes", 10+int(exp), a)
		}
	}
	// The bound is the configured one.
	_, err := decodeAll(bytes.NewReader(nartest.ZstdWindowBomb(12, []byte("hello"))), "zstd", compress.DecodeLimits{ZstdWindow: 1 << 20})
	wantLimit(t, err, compress.LimitZstdWindow)
}

func viaCLI(t *testing.T, in io.Reader, name string, args ...string) []byte {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Skipf("%s not installed", name)
	}
	cmd := exec.Command(name, args...)
	cmd.Stdin = in
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return out
}

// TestRatioBombs: streams of zeros far past what real data compresses to
// are stopped by the ratio bound once past the floor, while the densest
// legitimate data each codec can make (zeros: zstd ~32000:1, xz ~7000:1,
// gzip ~1000:1) passes the default bound of 50000. The floor is 1 MiB here
// (16 MiB streams) to keep the test quick; one bzip2 case runs with the
// default floor.
func TestRatioBombs(t *testing.T) {
	const size = 16 << 20
	const floor = 1 << 20
	const defaultRatio = 50000
	bz := viaCLI(t, nartest.Zeros(size), "bzip2", "-9", "-c")
	var gz bytes.Buffer
	gw, _ := gzip.NewWriterLevel(&gz, gzip.BestCompression)
	io.Copy(gw, nartest.Zeros(size))
	gw.Close()
	zs := viaCLI(t, nartest.Zeros(size), "zstd", "-3", "-c")
	xs := viaCLI(t, nartest.Zeros(size), "xz", "-6", "-c")
	for _, tc := range []struct {
		codec string
		in    []byte
		ratio int64
		limit string // "" = decodes
	}{
		{"bzip2", bz, defaultRatio, compress.LimitRatio},
		{"bzip2", bz, 0, ""},
		{"gzip", gz.Bytes(), defaultRatio, ""},
		{"gzip", gz.Bytes(), 500, compress.LimitRatio},
		{"zstd", zs, defaultRatio, ""},
		{"zstd", zs, 10000, compress.LimitRatio},
		{"xz", xs, defaultRatio, ""},
		{"xz", xs, 1000, compress.LimitRatio},
	} {
		t.Run(tc.codec, func(t *testing.T) {
			n, err := decodeAll(bytes.NewReader(tc.in), tc.codec, compress.DecodeLimits{MaxRatio: tc.ratio, RatioFloor: floor})
			t.Logf("%d bytes of %s (%d:1), ratio bound %d: %d bytes out, %v", len(tc.in), tc.codec, int64(size)/int64(len(tc.in)), tc.ratio, n, err)
			if tc.limit == "" {
				if err != nil || n != size {
					t.Fatalf("legitimate stream refused: %d, %v", n, err)
				}
				return
			}
			wantLimit(t, err, tc.limit)
			// The ratio is of the bytes the decoder took in, buffering
			// included: it stops within a MiB of where that crosses.
			if n > max(floor, tc.ratio*int64(len(tc.in)))+1<<20 {
				t.Errorf("decoded %d bytes before stopping", n)
			}
		})
	}
	// With the default floor: 64 MiB come out, not all 96.
	big := viaCLI(t, nartest.Zeros(96<<20), "bzip2", "-9", "-c")
	n, err := decodeAll(bytes.NewReader(big), "bzip2", compress.DecodeLimits{MaxRatio: defaultRatio})
	t.Logf("%d bytes of bzip2 for 96 MiB of zeros: stopped after %d bytes: %v", len(big), n, err)
	wantLimit(t, err, compress.LimitRatio)
	if n > compress.DefaultRatioFloor+1<<20 {
		t.Errorf("decoded %d bytes past the default floor", n)
	}
	// The absolute bound stops a stream at its first byte past it.
	n, err = decodeAll(bytes.NewReader(gz.Bytes()), "gzip", compress.DecodeLimits{MaxSize: 10 << 20})
	wantLimit(t, err, compress.LimitSize)
	if n > 10<<20+64<<10 {
		t.Errorf("decoded %d bytes past a 10 MiB bound", n)
	}
}
