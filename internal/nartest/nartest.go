// Package nartest makes inputs for tests: NARs too deep or too wide to
// build in memory comfortably (streamed instead), compressed streams
// whose headers ask the decoder for more memory than they are worth, and
// ordinary NAR-like data for benchmarks (inputs.go). Only tests import it.
package nartest

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"strings"

	"github.com/ulikunitz/xz"
)

var pad [8]byte

func tokens(w *bufio.Writer, ss ...string) {
	var n [8]byte
	for _, s := range ss {
		binary.LittleEndian.PutUint64(n[:], uint64(len(s)))
		w.Write(n[:])
		w.WriteString(s)
		w.Write(pad[:(8-len(s)%8)%8])
	}
}

// stream runs write into a pipe; closing the reader stops it.
func stream(write func(w *bufio.Writer)) io.ReadCloser {
	pr, pw := io.Pipe()
	go func() {
		w := bufio.NewWriterSize(pw, 64<<10)
		write(w)
		pw.CloseWithError(w.Flush())
	}()
	return pr
}

// Deep streams a NAR of depth directories nested in each other, each named
// with nameLen bytes of 'n', with a file "f" holding "bottom" at the end.
func Deep(depth, nameLen int) io.ReadCloser {
	return stream(func(w *bufio.Writer) {
		name := strings.Repeat("n", nameLen)
		tokens(w, "nix-archive-1", "(", "type", "directory")
		for i := 0; i < depth; i++ {
			tokens(w, "entry", "(", "name", name, "node", "(", "type", "directory")
		}
		tokens(w, "entry", "(", "name", "f", "node", "(", "type", "regular", "contents", "bottom", ")", ")")
		for i := 0; i < depth; i++ {
			tokens(w, ")", ")")
		}
		tokens(w, ")")
	})
}

// Wide streams a NAR of one directory holding n small files named
// %08d, each holding its own name.
func Wide(n int) io.ReadCloser {
	return stream(func(w *bufio.Writer) {
		tokens(w, "nix-archive-1", "(", "type", "directory")
		for i := 0; i < n; i++ {
			name := fmt.Sprintf("%08d", i)
			tokens(w, "entry", "(", "name", name, "node", "(", "type", "regular", "contents", name, ")", ")")
		}
		tokens(w, ")")
	})
}

// File is the NAR of a single regular file.
func File(contents []byte) []byte {
	var b bytes.Buffer
	w := bufio.NewWriter(&b)
	tokens(w, "nix-archive-1", "(", "type", "regular", "contents", string(contents), ")")
	w.Flush()
	return b.Bytes()
}

// XZDictBomb is a valid xz stream of payload whose LZMA2 block header
// claims the dictionary of size code code (40: 4 GiB - 1, 30: 128 MiB):
// a real stream with that one byte patched and the header CRC fixed.
// For a payload of 77 bytes or so it is the 136-byte .nar.xz that made
// github.com/ulikunitz/xz allocate 4 GiB per decode.
func XZDictBomb(payload []byte, code byte) []byte {
	var b bytes.Buffer
	w, err := xz.WriterConfig{DictCap: 4096}.NewWriter(&b)
	if err != nil {
		panic(err)
	}
	w.Write(payload)
	if err := w.Close(); err != nil {
		panic(err)
	}
	s := b.Bytes()
	h := s[12:] // after the stream header: the block header
	size := (int(h[0]) + 1) * 4
	// Flags (no sizes, one filter), filter id 0x21, properties size 1,
	// then the dictionary size code.
	if h[1] != 0 || h[2] != 0x21 || h[3] != 1 {
		panic(fmt.Sprintf("unexpected block header % x", h[:size]))
	}
	h[4] = code
	binary.LittleEndian.PutUint32(h[size-4:], crc32.ChecksumIEEE(h[:size-4]))
	return s
}

// XZDictSize is the dictionary an xz size code stands for.
func XZDictSize(code byte) int64 {
	if code >= 40 {
		return 1<<32 - 1
	}
	return int64(2|code&1) << (code/2 + 11)
}

// ZstdWindowBomb is a zstd frame whose header claims a window of
// 2^(10+exp) bytes (18: 256 MiB, 31: 2 TiB) around one raw block holding
// data.
func ZstdWindowBomb(exp byte, data []byte) []byte {
	b := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, exp << 3}
	hdr := uint32(1 | len(data)<<3) // last block, raw, its size
	b = append(b, byte(hdr), byte(hdr>>8), byte(hdr>>16))
	return append(b, data...)
}

// Zeros is a reader of n zero bytes.
func Zeros(n int64) io.Reader { return io.LimitReader(zeroReader{}, n) }

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// ZeroFile streams the NAR of one regular file of n zero bytes.
func ZeroFile(n int64) io.Reader {
	var hdr bytes.Buffer
	w := bufio.NewWriter(&hdr)
	tokens(w, "nix-archive-1", "(", "type", "regular", "contents")
	binary.Write(w, binary.LittleEndian, uint64(n))
	w.Flush()
	var tail bytes.Buffer
	w = bufio.NewWriter(&tail)
	w.Write(pad[:(8-n%8)%8])
	tokens(w, ")")
	w.Flush()
	return io.MultiReader(&hdr, Zeros(n), &tail)
}
