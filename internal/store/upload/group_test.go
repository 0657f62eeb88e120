package upload_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/bos55/concordia/internal/store/upload"
)

// TestConcurrentNarInfoCommits: narinfo commits that arrive together share
// index transactions (kv.Group), and each answer is still its own. 48
// paths whose NARs are in are committed at once, among them 16 that must
// be refused (a reference not here, or a NarHash not of the NAR). The
// good ones are served, also after the store is reopened (their 200 meant
// on disk); the refused ones are not, each refusal naming its own reason.
func TestConcurrentNarInfoCommits(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := openStore(t, dir, upload.Options{})
	type job struct {
		p      *fakePath
		body   string
		refuse string // what the refusal says; "" for a good one
	}
	var jobs []job
	for i := 0; i < 48; i++ {
		p := newPath(t, fmt.Sprintf("grouped-%d", i), []byte(fmt.Sprintf("contents %d", i)))
		if _, err := s.PutNAR(ctx, p.fileName, strings.NewReader(string(p.file))); err != nil {
			t.Fatal(err)
		}
		j := job{p: p, body: p.narinfo()}
		switch i % 3 {
		case 1:
			if i%2 == 0 {
				missing := newPath(t, fmt.Sprintf("never-uploaded-%d", i), []byte("x"))
				q := *p.info
				q.References = []string{missing.base}
				j.body, j.refuse = q.String(), missing.base
			} else {
				other := newPath(t, fmt.Sprintf("other-%d", i), []byte("other"))
				q := *p.info
				q.NarHash = other.info.NarHash
				j.body, j.refuse = q.String(), "NarHash"
			}
		}
		jobs = append(jobs, j)
	}
	errs := atOnce(len(jobs), func(i int) error {
		return s.PutNarInfo(ctx, jobs[i].p.hash, strings.NewReader(jobs[i].body))
	})
	check := func(s *upload.Store, when string) {
		for i, j := range jobs {
			if j.refuse == "" {
				if errs[i] != nil {
					t.Errorf("%s: %v", j.p.base, errs[i])
				}
				if ni, err := s.NarInfo(ctx, j.p.hash); err != nil || ni.StorePath != j.p.info.StorePath {
					t.Errorf("%s: %s served as %v, %v", when, j.p.base, ni, err)
				}
				continue
			}
			if errs[i] == nil || !strings.Contains(errs[i].Error(), j.refuse) {
				t.Errorf("%s: refusal %v, want one naming %q", j.p.base, errs[i], j.refuse)
			}
			if ni, err := s.NarInfo(ctx, j.p.hash); err == nil {
				t.Errorf("%s: refused %s is served: %v", when, j.p.base, ni)
			}
		}
	}
	check(s, "after the commits")
	s.Close()
	check(openStore(t, dir, upload.Options{}), "reopened")
}
