package compress

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"hash/crc64"
	"io"

	"github.com/ulikunitz/xz/lzma"
)

// xzReader reads the xz container (format 1.0.4) itself and hands only
// each block's LZMA2 data to ulikunitz/xz's lzma.Reader2. The reason is
// the dictionary: an LZMA2 decoder allocates its whole dictionary up front,
// sized by one byte of the block header, so 136 bytes claiming 4 GiB make
// xz.NewReader allocate 4 GiB (its ReaderConfig.DictCap is a minimum, not
// a cap). Here the header is read first and a dictionary over the limit is
// refused before anything is allocated; a block that says how much it
// decompresses to, or a stream whose size the caller knows, gets a
// dictionary no larger than that data, which is all LZMA2 can refer to.
//
// Like xz.Reader it supports the LZMA2 filter only (what xz and Nix
// write), the None, CRC32, CRC64 and SHA-256 checks, concatenated streams
// and stream padding; it verifies header CRCs, block checks, the index and
// the footer.
type xzReader struct {
	br      *bufio.Reader
	maxDict int64
	hint    int64 // expected decompressed size of the whole input, 0 = unknown

	flags   [2]byte // stream flags of the current stream
	check   hash.Hash
	block   io.Reader // LZMA2 data of the current block, nil between blocks
	lz      *countReader
	bh      xzBlockHeader
	out     int64 // bytes of the current block so far
	total   int64
	records []xzRecord // of the current stream, for its index
	err     error
}

type xzRecord struct{ unpadded, uncompressed int64 }

type xzBlockHeader struct {
	size               int   // bytes of the header, CRC included
	compressed, uncomp int64 // -1 when the header does not say
	dict               int64
}

var (
	xzMagic       = []byte{0xfd, '7', 'z', 'X', 'Z', 0}
	xzFooterMagic = []byte{'Y', 'Z'}
	crc64Table    = crc64.MakeTable(crc64.ECMA)
	errXZ         = errors.New("xz")
)

func xzErrorf(format string, a ...any) error {
	return fmt.Errorf("%w: %s", errXZ, fmt.Sprintf(format, a...))
}

func newXZReader(r io.Reader, maxDict, hint int64) (*xzReader, error) {
	x := &xzReader{br: bufio.NewReaderSize(r, 64<<10), maxDict: maxDict, hint: hint}
	if err := x.streamHeader(); err != nil {
		return nil, err
	}
	return x, nil
}

func (x *xzReader) Close() error { return nil }

func (x *xzReader) Read(p []byte) (int, error) {
	if x.err != nil {
		return 0, x.err
	}
	for {
		if x.block != nil {
			n, err := x.block.Read(p)
			x.out += int64(n)
			x.total += int64(n)
			if n > 0 {
				x.check.Write(p[:n])
			}
			if x.bh.uncomp >= 0 && x.out > x.bh.uncomp {
				x.err = xzErrorf("block decompresses to more than its header's %d bytes", x.bh.uncomp)
				return n, x.err
			}
			if err == io.EOF {
				x.err = x.endBlock()
				if x.err != nil {
					return n, x.err
				}
				err = nil
			} else if err != nil {
				x.err = fmt.Errorf("%w: %w", errXZ, err)
				return n, x.err
			}
			if n > 0 || len(p) == 0 {
				return n, nil
			}
			continue
		}
		if err := x.next(); err != nil {
			x.err = err
			return 0, err
		}
	}
}

// next starts the next block, or reads the index, footer, padding and
// following stream; io.EOF after the last stream.
func (x *xzReader) next() error {
	b, err := x.br.ReadByte()
	if err != nil {
		return x.eof(err)
	}
	if b == 0 {
		if err := x.index(); err != nil {
			return err
		}
		return x.nextStream()
	}
	return x.startBlock(b)
}

func (x *xzReader) eof(err error) error {
	if err == io.EOF {
		return xzErrorf("truncated: %v", io.ErrUnexpectedEOF)
	}
	return err
}

func (x *xzReader) readFull(p []byte) error {
	if _, err := io.ReadFull(x.br, p); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return xzErrorf("truncated: %v", io.ErrUnexpectedEOF)
		}
		return err
	}
	return nil
}

func (x *xzReader) streamHeader() error {
	var h [12]byte
	if err := x.readFull(h[:]); err != nil {
		return err
	}
	if !bytes.Equal(h[:6], xzMagic) {
		return xzErrorf("not an xz stream")
	}
	if crc32.ChecksumIEEE(h[6:8]) != binary.LittleEndian.Uint32(h[8:]) {
		return xzErrorf("stream header CRC mismatch")
	}
	if h[6] != 0 || h[7]&0xf0 != 0 {
		return xzErrorf("unsupported stream flags %#x %#x", h[6], h[7])
	}
	switch h[7] {
	case 0x00:
		x.check = nopHash{}
	case 0x01:
		x.check = crc32.NewIEEE()
	case 0x04:
		x.check = crc64.New(crc64Table)
	case 0x0a:
		x.check = sha256.New()
	default:
		return xzErrorf("unsupported check type %#x", h[7])
	}
	x.flags = [2]byte{h[6], h[7]}
	x.records = x.records[:0]
	return nil
}

// nextStream skips stream padding (zeros in multiples of four) and reads
// the header of a following stream, or returns io.EOF.
func (x *xzReader) nextStream() error {
	for {
		b, err := x.br.Peek(4)
		if len(b) == 0 && err == io.EOF {
			return io.EOF
		}
		if len(b) == 4 && b[0]|b[1]|b[2]|b[3] == 0 {
			x.br.Discard(4)
			continue
		}
		if err != nil && len(b) < 4 {
			if err == io.EOF {
				return xzErrorf("stream padding is not a multiple of four bytes")
			}
			return err
		}
		return x.streamHeader()
	}
}

func (x *xzReader) startBlock(sizeByte byte) error {
	size := (int(sizeByte) + 1) * 4
	hdr := make([]byte, size)
	hdr[0] = sizeByte
	if err := x.readFull(hdr[1:]); err != nil {
		return err
	}
	if crc32.ChecksumIEEE(hdr[:size-4]) != binary.LittleEndian.Uint32(hdr[size-4:]) {
		return xzErrorf("block header CRC mismatch")
	}
	bh, err := parseBlockHeader(hdr[1 : size-4])
	if err != nil {
		return err
	}
	bh.size = size
	if bh.dict > x.maxDict {
		return &LimitError{Limit: LimitXZDict, Max: x.maxDict, Got: bh.dict}
	}
	// LZMA2 never refers further back than the data decoded so far, so
	// the dictionary need not outgrow it.
	dict := bh.dict
	if bh.uncomp >= 0 && bh.uncomp < dict {
		dict = bh.uncomp
	}
	if x.hint > 0 && x.hint-x.total < dict {
		dict = x.hint - x.total
	}
	dict = max(dict, lzma.MinDictCap)
	x.lz = &countReader{r: x.br}
	lr, err := lzma.Reader2Config{DictCap: int(dict)}.NewReader2(x.lz)
	if err != nil {
		return fmt.Errorf("%w: %w", errXZ, err)
	}
	x.bh, x.block, x.out = bh, lr, 0
	x.check.Reset()
	return nil
}

func parseBlockHeader(b []byte) (xzBlockHeader, error) {
	bh := xzBlockHeader{compressed: -1, uncomp: -1}
	if len(b) < 1 {
		return bh, xzErrorf("short block header")
	}
	flags := b[0]
	b = b[1:]
	if flags&0x3c != 0 {
		return bh, xzErrorf("reserved block flags set")
	}
	var err error
	if flags&0x40 != 0 {
		if bh.compressed, b, err = uvarint(b); err != nil || bh.compressed == 0 {
			return bh, xzErrorf("bad compressed size in block header")
		}
	}
	if flags&0x80 != 0 {
		if bh.uncomp, b, err = uvarint(b); err != nil {
			return bh, xzErrorf("bad uncompressed size in block header")
		}
	}
	if nf := int(flags&3) + 1; nf != 1 {
		return bh, xzErrorf("%d filters: only LZMA2 alone is supported", nf)
	}
	id, b, err := uvarint(b)
	if err != nil {
		return bh, xzErrorf("bad filter flags")
	}
	if id != 0x21 {
		return bh, xzErrorf("filter %#x: only LZMA2 is supported", id)
	}
	psize, b, err := uvarint(b)
	if err != nil || psize != 1 || len(b) < 1 {
		return bh, xzErrorf("bad LZMA2 filter properties")
	}
	code := b[0]
	b = b[1:]
	if code > 40 {
		return bh, xzErrorf("LZMA2 dictionary size code %d out of range", code)
	}
	if code == 40 {
		bh.dict = 1<<32 - 1
	} else {
		bh.dict = int64(2|code&1) << (code/2 + 11)
	}
	for _, c := range b {
		if c != 0 {
			return bh, xzErrorf("non-zero block header padding")
		}
	}
	return bh, nil
}

// endBlock reads the block padding and check after the LZMA2 data ended.
func (x *xzReader) endBlock() error {
	comp := x.lz.n
	if x.bh.compressed >= 0 && comp != x.bh.compressed {
		return xzErrorf("block has %d compressed bytes, its header says %d", comp, x.bh.compressed)
	}
	if x.bh.uncomp >= 0 && x.out != x.bh.uncomp {
		return xzErrorf("block has %d bytes, its header says %d", x.out, x.bh.uncomp)
	}
	var buf [64]byte
	pad := int((4 - (int64(x.bh.size)+comp)%4) % 4)
	if err := x.readFull(buf[:pad]); err != nil {
		return err
	}
	for _, c := range buf[:pad] {
		if c != 0 {
			return xzErrorf("non-zero block padding")
		}
	}
	cs := x.check.Size()
	if err := x.readFull(buf[:cs]); err != nil {
		return err
	}
	var ok bool
	switch h := x.check.(type) {
	case hash.Hash32: // CRC32, stored little-endian
		ok = binary.LittleEndian.Uint32(buf[:4]) == h.Sum32()
	case hash.Hash64: // CRC64, likewise
		ok = binary.LittleEndian.Uint64(buf[:8]) == h.Sum64()
	default:
		ok = bytes.Equal(buf[:cs], h.Sum(buf[cs:cs]))
	}
	if !ok {
		return xzErrorf("block check mismatch")
	}
	x.records = append(x.records, xzRecord{unpadded: int64(x.bh.size) + comp + int64(cs), uncompressed: x.out})
	x.block, x.lz = nil, nil
	return nil
}

// index reads the index (its indicator byte already read) and the footer,
// checking both against the blocks seen.
func (x *xzReader) index() error {
	ix := &xzIndex{x: x, crc: crc32.NewIEEE()}
	ix.crc.Write([]byte{0})
	ix.size = 1
	n, err := ix.varint()
	if err != nil {
		return err
	}
	if n != int64(len(x.records)) {
		return xzErrorf("index has %d records for %d blocks", n, len(x.records))
	}
	for _, rec := range x.records {
		u, err := ix.varint()
		if err != nil {
			return err
		}
		c, err := ix.varint()
		if err != nil {
			return err
		}
		if u != rec.unpadded || c != rec.uncompressed {
			return xzErrorf("index record does not match its block")
		}
	}
	var buf [12]byte
	pad := (4 - ix.size%4) % 4
	if err := x.readFull(buf[:pad]); err != nil {
		return err
	}
	for _, c := range buf[:pad] {
		if c != 0 {
			return xzErrorf("non-zero index padding")
		}
	}
	ix.crc.Write(buf[:pad])
	if err := x.readFull(buf[:4]); err != nil {
		return err
	}
	if ix.crc.Sum32() != binary.LittleEndian.Uint32(buf[:4]) {
		return xzErrorf("index CRC mismatch")
	}
	indexSize := ix.size + pad + 4
	if err := x.readFull(buf[:12]); err != nil {
		return err
	}
	if crc32.ChecksumIEEE(buf[4:10]) != binary.LittleEndian.Uint32(buf[:4]) {
		return xzErrorf("stream footer CRC mismatch")
	}
	if back := (int64(binary.LittleEndian.Uint32(buf[4:8])) + 1) * 4; back != indexSize {
		return xzErrorf("stream footer gives an index of %d bytes, it has %d", back, indexSize)
	}
	if buf[8] != x.flags[0] || buf[9] != x.flags[1] || !bytes.Equal(buf[10:12], xzFooterMagic) {
		return xzErrorf("bad stream footer")
	}
	return nil
}

// xzIndex reads the varints of an index, hashing and counting them.
type xzIndex struct {
	x    *xzReader
	crc  hash.Hash32
	size int64
}

func (ix *xzIndex) varint() (int64, error) {
	var v uint64
	for i := 0; i < 9; i++ {
		b, err := ix.x.br.ReadByte()
		if err != nil {
			return 0, ix.x.eof(err)
		}
		ix.crc.Write([]byte{b})
		ix.size++
		v |= uint64(b&0x7f) << (7 * i)
		if b&0x80 == 0 {
			if i > 0 && b == 0 || v > 1<<63-1 {
				return 0, xzErrorf("bad index varint")
			}
			return int64(v), nil
		}
	}
	return 0, xzErrorf("index varint too long")
}

func uvarint(b []byte) (int64, []byte, error) {
	var v uint64
	for i := 0; i < 9 && i < len(b); i++ {
		v |= uint64(b[i]&0x7f) << (7 * i)
		if b[i]&0x80 == 0 {
			if i > 0 && b[i] == 0 || v > 1<<63-1 {
				return 0, nil, errXZ
			}
			return int64(v), b[i+1:], nil
		}
	}
	return 0, nil, errXZ
}

// countReader counts the bytes read through it.
type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// byteCountReader is a countReader of an io.ByteReader, which it stays:
// decoders that read byte by byte (gzip, bzip2) wrap anything else in a
// buffer of their own.
type byteCountReader struct {
	countReader
	br io.ByteReader
}

func (c *byteCountReader) ReadByte() (byte, error) {
	b, err := c.br.ReadByte()
	if err == nil {
		c.n++
	}
	return b, err
}

// newCountReader counts r, keeping io.ByteReader if r has it.
func newCountReader(r io.Reader) (io.Reader, *countReader) {
	if br, ok := r.(io.ByteReader); ok {
		c := &byteCountReader{countReader: countReader{r: r}, br: br}
		return c, &c.countReader
	}
	c := &countReader{r: r}
	return c, c
}

type nopHash struct{}

func (nopHash) Write(p []byte) (int, error) { return len(p), nil }
func (nopHash) Sum(b []byte) []byte         { return b }
func (nopHash) Reset()                      {}
func (nopHash) Size() int                   { return 0 }
func (nopHash) BlockSize() int              { return 1 }
