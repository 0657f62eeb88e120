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

// TestGroupingMetrics: the narinfo commits and their transactions, and
// the NAR directory's syncs and their fsyncs, are exported; commits one
// after another are a transaction each, and commits at once never take
// more transactions than commits.
func TestGroupingMetrics(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir(), upload.Options{InlineMax: -1})
	var paths []*fakePath
	for i := range 12 {
		p := newPath(t, fmt.Sprintf("metrics-%d", i), []byte(fmt.Sprintf("contents %d", i)))
		if _, err := s.PutNAR(ctx, p.fileName, strings.NewReader(string(p.file))); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	for _, p := range paths[:3] {
		if err := s.PutNarInfo(ctx, p.hash, strings.NewReader(p.narinfo())); err != nil {
			t.Fatal(err)
		}
	}
	const commits, txs = "concordia_upload_narinfo_commits_total", "concordia_upload_narinfo_commit_transactions_total"
	if v := gcValues(t, s, commits, txs); v[commits] != 3 || v[txs] != 3 {
		t.Errorf("3 commits one after another: %v commits, %v transactions, want 3, 3", v[commits], v[txs])
	}
	for _, err := range atOnce(9, func(i int) error {
		p := paths[3+i]
		return s.PutNarInfo(ctx, p.hash, strings.NewReader(p.narinfo()))
	}) {
		if err != nil {
			t.Fatal(err)
		}
	}
	v := gcValues(t, s)
	if v[commits] != 12 || v[txs] < 4 || v[txs] > 12 {
		t.Errorf("after 9 more at once: %v commits, %v transactions, want 12 and 4 to 12", v[commits], v[txs])
	}
	if sharedBackend {
		return // its blobs may not be a directory
	}
	const syncs, fsyncs = "concordia_upload_blob_dir_syncs_total", "concordia_upload_blob_dir_fsyncs_total"
	v = gcValues(t, s, syncs, fsyncs)
	if v[syncs] < 12 || v[fsyncs] < 1 || v[fsyncs] > v[syncs] {
		t.Errorf("after 12 NARs: %v directory syncs, %v fsyncs, want at least 12 and 1 to that", v[syncs], v[fsyncs])
	}
}
