package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/upload"
)

// TestNixCopyAfterGCWithinWriterTTL: GC against the uploader's positive
// narinfo cache, with a real client and one XDG_CACHE_HOME across its
// copies, on purpose (CI runners keep theirs). The client uploads a
// closure a <- b; GC with a max_size that would collect b; then the same
// client uploads c, which refers to b and a, and which it uploads alone
// because its disk cache says b and a are in the cache (nar-info-disk-
// cache.cc keeps both what it fetched and what it uploaded for
// narinfo-cache-positive-ttl, 30 days).
//
// Within writer_ttl b is kept, the GC report says so, and the upload of
// c succeeds. With writer_ttl off, or past hard_max_size, b is collected,
// the upload of c fails with the cache's message naming b and
// narinfo-cache-positive-ttl 0, and the same command with that option
// (the client asks the cache again and sends b and a) succeeds.
func TestNixCopyAfterGCWithinWriterTTL(t *testing.T) {
	if testing.Short() {
		t.Skip("runs nix")
	}
	const ttl = 30 * 24 * time.Hour
	for _, tc := range []struct {
		name string
		opts upload.Options
		kept bool
	}{
		{"within writer_ttl", upload.Options{WriterTTL: ttl}, true},
		{"writer_ttl off", upload.Options{}, false},
		{"past hard_max_size", upload.Options{WriterTTL: ttl, HardMaxSize: 1}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			n := newNixClient(t)
			n.cacheHome = t.TempDir() // shared by every copy below
			top, closure := buildUpClosure(t, n)
			var a, b string
			for _, p := range closure {
				switch {
				case strings.Contains(p, "-up-a-"):
					a = p
				case strings.Contains(p, "-up-b-"):
					b = p
				}
			}
			e := newUpEnvOpts(t, t.TempDir(), false, nil, true, freshReads, tc.opts)
			netrc := writeNetrc(t, "ci", e.writeTok)
			copyTo := func(path string, opts ...string) error {
				args := append([]string{"copy", "--option", "netrc-file", netrc}, opts...)
				_, err := n.run(ctx, "nix", append(args, "--to", e.url+"?compression=zstd", path)...)
				return err
			}
			if err := copyTo(b); err != nil {
				t.Fatal(err)
			}
			st, err := e.up.Stats(ctx)
			if err != nil || st.Paths != 2 {
				t.Fatalf("after the upload of b: %+v %v", st, err)
			}
			// Just under the store's size: b, the only root, would go.
			code, body := e.do(t, "POST", fmt.Sprintf("/api/gc?max-size=%d", st.Bytes-1), e.adminTok, nil)
			if code != 200 {
				t.Fatalf("GC: %d %s", code, body)
			}
			var rep store.GCReport
			if err := json.Unmarshal([]byte(body), &rep); err != nil {
				t.Fatal(err)
			}
			hashOf := func(p string) string { return filepath.Base(p)[:32] }
			if tc.kept {
				if len(rep.Deleted) != 0 || rep.KeptForWriters != 1 {
					t.Fatalf("GC within writer_ttl: deleted %v, kept for writers %d; want nothing deleted, b kept", rep.Deleted, rep.KeptForWriters)
				}
				if err := copyTo(top); err != nil {
					t.Fatalf("upload of c referring to the kept b: %v", err)
				}
				if code, _ := e.do(t, "GET", "/"+hashOf(top)+".narinfo", "", nil); code != 200 {
					t.Fatalf("c not served: %d", code)
				}
				return
			}
			if len(rep.Deleted) == 0 || rep.Deleted[0] != b || rep.KeptForWriters != 0 {
				t.Fatalf("GC: deleted %v, kept for writers %d; want b deleted first", rep.Deleted, rep.KeptForWriters)
			}
			err = copyTo(top)
			if err == nil {
				t.Fatal("upload of c referring to the collected b succeeded: the client sent b again (if the client no longer trusts its cache, this test's premise is gone)")
			}
			if !strings.Contains(err.Error(), b) || !strings.Contains(err.Error(), "--option narinfo-cache-positive-ttl 0") {
				t.Fatalf("upload of c referring to the collected b: want the message naming %s and narinfo-cache-positive-ttl 0, got %v", b, err)
			}
			t.Logf("refused as expected: %v", err)
			if err := copyTo(top, "--option", "narinfo-cache-positive-ttl", "0"); err != nil {
				t.Fatalf("retry with narinfo-cache-positive-ttl 0: %v", err)
			}
			for _, p := range []string{a, b, top} {
				if code, _ := e.do(t, "GET", "/"+hashOf(p)+".narinfo", "", nil); code != 200 {
					t.Fatalf("%s not served after the retry: %d", p, code)
				}
			}
		})
	}
}
