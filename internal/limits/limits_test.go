package limits_test

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/bos55/concordia/internal/compress"
	"github.com/bos55/concordia/internal/limits"
	"github.com/bos55/concordia/pkg/nar"
)

// TestCheckNamesTheKey: each bound's refusal names its config key and
// answers 413 for sizes, 400 for shapes; stored data answers 500.
func TestCheckNamesTheKey(t *testing.T) {
	l := limits.Default()
	for _, tc := range []struct {
		err    error
		key    string
		status int
	}{
		{&nar.LimitError{Limit: nar.LimitSize}, limits.KeyNARSize, 413},
		{&nar.LimitError{Limit: nar.LimitDepth}, limits.KeyDepth, 400},
		{&nar.LimitError{Limit: nar.LimitEntries}, limits.KeyEntries, 400},
		{&nar.LimitError{Limit: nar.LimitNameLen}, limits.KeyNameLen, 400},
		{&nar.LimitError{Limit: nar.LimitTargetLen}, limits.KeyTargetLen, 400},
		{&compress.LimitError{Limit: compress.LimitXZDict}, limits.KeyXZDict, 413},
		{&compress.LimitError{Limit: compress.LimitZstdWindow}, limits.KeyZstdWindow, 413},
		{&compress.LimitError{Limit: compress.LimitSize}, limits.KeyNARSize, 413},
		{&compress.LimitError{Limit: compress.LimitRatio}, limits.KeyRatio, 413},
	} {
		t.Run(tc.key, func(t *testing.T) {
			wrapped := fmt.Errorf("put NAR x: %w", tc.err)
			err := l.Check(wrapped)
			var le *limits.Error
			if !errors.As(err, &le) || le.Key != tc.key || le.HTTPStatus() != tc.status || !strings.Contains(err.Error(), tc.key) {
				t.Fatalf("Check = %v (%+v), want key %s, status %d", err, le, tc.key, tc.status)
			}
			if !errors.Is(err, tc.err) {
				t.Error("the original error is not wrapped")
			}
			var se interface{ HTTPStatus() int }
			if errors.As(limits.Stored(err), &se); se.HTTPStatus() != http.StatusInternalServerError {
				t.Errorf("stored: status %d", se.HTTPStatus())
			}
		})
	}
	plain := errors.New("disk on fire")
	if l.Check(plain) != plain || limits.Stored(plain) != plain {
		t.Error("errors without a limit must pass unchanged")
	}
}

// A real refusal reads well: the reader's words, then the key and value
// as the config file writes them.
func TestErrorMessage(t *testing.T) {
	l := limits.Default()
	l.MaxDepth = 2
	var b bytes.Buffer
	w := nar.NewWriter(&b)
	for _, p := range []string{"/", "/a", "/a/b", "/a/b/c"} {
		w.WriteHeader(&nar.Header{Path: p, Type: nar.TypeDirectory})
	}
	w.Close()
	_, err := nar.ValidateOptions(&b, l.NAR())
	msg := l.Check(err).Error()
	if !strings.Contains(msg, `entry "c" is nested 3 directories deep`) || !strings.HasSuffix(msg, "(limits.max_depth = 2)") {
		t.Errorf("message %q", msg)
	}
	msg = l.Check(&compress.LimitError{Limit: compress.LimitXZDict, Max: 64 << 20, Got: 1<<32 - 1}).Error()
	if !strings.HasSuffix(msg, `(limits.xz_dict_max = "64M")`) {
		t.Errorf("message %q", msg)
	}
}

// A struct that sets one bound keeps the defaults of the others.
func TestOrDefault(t *testing.T) {
	l := limits.Limits{MaxDepth: 7}.OrDefault()
	want := limits.Default()
	want.MaxDepth = 7
	if l != want {
		t.Errorf("OrDefault = %+v, want %+v", l, want)
	}
	if (limits.Limits{}).OrDefault() != limits.Default() {
		t.Error("the zero value is not the defaults")
	}
}

// TestBoundSigs: the cache's own signatures always stay; the others are
// kept in the order given (stored before new) while the count and the
// rendered size are within the bounds.
func TestBoundSigs(t *testing.T) {
	l := limits.Default()
	l.MaxSignatures = 3
	stored := []string{"a-1:AAAA", "b-1:BBBB"}
	upload := []string{"c-1:CCCC", "a-1:AAAA", "d-1:DDDD", "cache-1:OWN"}
	kept, dropped := l.BoundSigs(100, []string{"cache-1"}, stored, upload)
	if strings.Join(kept, " ") != "cache-1:OWN a-1:AAAA b-1:BBBB" || strings.Join(dropped, " ") != "c-1:CCCC d-1:DDDD" {
		t.Fatalf("kept %v, dropped %v", kept, dropped)
	}
	if l.SigsWithin(100, kept) != true || l.SigsWithin(100, append(kept, "e-1:E")) {
		t.Fatal("SigsWithin disagrees with the count bound")
	}
	// The size bound: a document near the limit keeps only its own.
	l.MaxSignatures = 16
	kept, _ = l.BoundSigs(int(l.MaxNarinfoSize)-20, []string{"cache-1"}, stored, []string{"cache-1:OWN"})
	if len(kept) != 1 || kept[0] != "cache-1:OWN" {
		t.Fatalf("near the size limit kept %v", kept)
	}
	if l.SigsWithin(int(l.MaxNarinfoSize)-5, []string{"x:y"}) {
		t.Fatal("SigsWithin ignores the size bound")
	}
}

func TestDocumentRefusalsNameTheirKeys(t *testing.T) {
	l := limits.Default()
	for _, tc := range []struct {
		err    error
		key    string
		status int
	}{
		{l.NarinfoTooLarge(errors.New("narinfo too large")), limits.KeyNarinfoSize, 413},
		{l.TooManySignatures(17, errors.New("narinfo")), limits.KeySignatures, 400},
		{l.LogTooLarge(errors.New("log too large")), limits.KeyLogSize, 413},
	} {
		var le *limits.Error
		if !errors.As(tc.err, &le) || le.HTTPStatus() != tc.status || !strings.Contains(tc.err.Error(), tc.key) {
			t.Errorf("%v: want %d naming %s", tc.err, tc.status, tc.key)
		}
	}
}

// TestOrDefaultFillsDocumentBounds: Limits that set NAR bounds only (as
// written before the document bounds) get the document defaults.
func TestOrDefaultFillsDocumentBounds(t *testing.T) {
	l := limits.Limits{MaxNARSize: 1 << 20, MaxDepth: 8}.OrDefault()
	d := limits.Default()
	if l.MaxNARSize != 1<<20 || l.MaxNarinfoSize != d.MaxNarinfoSize || l.MaxSignatures != d.MaxSignatures ||
		l.MaxLogSize != d.MaxLogSize || l.MaxPinsPerToken != d.MaxPinsPerToken {
		t.Fatalf("%+v", l)
	}
}
