package nar_test

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/bos55/concordia/pkg/nar"
)

var updateSeeds = flag.Bool("update-seeds", false, "rewrite testdata/fuzz/FuzzNarReader seeds from nix-store --dump")

// TestFuzzSeedsFromNix writes the fuzz seed corpus from real nix-store
// --dump output when run with -update-seeds; otherwise it checks that the
// committed seeds are still what Nix produces for those trees.
func TestFuzzSeedsFromNix(t *testing.T) {
	needNix(t)
	seeds := map[string]tree{
		"file":       {{path: "x", kind: 'f', data: "hello\n"}},
		"empty-file": {{path: "x", kind: 'f'}},
		"exec":       {{path: "x", kind: 'f', data: "#!/bin/sh\n", mode: 0o755}},
		"symlink":    {{path: "x", kind: 'l', data: "../target"}},
		"empty-dir":  {{path: "x", kind: 'd'}},
		"dir": {{path: "x", kind: 'd'}, {path: "x/a", kind: 'f', data: "12345678"}, {path: "x/b", kind: 'l', data: "a"},
			{path: "x/c", kind: 'd'}, {path: "x/c/\xff ä\n", kind: 'f', data: "odd", mode: 0o700}, {path: "x/d", kind: 'd'}},
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzNarReader")
	for name, tr := range seeds {
		root := t.TempDir()
		tr.build(t, root)
		b := nixDump(t, filepath.Join(root, "x"))
		seed := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
		file := filepath.Join(dir, "nix-"+name)
		if *updateSeeds {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(file, []byte(seed), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(file)
		if err != nil {
			t.Fatalf("%v (run with -update-seeds)", err)
		}
		if string(got) != seed {
			t.Errorf("%s is not nix-store --dump of its tree (run with -update-seeds)", file)
		}
	}
}

// FuzzNarReader: no input panics or makes the reader allocate without
// bound, every refusal is ErrInvalid, and whatever the reader accepts
// re-serialises through Writer to exactly the input bytes (so it was
// canonical, and NarHash is a function of what the reader returned).
func FuzzNarReader(f *testing.F) {
	f.Add([]byte{})
	f.Add(dirNAR().s(")").b)
	f.Add((&narBuilder{}).u(1 << 60).u(0).b)
	f.Fuzz(func(t *testing.T, data []byte) {
		nr := nar.NewReader(bytes.NewReader(data))
		var out bytes.Buffer
		w := nar.NewWriter(&out)
		for {
			h, err := nr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				if !errors.Is(err, nar.ErrInvalid) {
					t.Fatalf("refusal is not ErrInvalid: %v", err)
				}
				return
			}
			if err := w.WriteHeader(h); err != nil {
				t.Fatalf("reader returned %+v, writer refuses it: %v", h, err)
			}
			if h.Type == nar.TypeRegular {
				if _, err := io.Copy(w, nr); err != nil {
					if !errors.Is(err, nar.ErrInvalid) {
						t.Fatalf("contents error is not ErrInvalid: %v", err)
					}
					return
				}
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out.Bytes(), data) {
			t.Fatalf("accepted NAR re-serialises differently:\n in  %q\n out %q", data, out.Bytes())
		}
		if n, err := nar.Validate(bytes.NewReader(data)); err != nil || n != int64(len(data)) {
			t.Fatalf("Validate = %d, %v after Reader accepted it", n, err)
		}
		l, err := nar.ListingFromReader(bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		js, err := l.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		var streamed bytes.Buffer
		if _, err := nar.WriteListing(&streamed, bytes.NewReader(data), nar.ReaderOptions{}); err != nil || !bytes.Equal(streamed.Bytes(), js) {
			t.Fatalf("WriteListing = %v, %q; MarshalJSON %q", err, streamed.Bytes(), js)
		}
		// Bounds only ever add a LimitError: a NAR accepted without
		// them is accepted with bounds it fits in and refused, with a
		// LimitError, by any it does not. The bounds come from the
		// input, so the fuzzer explores them too.
		o := fuzzLimits(data)
		_, err = nar.ValidateOptions(bytes.NewReader(data), o)
		var le *nar.LimitError
		if err != nil && (!errors.Is(err, nar.ErrInvalid) || !errors.As(err, &le)) {
			t.Fatalf("with %+v: refusal is not a LimitError: %v", o, err)
		}
		if err == nil && (o.MaxSize > 0 && o.MaxSize < int64(len(data))) {
			t.Fatalf("with %+v: a NAR of %d bytes was accepted", o, len(data))
		}
	})
}

// fuzzLimits derives small bounds from the input's last bytes.
func fuzzLimits(data []byte) nar.ReaderOptions {
	b := func(i int) int {
		if len(data) <= i {
			return 0
		}
		return int(data[len(data)-1-i])
	}
	return nar.ReaderOptions{
		MaxSize:      int64(b(0) * 8),
		MaxDepth:     b(1) % 8,
		MaxEntries:   int64(b(2) % 16),
		MaxNameLen:   b(3) % 16,
		MaxTargetLen: b(4) % 16,
	}
}
