package upstreamtest_test

import (
	"bytes"
	"crypto/sha256"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/bos55/concordia/internal/upstream/upstreamtest"
	"github.com/bos55/concordia/pkg/narinfo"
)

func get(t *testing.T, url string) (int, []byte) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

func TestPathsAndFaults(t *testing.T) {
	sk, pk := upstreamtest.Key(t, "cache.nixos.org-1")
	nar := []byte("a NAR, or something like one")
	p := upstreamtest.NewPath(t, sk, "hello", nar, "zstd")
	s := upstreamtest.New(t)
	s.Add(p)

	code, body := get(t, s.URL+"/"+p.HashPart()+".narinfo")
	ni, err := narinfo.Parse(bytes.NewReader(body))
	if code != 200 || err != nil {
		t.Fatalf("narinfo: %d %v", code, err)
	}
	if _, ok := ni.Verify([]narinfo.PublicKey{pk}); !ok || ni.HashPart() != p.HashPart() {
		t.Fatal("narinfo not signed, or for another path")
	}
	h := sha256.Sum256(nar)
	if !ni.NarHash.Equal(narinfo.SHA256(h[:])) || ni.NarSize != uint64(len(nar)) || !strings.HasSuffix(ni.URL, ".nar.zst") {
		t.Fatalf("narinfo does not describe the NAR: %s", body)
	}
	_, file := get(t, s.URL+"/"+ni.URL)
	dec, _ := zstd.NewReader(nil)
	defer dec.Close()
	if got, err := dec.DecodeAll(file, nil); err != nil || !bytes.Equal(got, nar) {
		t.Fatalf("NAR file does not decode to the NAR: %v", err)
	}

	for f, check := range map[upstreamtest.Fault]func(*narinfo.NarInfo) bool{
		upstreamtest.Unsigned: func(n *narinfo.NarInfo) bool { return len(n.Sigs) == 0 },
		upstreamtest.WrongSignature: func(n *narinfo.NarInfo) bool {
			_, ok := n.Verify([]narinfo.PublicKey{pk})
			return !ok && len(n.Sigs) == 1
		},
		upstreamtest.WrongPath: func(n *narinfo.NarInfo) bool {
			_, ok := n.Verify([]narinfo.PublicKey{pk})
			return ok && n.HashPart() != p.HashPart()
		},
	} {
		s.SetFault(p.HashPart(), upstreamtest.NarInfo, f)
		_, body := get(t, s.URL+"/"+p.HashPart()+".narinfo")
		n, err := narinfo.Parse(bytes.NewReader(body))
		if err != nil || !check(n) {
			t.Errorf("fault %d: %v\n%s", f, err, body)
		}
	}
	s.SetFault("", upstreamtest.NAR, upstreamtest.WrongNarHash)
	if _, got := get(t, s.URL+"/"+ni.URL); bytes.Equal(got, file) || len(got) != len(file) {
		t.Error("WrongNarHash: same bytes")
	}
	if n := s.NarInfoRequests(p.HashPart()); n != 4 {
		t.Errorf("%d narinfo requests, want 4", n)
	}
	if n := s.NARRequests(p.HashPart()); n != 2 {
		t.Errorf("%d NAR requests, want 2", n)
	}
	if code, _ := get(t, s.URL+"/"+strings.Repeat("0", 32)+".narinfo"); code != 404 {
		t.Errorf("unknown path: %d", code)
	}
}
