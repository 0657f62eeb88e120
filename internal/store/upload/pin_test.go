package upload_test

import (
	"context"
	"errors"
	"testing"

	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/internal/store/upload"
)

// TestPinOwners: a pin records who made it; only that owner (or anyOwner,
// the admin) removes it, a pin never changes hands, and a refused attempt
// changes nothing.
func TestPinOwners(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir(), upload.Options{})
	a, b := newPath(t, "pin-a", []byte("a")), newPath(t, "pin-b", []byte("b"))
	for _, p := range []*fakePath{a, b} {
		if err := p.upload(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	pins := func() map[string]upload.Pin {
		l, err := s.Pins(ctx)
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]upload.Pin{}
		for _, p := range l {
			m[p.StorePath] = p
		}
		return m
	}
	if ex, err := s.PinAs(ctx, a.info.StorePath, "deploy d-1", "deploy"); err != nil || ex != nil {
		t.Fatalf("pin: %v %v", ex, err)
	}
	if err := s.Pin(ctx, b.info.StorePath, "by hand"); err != nil { // on the store directly: no owner
		t.Fatal(err)
	}
	before := pins()
	if before[a.info.StorePath].Owner != "deploy" || before[b.info.StorePath].Owner != "" {
		t.Fatalf("owners: %+v", before)
	}
	// Another token pinning the same path leaves the pin as it is.
	ex, err := s.PinAs(ctx, a.info.StorePath, "taken", "other")
	if err != nil || ex == nil || ex.Owner != "deploy" {
		t.Fatalf("pin over another's: %+v %v", ex, err)
	}
	// Unpinning another's pin, or a pin without owner, is refused.
	for _, tc := range []struct{ path, owner string }{{a.info.StorePath, "other"}, {b.info.StorePath, "deploy"}, {b.info.StorePath, "other"}} {
		if err := s.UnpinAs(ctx, tc.path, tc.owner, false); !errors.Is(err, upload.ErrNotOwner) {
			t.Fatalf("unpin %s as %s: %v", tc.path, tc.owner, err)
		}
	}
	after := pins()
	if len(after) != 2 || after[a.info.StorePath] != before[a.info.StorePath] || after[b.info.StorePath] != before[b.info.StorePath] {
		t.Fatalf("refused attempts changed the pins:\n%+v\n%+v", before, after)
	}
	// The owner re-pins (refreshing the note) and unpins; the admin unpins
	// anyone's.
	if ex, err := s.PinAs(ctx, a.info.StorePath, "deploy d-2", "deploy"); err != nil || ex != nil {
		t.Fatalf("re-pin: %v %v", ex, err)
	}
	if pins()[a.info.StorePath].Note != "deploy d-2" {
		t.Fatal("re-pin by the owner did not refresh the note")
	}
	if err := s.UnpinAs(ctx, a.hash, "deploy", false); err != nil {
		t.Fatal(err)
	}
	if err := s.UnpinAs(ctx, a.hash, "deploy", false); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("second unpin: %v", err)
	}
	if err := s.UnpinAs(ctx, b.info.StorePath, "admin", true); err != nil {
		t.Fatal(err)
	}
	if len(pins()) != 0 {
		t.Fatalf("pins left: %+v", pins())
	}
}
