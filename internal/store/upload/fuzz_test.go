package upload_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/upload"
)

// FuzzPutNAR: any body under any name is either stored whole and
// consistent, or refused with ErrInvalid leaving no file behind; never a
// panic.
func FuzzPutNAR(f *testing.F) {
	p := newPath(f, "fuzz-nar", []byte("fuzz contents"))
	f.Add(p.fileName, p.file)
	f.Add(strings.TrimSuffix(p.fileName, ".zst"), p.nar)
	f.Add(p.fileName, p.file[:len(p.file)/2])
	f.Add("0000000000000000000000000000000000000000000000000000.nar", []byte("nix-archive-1"))
	f.Add("x.nar.zst", []byte{})
	dir := f.TempDir()
	s, err := openAt(f, dir, upload.Options{})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.Close() })
	f.Fuzz(func(t *testing.T, name string, body []byte) {
		ctx := context.Background()
		info, err := s.PutNAR(ctx, name, bytes.NewReader(body))
		if err != nil {
			if !errors.Is(err, store.ErrInvalid) {
				t.Fatalf("non-client error for client input: %v", err)
			}
		} else if ok, _ := s.HasNAR(ctx, name); !ok || info.FileSize != int64(len(body)) {
			t.Fatalf("accepted but not stored: %+v", info)
		}
		for _, f := range blobFiles(t, dir) {
			if strings.HasPrefix(f, ".tmp") {
				t.Fatalf("temp file left: %s", f)
			}
		}
	})
}

// FuzzPutNarInfo: a narinfo body is never a panic, and is accepted only
// for a NAR that was uploaded and matches.
func FuzzPutNarInfo(f *testing.F) {
	p := newPath(f, "fuzz-info", []byte("fuzz contents"))
	f.Add(p.hash, p.narinfo())
	f.Add(p.hash, strings.Replace(p.narinfo(), "NarSize: ", "NarSize: 1", 1))
	f.Add(p.hash, strings.Replace(p.narinfo(), "References: ", "References: "+p.base+" ../x", 1))
	f.Add(p.hash[:5], "StorePath: /nix/store/x\n")
	s, err := openAt(f, f.TempDir(), upload.Options{})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.Close() })
	if _, err := s.PutNAR(context.Background(), p.fileName, bytes.NewReader(p.file)); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, hash, text string) {
		err := s.PutNarInfo(context.Background(), hash, strings.NewReader(text))
		// A refusal of the client's input: invalid, or (the store keeps
		// what earlier inputs uploaded) naming a hash part it serves as
		// another store path, a 409.
		if err != nil && !errors.Is(err, store.ErrInvalid) && !errors.Is(err, store.ErrConflict) {
			t.Fatalf("non-client error for client input: %v", err)
		}
		if err == nil {
			info, err := s.PathInfo(context.Background(), hash)
			if err != nil || !bytes.Equal(info.NarHash, p.info.NarHash.Digest) || info.NarSize != p.info.NarSize {
				t.Fatalf("accepted a narinfo that does not match the NAR: %v %+v", err, info)
			}
		}
	})
}

func FuzzParseNARName(f *testing.F) {
	for _, s := range []string{"1w0c6xkyllv78gw44krndriwy8m0nsh62rdgi2g3kr6sa6vqjbph.nar.xz", "x.nar", ".nar", "a.b.c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		h, comp, err := upload.ParseNARName(name)
		if err == nil && (len(h) != 32 || comp == "") {
			t.Fatalf("%q: %x %q", name, h, comp)
		}
	})
}

// TestGCConcurrentUploads: GC running in a loop while clients upload
// closures never leaves a stored path with a missing reference, and every
// upload that succeeded with its references present stays consistent.
func TestGCConcurrentUploads(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := openStore(t, dir, upload.Options{})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := s.GCWith(ctx, upload.Policy{MaxSize: 1}, false); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	var up sync.WaitGroup
	for c := range 3 {
		up.Add(1)
		go func() {
			defer up.Done()
			for i := range 15 {
				for _, p := range closure(t, fmt.Sprintf("gcc-%d-%d", c, i)) {
					// A reference collected before its referrer
					// arrived is refused (the client retries);
					// anything else is a bug.
					if err := p.upload(ctx, s); err != nil && !errors.Is(err, store.ErrInvalid) {
						t.Error(err)
					}
				}
			}
		}()
	}
	up.Wait()
	close(stop)
	wg.Wait()
	paths, _ := s.Paths(ctx)
	have := map[string]bool{}
	for _, p := range paths {
		have[p] = true
	}
	for _, p := range paths {
		info, err := s.PathInfo(ctx, p[len("/nix/store/"):][:32])
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range info.References {
			if !have[r] {
				t.Fatalf("%s kept without its reference %s", p, r)
			}
		}
		if _, err := narOf(t, s, p[len("/nix/store/"):][:32]); err != nil {
			t.Fatalf("%s has no NAR: %v", p, err)
		}
	}
	if rep, err := s.Verify(ctx, false, nil); err != nil || len(rep.Bad) != 0 {
		t.Fatalf("verify: %v %+v", err, rep)
	}
}
