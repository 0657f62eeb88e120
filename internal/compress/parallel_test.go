package compress

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os/exec"
	"sync"
	"testing"

	"github.com/klauspost/compress/zstd"
)

func mixedData(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	b := make([]byte, n)
	for i := 0; i < n; {
		k := min(n-i, 1+r.IntN(64<<10))
		if r.IntN(2) == 0 {
			for j := i; j < i+k; j++ {
				b[j] = byte(r.Uint32())
			}
		} else {
			copy(b[i:i+k], bytes.Repeat([]byte("nix store path text "), k/20+1))
		}
		i += k
	}
	return b
}

func parallelCompress(t *testing.T, data []byte, chunks int) []byte {
	t.Helper()
	var out bytes.Buffer
	w := NewParallelWriter(&out, zstd.SpeedFastest)
	step := max(1, len(data)/chunks)
	for i := 0; i < len(data); i += step {
		if _, err := w.Write(data[i:min(i+step, len(data))]); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("x")); !errors.Is(err, ErrClosed) {
		t.Fatalf("Write after Close: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	return out.Bytes()
}

// TestParallelWriterRoundTrip: the concatenated frames decode to the
// input, with our decoder and with the zstd CLI, at every size around the
// frame boundary and for writes of any size.
func TestParallelWriterRoundTrip(t *testing.T) {
	for _, n := range []int{0, 1, frameSize - 1, frameSize, frameSize + 1, 5*frameSize + frameSize/2} {
		for _, chunks := range []int{1, 7, 1000} {
			data := mixedData(n, uint64(n))
			z := parallelCompress(t, data, chunks)
			r, err := NewReader(bytes.NewReader(z), "zstd")
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(r)
			r.Close()
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("%d bytes in %d writes: decoded %d bytes, err %v", n, chunks, len(got), err)
			}
			if _, err := exec.LookPath("zstd"); err == nil && chunks == 7 {
				cmd := exec.Command("zstd", "-d", "-c")
				cmd.Stdin = bytes.NewReader(z)
				out, err := cmd.Output()
				if err != nil || !bytes.Equal(out, data) {
					t.Fatalf("%d bytes: zstd -d gave %d bytes, err %v", n, len(out), err)
				}
			}
		}
	}
}

// TestParallelWriterMany: more productions at once than helpers; each
// gets its own bytes back, and the helpers are all returned.
func TestParallelWriterMany(t *testing.T) {
	var wg sync.WaitGroup
	for i := range 3 * cap(helpers) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			data := mixedData(3*frameSize+i*1000, uint64(i))
			var out bytes.Buffer
			w := NewParallelWriter(&out, zstd.SpeedFastest)
			w.Write(data)
			if err := w.Close(); err != nil {
				t.Error(err)
				return
			}
			r, _ := NewReader(&out, "zstd")
			got, err := io.ReadAll(r)
			r.Close()
			if err != nil || !bytes.Equal(got, data) {
				t.Errorf("writer %d: %d bytes, err %v", i, len(got), err)
			}
		}()
	}
	wg.Wait()
	if n := len(helpers); n != 0 {
		t.Fatalf("%d helpers still taken", n)
	}
}

type failAfter struct{ n int }

var errDisk = errors.New("disk broke")

func (f *failAfter) Write(p []byte) (int, error) {
	if f.n < len(p) {
		return 0, errDisk
	}
	f.n -= len(p)
	return len(p), nil
}

// TestParallelWriterErrors: the destination's error comes back from Write
// or Close, and Abort (what the cache calls on a failed production) waits
// for the frames in flight.
func TestParallelWriterErrors(t *testing.T) {
	data := mixedData(8*frameSize, 3)
	w := NewParallelWriter(&failAfter{n: frameSize / 2}, zstd.SpeedFastest)
	_, werr := w.Write(data)
	cerr := w.Close()
	if !errors.Is(werr, errDisk) && !errors.Is(cerr, errDisk) {
		t.Fatalf("Write %v, Close %v: want the destination's error", werr, cerr)
	}
	w = NewParallelWriter(io.Discard, zstd.SpeedFastest)
	w.Write(data[:3*frameSize+5])
	w.Abort()
	w.Abort()
	if n := len(helpers); n != 0 {
		t.Fatalf("%d helpers still taken after Abort", n)
	}
	if _, err := w.Write([]byte("x")); !errors.Is(err, ErrClosed) {
		t.Fatalf("Write after Abort: %v", err)
	}
}
