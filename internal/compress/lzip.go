package compress

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"

	"github.com/ulikunitz/xz/lzma"
)

// lzipReader reads the lzip container (lzip manual, "File format"), which
// no maintained Go library decodes, over ulikunitz/xz's LZMA decoder:
//
//	member  = "LZIP" | version (1) | coded dictionary size (1 byte)
//	          | LZMA stream | CRC32 | data size (8) | member size (8)
//
// A file is one or more members, each decoded with a fresh dictionary.
// The LZMA stream has no header of its own: its properties are fixed
// (lc=3, lp=0, pb=2) and it ends with the end-of-stream marker, after
// which the trailer gives the CRC32 (IEEE, of the decoded bytes), the
// decoded size and the size of the whole member, all little-endian; all
// three are checked. Anything after the last member that is not another
// member is refused (lzip itself ignores some trailing data; a NAR upload
// has none).
//
// As for xz (see xzReader), the dictionary is what a decoder allocates up
// front: the header's size is checked against maxDict before anything is
// allocated, and shrunk to the data still to come when the caller knows
// the total size (hint). This is what Nix's own decoder of lzip
// (libarchive, compression.cc 2.32.0:220-233) and lzip do not bound.
type lzipReader struct {
	br      *bufio.Reader
	maxDict int64
	hint    int64

	member *lzma.Reader // nil between members
	in     *lzipInput
	crc    hash.Hash32
	out    int64 // bytes of the current member
	total  int64
	n      int // members read
	err    error
}

// lzipProps is the LZMA properties byte of every lzip member:
// (pb*5+lp)*9+lc with lc=3, lp=0, pb=2.
const lzipProps = (2*5+0)*9 + 3

// Sizes of the parts of a member around its LZMA stream.
const (
	lzipHeaderLen  = 6
	lzipTrailerLen = 20
)

var (
	lzipMagic = []byte("LZIP")
	errLzip   = errors.New("lzip")
)

func lzipErrorf(format string, a ...any) error {
	return fmt.Errorf("%w: %s", errLzip, fmt.Sprintf(format, a...))
}

func newLzipReader(r io.Reader, maxDict, hint int64) (*lzipReader, error) {
	z := &lzipReader{br: bufio.NewReaderSize(r, 64<<10), maxDict: maxDict, hint: hint, crc: crc32.NewIEEE()}
	if err := z.startMember(); err != nil {
		return nil, err
	}
	return z, nil
}

func (z *lzipReader) Close() error { return nil }

func (z *lzipReader) Read(p []byte) (int, error) {
	if z.err != nil {
		return 0, z.err
	}
	for {
		if z.member != nil {
			n, err := z.member.Read(p)
			z.out += int64(n)
			z.total += int64(n)
			z.crc.Write(p[:n])
			if err == io.EOF {
				if z.err = z.endMember(); z.err != nil {
					return n, z.err
				}
				err = nil
			} else if err != nil {
				z.err = fmt.Errorf("%w: %w", errLzip, err)
				return n, z.err
			}
			if n > 0 || len(p) == 0 {
				return n, nil
			}
			continue
		}
		// Between members: another one, or the end.
		if _, err := z.br.Peek(1); err == io.EOF {
			z.err = io.EOF
			return 0, io.EOF
		}
		if z.err = z.startMember(); z.err != nil {
			return 0, z.err
		}
	}
}

// lzipDictSize decodes the coded dictionary size byte: a power of two
// (bits 4-0: 2^12 to 2^29) less 0 to 7 sixteenths of it (bits 7-5).
func lzipDictSize(b byte) (int64, error) {
	exp := b & 0x1f
	if exp < 12 || exp > 29 {
		return 0, lzipErrorf("dictionary size 2^%d out of range (2^12 to 2^29)", exp)
	}
	size := int64(1) << exp
	return size - size/16*int64(b>>5), nil
}

func (z *lzipReader) startMember() error {
	var h [lzipHeaderLen]byte
	if _, err := io.ReadFull(z.br, h[:]); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			if z.n > 0 {
				return lzipErrorf("data after the last member")
			}
			return lzipErrorf("truncated header")
		}
		return err
	}
	if string(h[:4]) != string(lzipMagic) {
		if z.n > 0 {
			return lzipErrorf("data after the last member")
		}
		return lzipErrorf("not an lzip file")
	}
	if h[4] != 1 {
		return lzipErrorf("version %d (only 1 exists)", h[4])
	}
	dict, err := lzipDictSize(h[5])
	if err != nil {
		return err
	}
	if dict > z.maxDict {
		return &LimitError{Limit: LimitLzipDict, Max: z.maxDict, Got: dict}
	}
	// LZMA refers no further back than the data decoded so far.
	if z.hint > 0 && z.hint-z.total < dict {
		dict = max(z.hint-z.total, lzma.MinDictCap)
	}
	// The LZMA decoder wants the classic 13-byte header: the fixed
	// properties, the dictionary, and an unknown size (the stream ends
	// with its end marker).
	var lh [lzma.HeaderLen]byte
	lh[0] = lzipProps
	binary.LittleEndian.PutUint32(lh[1:], uint32(dict))
	binary.LittleEndian.PutUint64(lh[5:], 1<<64-1)
	z.in = &lzipInput{head: lh[:], br: z.br}
	m, err := lzma.ReaderConfig{DictCap: int(dict)}.NewReader(z.in)
	if err != nil {
		return fmt.Errorf("%w: %w", errLzip, err)
	}
	z.member, z.out = m, 0
	z.crc.Reset()
	z.n++
	return nil
}

// endMember checks the trailer after a member's LZMA stream ended.
func (z *lzipReader) endMember() error {
	if !z.member.EOSMarker() {
		return lzipErrorf("LZMA stream without its end marker")
	}
	var t [lzipTrailerLen]byte
	if _, err := io.ReadFull(z.br, t[:]); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return lzipErrorf("truncated trailer")
		}
		return err
	}
	if got := binary.LittleEndian.Uint32(t[0:]); got != z.crc.Sum32() {
		return lzipErrorf("CRC mismatch: the trailer says %08x, the data has %08x", got, z.crc.Sum32())
	}
	if got := binary.LittleEndian.Uint64(t[4:]); got != uint64(z.out) {
		return lzipErrorf("member decodes to %d bytes, its trailer says %d", z.out, got)
	}
	size := lzipHeaderLen + z.in.n + lzipTrailerLen
	if got := binary.LittleEndian.Uint64(t[12:]); got != uint64(size) {
		return lzipErrorf("member is %d bytes, its trailer says %d", size, got)
	}
	z.member, z.in = nil, nil
	return nil
}

// lzipInput is the LZMA decoder's input: the synthesized header, then
// the member's bytes, counted, read one at a time from the buffer so the
// decoder takes no byte past its stream's end (the trailer).
type lzipInput struct {
	head []byte
	br   *bufio.Reader
	n    int64 // bytes of br taken
}

func (l *lzipInput) ReadByte() (byte, error) {
	if len(l.head) > 0 {
		b := l.head[0]
		l.head = l.head[1:]
		return b, nil
	}
	b, err := l.br.ReadByte()
	if err == nil {
		l.n++
	} else if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return b, err
}

func (l *lzipInput) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if len(l.head) > 0 {
		n := copy(p, l.head)
		l.head = l.head[n:]
		return n, nil
	}
	b, err := l.ReadByte()
	if err != nil {
		return 0, err
	}
	p[0] = b
	return 1, nil
}
