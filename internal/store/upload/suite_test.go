package upload_test

import (
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/storetest"
	"github.com/bos55/concordia/internal/store/upload"
	"github.com/bos55/concordia/pkg/narinfo"
)

// newSuiteStore opens an empty upload store whose NAR files the suite
// may damage on disk.
func newSuiteStore(t *testing.T) (*upload.Store, storetest.UploaderFixture) {
	dir := t.TempDir()
	s, err := openAt(t, dir, upload.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, storetest.UploaderFixture{Damage: func(name string) error {
		b := readBlob(t, dir, name)
		b[len(b)-3] ^= 0x20
		writeBlob(t, dir, name, b)
		return nil
	}}
}

// TestUploaderSuite runs the upload contract every upload backend
// shares on this one.
func TestUploaderSuite(t *testing.T) {
	storetest.RunUploader(t, func(t *testing.T) (store.Uploader, storetest.UploaderFixture) {
		return newSuiteStore(t)
	})
}

// broken is the upload store with one bug switched on by name, to show
// that the suite catches it.
type broken struct {
	*upload.Store
	bug   string
	names map[string][]byte // NAR files received, for serves-pending
}

func (b *broken) PutNAR(ctx context.Context, name string, body io.Reader) (*store.BlobInfo, error) {
	data, _ := io.ReadAll(body)
	bi, err := b.Store.PutNAR(ctx, name, strings.NewReader(string(data)))
	if err == nil {
		b.names[name] = data
	}
	if b.bug == "accepts-bad-nar" && errors.Is(err, store.ErrInvalid) {
		return &store.BlobInfo{Name: name}, nil
	}
	return bi, err
}

func (b *broken) OpenBlob(ctx context.Context, name string) (store.ReadSeekCloser, int64, error) {
	f, n, err := b.Store.OpenBlob(ctx, name)
	if data, ok := b.names[name]; ok && b.bug == "serves-pending" && errors.Is(err, store.ErrNotFound) {
		return nopCloser{strings.NewReader(string(data))}, int64(len(data)), nil
	}
	return f, n, err
}

type nopCloser struct{ *strings.Reader }

func (nopCloser) Close() error { return nil }

func (b *broken) PutNarInfo(ctx context.Context, hashPart string, body io.Reader) error {
	err := b.Store.PutNarInfo(ctx, hashPart, body)
	if b.bug == "accepts-changes" && errors.Is(err, store.ErrConflict) {
		return nil
	}
	if b.bug == "missing-ref-is-500" && errors.Is(err, store.ErrInvalid) {
		return errors.New("boom")
	}
	return err
}

func (b *broken) PutLog(ctx context.Context, drvBase string, body io.Reader) error {
	err := b.Store.PutLog(ctx, drvBase, body)
	if b.bug == "log-overwrite" && errors.Is(err, store.ErrConflict) {
		return nil
	}
	return err
}

func (b *broken) GCWith(ctx context.Context, p store.Policy, dryRun bool) (*store.GCReport, error) {
	if b.bug == "gc-ignores-pins" {
		pins, _ := b.Store.Pins(ctx)
		for _, pin := range pins {
			b.Store.Unpin(ctx, pin.StorePath)
		}
	}
	return b.Store.GCWith(ctx, p, dryRun)
}

func (b *broken) Adopt(ctx context.Context, name string, ni *narinfo.NarInfo, origin string) error {
	err := b.Store.Adopt(ctx, name, ni, origin)
	if b.bug == "adopt-accepts-mismatch" && errors.Is(err, store.ErrInvalid) {
		return nil
	}
	return err
}

func (b *broken) PathInfo(ctx context.Context, hashPart string) (*store.PathInfo, error) {
	info, err := b.Store.PathInfo(ctx, hashPart)
	if b.bug == "adopt-forgets-origin" && info != nil {
		info.Origin = ""
	}
	return info, err
}

func (b *broken) Verify(ctx context.Context, repair bool, progress func(done, total int64)) (*store.VerifyReport, error) {
	rep, err := b.Store.Verify(ctx, repair, progress)
	if b.bug == "verify-blind" && rep != nil {
		rep.Bad = nil
	}
	return rep, err
}

var uploaderBugs = []string{"accepts-bad-nar", "serves-pending", "accepts-changes", "missing-ref-is-500", "log-overwrite", "gc-ignores-pins", "verify-blind",
	"adopt-accepts-mismatch", "adopt-forgets-origin"}

// TestUploaderSuiteCatchesBugs runs the suite on broken stores, each in
// a child process because a failing subtest cannot be contained in this
// one.
func TestUploaderSuiteCatchesBugs(t *testing.T) {
	if os.Getenv("UPLOADER_BUG") != "" {
		t.Skip("child")
	}
	for _, bug := range uploaderBugs {
		t.Run(bug, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestBrokenUploaderChild$", "-test.count=1")
			cmd.Env = append(os.Environ(), "UPLOADER_BUG="+bug)
			out, err := cmd.CombinedOutput()
			if err == nil || !strings.Contains(string(out), "--- FAIL") {
				t.Errorf("suite passed an upload store with bug %s:\n%s", bug, out)
			}
		})
	}
}

func TestBrokenUploaderChild(t *testing.T) {
	bug := os.Getenv("UPLOADER_BUG")
	if bug == "" {
		t.Skip("only run by TestUploaderSuiteCatchesBugs")
	}
	storetest.RunUploader(t, func(t *testing.T) (store.Uploader, storetest.UploaderFixture) {
		s, fx := newSuiteStore(t)
		return &broken{Store: s, bug: bug, names: map[string][]byte{}}, fx
	})
}
