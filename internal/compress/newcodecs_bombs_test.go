package compress_test

import (
	"bytes"
	"encoding/binary"
	"io"
	"testing"

	"github.com/bos55/concordia/internal/compress"
	"github.com/bos55/concordia/internal/nartest"
)

// TestLzipContainer decodes what lzip writes (one member, several,
// concatenated files, an empty file), and refuses every damaged form:
// a flipped bit anywhere but in the dictionary size (the CRC32 and sizes
// of the trailer catch what the LZMA decoder does not), a truncation, bytes after the last member,
// a wrong version or dictionary code.
func TestLzipContainer(t *testing.T) {
	data := testData(300<<10, 21)
	small := testData(3000, 22)
	one := viaCLI(t, bytes.NewReader(data), "lzip", "-6", "-c")
	members := viaCLI(t, bytes.NewReader(data), "lzip", "-1", "-b", "100KiB", "-c")
	for name, tc := range map[string]struct{ in, want []byte }{
		"one member":   {one, data},
		"members":      {members, data},
		"concatenated": {append(viaCLI(t, bytes.NewReader(small), "lzip", "-c"), one...), append(bytes.Clone(small), data...)},
		"empty":        {viaCLI(t, bytes.NewReader(nil), "lzip", "-c"), nil},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := readAll(tc.in, "lzip", compress.DecodeLimits{})
			if err != nil || !bytes.Equal(got, tc.want) {
				t.Fatalf("decoded %d bytes (want %d): %v", len(got), len(tc.want), err)
			}
		})
	}
	if n := bytes.Count(members, []byte("LZIP")); n < 2 {
		t.Fatalf("lzip -b 100KiB wrote %d members", n)
	}

	z := viaCLI(t, bytes.NewReader(small), "lzip", "-0", "-c")
	for i := range z {
		c := bytes.Clone(z)
		c[i] ^= 0x01
		got, err := readAll(c, "lzip", compress.DecodeLimits{})
		// The dictionary size byte is covered by no check: another
		// size that still holds the data decodes it.
		if err == nil && (i != 5 || !bytes.Equal(got, small)) {
			t.Fatalf("byte %d of %d flipped: decoded %d bytes without error", i, len(z), len(got))
		}
	}
	for name, bad := range map[string][]byte{
		"truncated trailer": z[:len(z)-1],
		"truncated stream":  z[:len(z)/2],
		"header only":       z[:6],
		"trailing garbage":  append(bytes.Clone(z), "garbage"...),
		"trailing zeros":    append(bytes.Clone(z), 0, 0, 0, 0),
		"trailing magic":    append(bytes.Clone(z), "LZI"...),
		"version 0":         patch(z, 4, 0),
		"dictionary 2^11":   patch(z, 5, 11),
		"dictionary 2^30":   patch(z, 5, 30),
		"not lzip":          []byte("LZMA\x01\x0c"),
	} {
		if got, err := readAll(bad, "lzip", compress.DecodeLimits{}); err == nil {
			t.Errorf("%s: decoded %d bytes without error", name, len(got))
		}
	}
}

func readAll(in []byte, codec string, l compress.DecodeLimits) ([]byte, error) {
	d, err := compress.NewReaderLimits(bytes.NewReader(in), codec, l)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	return io.ReadAll(d)
}

func patch(b []byte, i int, v byte) []byte {
	c := bytes.Clone(b)
	c[i] = v
	return c
}

// lzipDictBomb is a real lzip file of payload whose header claims the
// dictionary of coded size code (29: 512 MiB, the format's largest).
// The LZMA stream refers back no further than the payload, so the file
// is valid with any dictionary.
func lzipDictBomb(t *testing.T, payload []byte, code byte) []byte {
	return patch(viaCLI(t, bytes.NewReader(payload), "lzip", "-0", "-c"), 5, code)
}

// TestNewCodecMemoryBombs: a few bytes claiming a huge decoder memory are
// refused before the memory is allocated (lzip's and lzma's dictionary,
// large-window brotli), and the largest memory a legitimate header may
// claim (a 16 MiB brotli window, a 4 MiB lz4 block) costs no more than a
// few times what the data needs.
func TestNewCodecMemoryBombs(t *testing.T) {
	payload := testData(200, 31)
	t.Run("lzip dictionary", func(t *testing.T) {
		bomb := lzipDictBomb(t, payload, 29)
		var err error
		a := totalAlloc(func() { _, err = decodeAll(bytes.NewReader(bomb), "lzip", compress.DecodeLimits{}) })
		le := wantLimit(t, err, compress.LimitLzipDict)
		t.Logf("%d-byte lzip file claiming 512 MiB: %v; %d bytes allocated", len(bomb), err, a)
		if le.Got != 512<<20 || le.Max != compress.DefaultXZDict || a > 1<<20 {
			t.Errorf("LimitError %+v, %d bytes allocated", le, a)
		}
		// Within the bound, the dictionary shrinks to the data the
		// caller says is coming.
		ok := lzipDictBomb(t, payload, 26) // 64 MiB
		var n int64
		a = totalAlloc(func() {
			n, err = decodeAll(bytes.NewReader(ok), "lzip", compress.DecodeLimits{SizeHint: int64(len(payload))})
		})
		if err != nil || n != int64(len(payload)) {
			t.Fatalf("64 MiB dictionary with a size hint: %d, %v", n, err)
		}
		t.Logf("64 MiB dictionary, 200 bytes hinted: %d bytes allocated", a)
		if a > 4<<20 {
			t.Errorf("allocated %d bytes for 200 bytes of data", a)
		}
		// And the bound is the configured one.
		_, err = decodeAll(bytes.NewReader(ok), "lzip", compress.DecodeLimits{XZDict: 1 << 20})
		wantLimit(t, err, compress.LimitLzipDict)
	})
	t.Run("lzma dictionary", func(t *testing.T) {
		z := viaCLI(t, bytes.NewReader(payload), "xz", "--format=lzma", "-0", "-c")
		bomb := bytes.Clone(z)
		binary.LittleEndian.PutUint32(bomb[1:], 1<<31)
		var err error
		a := totalAlloc(func() { _, err = decodeAll(bytes.NewReader(bomb), "lzma", compress.DecodeLimits{}) })
		wantLimit(t, err, compress.LimitLZMADict)
		t.Logf("lzma header claiming 2 GiB: %v; %d bytes allocated", err, a)
		if a > 1<<20 {
			t.Errorf("refusing it allocated %d bytes", a)
		}
	})
	t.Run("brotli large window", func(t *testing.T) {
		bomb := viaCLI(t, bytes.NewReader(payload), "brotli", "--large_window=30", "-c")
		var err error
		a := totalAlloc(func() { _, err = decodeAll(bytes.NewReader(bomb), "br", compress.DecodeLimits{}) })
		t.Logf("large-window brotli (1 GiB): %v; %d bytes allocated", err, a)
		if err == nil || a > 1<<20 {
			t.Errorf("large-window brotli: %v, %d bytes allocated", err, a)
		}
	})
	t.Run("brotli 16 MiB window", func(t *testing.T) {
		z := viaCLI(t, bytes.NewReader(payload), "brotli", "-w", "24", "-c")
		var n int64
		var err error
		a := totalAlloc(func() { n, err = decodeAll(bytes.NewReader(z), "br", compress.DecodeLimits{}) })
		t.Logf("lgwin 24 of 200 bytes: %d bytes allocated", a)
		if err != nil || n != int64(len(payload)) || a > 2<<20 {
			t.Errorf("decoded %d, %v; %d bytes allocated", n, err, a)
		}
		// The most a brotli stream can make us hold: 16 MiB of
		// history once 16 MiB came out.
		big := testData(24<<20, 32)
		z = viaCLI(t, bytes.NewReader(big), "brotli", "-q", "1", "-w", "24", "-c")
		a = totalAlloc(func() { n, err = decodeAll(bytes.NewReader(z), "br", compress.DecodeLimits{}) })
		t.Logf("lgwin 24 of 24 MiB: %d bytes allocated", a)
		if err != nil || n != int64(len(big)) || a > 40<<20 {
			t.Errorf("decoded %d, %v; %d bytes allocated", n, err, a)
		}
	})
	t.Run("lz4 4 MiB blocks", func(t *testing.T) {
		z := viaCLI(t, bytes.NewReader(payload), "lz4", "-B7", "-c")
		var n int64
		var err error
		a := totalAlloc(func() { n, err = decodeAll(bytes.NewReader(z), "lz4", compress.DecodeLimits{}) })
		t.Logf("4 MiB block size, 200 bytes: %d bytes allocated", a)
		if err != nil || n != int64(len(payload)) || a > 12<<20 {
			t.Errorf("decoded %d, %v; %d bytes allocated", n, err, a)
		}
	})
}

// TestNewCodecRatioBombs: the decoded-size and ratio bounds, applied
// around every decoder, stop the new codecs too. 16 MiB of zeros is
// 64 KiB of lz4 (254:1), 2.4 KiB of lzip (6800:1) and 14 bytes of brotli
// (a million to one: denser than the default bound of 50000, so a NAR of
// over 64 MiB of little but zeros is refused in brotli under the default
// limits.max_ratio; real data in it brings the ratio down at once).
func TestNewCodecRatioBombs(t *testing.T) {
	const size = 16 << 20
	const floor = 1 << 20
	for _, tc := range []struct {
		codec, tool string
		args        []string
		ratio       int64
		limit       string
	}{
		{"br", "brotli", []string{"-c"}, 50000, compress.LimitRatio},
		{"br", "brotli", []string{"-c"}, 0, ""},
		{"lz4", "lz4", []string{"-c"}, 50000, ""},
		{"lz4", "lz4", []string{"-c"}, 10, compress.LimitRatio},
		{"lzip", "lzip", []string{"-c"}, 50000, ""},
		{"lzip", "lzip", []string{"-c"}, 1000, compress.LimitRatio},
	} {
		t.Run(tc.codec, func(t *testing.T) {
			in := viaCLI(t, nartest.Zeros(size), tc.tool, tc.args...)
			n, err := decodeAll(bytes.NewReader(in), tc.codec, compress.DecodeLimits{MaxRatio: tc.ratio, RatioFloor: floor})
			t.Logf("%d bytes of %s (%d:1), ratio bound %d: %d bytes out, %v", len(in), tc.codec, int64(size)/int64(len(in)), tc.ratio, n, err)
			if tc.limit == "" {
				if err != nil || n != size {
					t.Fatalf("legitimate stream refused: %d, %v", n, err)
				}
			} else {
				wantLimit(t, err, tc.limit)
				if n > max(floor, tc.ratio*int64(len(in)))+4<<20 {
					t.Errorf("decoded %d bytes before stopping", n)
				}
			}
			n, err = decodeAll(bytes.NewReader(in), tc.codec, compress.DecodeLimits{MaxSize: 4 << 20})
			wantLimit(t, err, compress.LimitSize)
			if n > 4<<20+4<<20 {
				t.Errorf("decoded %d bytes past a 4 MiB bound", n)
			}
		})
	}
}
