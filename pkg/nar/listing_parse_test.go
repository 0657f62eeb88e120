package nar_test

import (
	"bytes"
	"errors"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/bos55/concordia/pkg/nar"
)

// TestParseListingRoundTrip: what the listing writer renders for a varied
// tree (the names JSON can carry) parses back to the same listing.
func TestParseListingRoundTrip(t *testing.T) {
	tr := tree{{path: ".", kind: 'd'}}
	for _, n := range variedTree() {
		if utf8.ValidString(n.path) && utf8.ValidString(n.data) {
			tr = append(tr, n)
		}
	}
	root := t.TempDir()
	tr.build(t, filepath.Join(root, "x"))
	var b bytes.Buffer
	if _, err := nar.DumpPath(&b, filepath.Join(root, "x")); err != nil {
		t.Fatal(err)
	}
	want, err := nar.ListingFromReader(bytes.NewReader(b.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	doc, err := want.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	got, err := nar.ParseListing(bytes.NewReader(doc))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatal("parsed listing differs from the written one")
	}
	if n := got.Lookup("/sub/dir/x"); n == nil || n.Type != nar.TypeSymlink || n.Target != "../inner" {
		t.Fatalf("lookup: %+v", n)
	}
}

// TestParseListingRefuses plays the hostile cache: every malformed or
// over-limit document is ErrListing, never a panic or a half listing.
func TestParseListingRefuses(t *testing.T) {
	link := `{"type":"symlink","target":"/nix/store/x"}`
	for _, tc := range []struct{ name, doc string }{
		{"empty", ``},
		{"not json", `nope`},
		{"array", `[]`},
		{"no version", `{"root":` + link + `}`},
		{"version 2", `{"version":2,"root":` + link + `}`},
		{"version string", `{"version":"1","root":` + link + `}`},
		{"no root", `{"version":1}`},
		{"two roots", `{"version":1,"root":` + link + `,"root":` + link + `}`},
		{"trailing", `{"version":1,"root":` + link + `}{}`},
		{"truncated", `{"version":1,"root":{"type":"directory","entries":{"a":`},
		{"unknown type", `{"version":1,"root":{"type":"fifo"}}`},
		{"no type", `{"version":1,"root":{"size":1}}`},
		{"regular without size", `{"version":1,"root":{"type":"regular"}}`},
		{"negative size", `{"version":1,"root":{"type":"regular","size":-1}}`},
		{"fractional size", `{"version":1,"root":{"type":"regular","size":1.5}}`},
		{"huge size", `{"version":1,"root":{"type":"regular","size":99999999999999999999}}`},
		{"negative offset", `{"version":1,"root":{"type":"regular","size":1,"narOffset":-8}}`},
		{"executable string", `{"version":1,"root":{"type":"regular","size":1,"executable":"yes"}}`},
		{"regular with entries", `{"version":1,"root":{"type":"regular","size":1,"entries":{}}}`},
		{"symlink without target", `{"version":1,"root":{"type":"symlink"}}`},
		{"empty target", `{"version":1,"root":{"type":"symlink","target":""}}`},
		{"NUL in target", `{"version":1,"root":{"type":"symlink","target":"a\u0000b"}}`},
		{"long target", `{"version":1,"root":{"type":"symlink","target":"` + strings.Repeat("t", 4096) + `"}}`},
		{"symlink with size", `{"version":1,"root":{"type":"symlink","target":"a","size":1}}`},
		{"directory with target", `{"version":1,"root":{"type":"directory","target":"a"}}`},
		{"key twice", `{"version":1,"root":{"type":"regular","type":"regular","size":1}}`},
		{"dot", `{"version":1,"root":{"type":"directory","entries":{".":` + link + `}}}`},
		{"dotdot", `{"version":1,"root":{"type":"directory","entries":{"..":` + link + `}}}`},
		{"slash", `{"version":1,"root":{"type":"directory","entries":{"a/b":` + link + `}}}`},
		{"empty name", `{"version":1,"root":{"type":"directory","entries":{"":` + link + `}}}`},
		{"NUL name", `{"version":1,"root":{"type":"directory","entries":{"a\u0000":` + link + `}}}`},
		{"long name", `{"version":1,"root":{"type":"directory","entries":{"` + strings.Repeat("n", 256) + `":` + link + `}}}`},
		{"duplicate entry", `{"version":1,"root":{"type":"directory","entries":{"a":` + link + `,"a":` + link + `}}}`},
		{"deep", `{"version":1,"root":` + strings.Repeat(`{"type":"directory","entries":{"d":`, 20000) + link + strings.Repeat(`}}`, 20000) + `}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := nar.ParseListing(strings.NewReader(tc.doc))
			if !errors.Is(err, nar.ErrListing) || l != nil {
				t.Fatalf("got %v, %v; want ErrListing", l, err)
			}
		})
	}
}

func TestParseListingLimits(t *testing.T) {
	doc := `{"version":1,"root":{"type":"directory","entries":{"a":{"type":"directory","entries":{"b":{"type":"regular","size":10}}},"c":{"type":"regular","size":1}}}}`
	for _, tc := range []struct {
		name  string
		o     nar.ReaderOptions
		limit bool
	}{
		{"none", nar.ReaderOptions{}, false},
		{"depth 2", nar.ReaderOptions{MaxDepth: 2}, false},
		{"depth 1", nar.ReaderOptions{MaxDepth: 1}, true},
		{"entries 4", nar.ReaderOptions{MaxEntries: 4}, false},
		{"entries 3", nar.ReaderOptions{MaxEntries: 3}, true},
		{"size 9", nar.ReaderOptions{MaxSize: 9}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := nar.ParseListingOptions(strings.NewReader(doc), tc.o)
			if (err != nil) != tc.limit || (err != nil && !errors.Is(err, nar.ErrListing)) {
				t.Fatalf("err %v, want a limit: %v", err, tc.limit)
			}
		})
	}
	// Keys a later Nix may add are skipped; any entry order is sorted.
	l, err := nar.ParseListing(strings.NewReader(`{"version":1,"extra":[{"x":[1]}],"root":{"type":"directory","future":{"a":1},"entries":{"b":{"type":"regular","size":1},"a":{"type":"symlink","target":"b"}}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if n := l.Lookup("a"); n == nil || n.Target != "b" || l.Root.Entries[0].Name != "a" {
		t.Fatalf("%+v", l.Root)
	}
}

// FuzzParseListing: no document panics the parser, every refusal is
// ErrListing, and what it accepts renders and parses back to itself.
func FuzzParseListing(f *testing.F) {
	for _, s := range []string{
		`{"version":1,"root":{"type":"symlink","target":"/nix/store/aaaa-linux-6.6.1/bzImage"}}`,
		`{"version":1,"root":{"type":"directory","entries":{"kernel":{"type":"symlink","target":"/nix/store/x/bzImage"},"bin":{"type":"directory","entries":{"switch-to-configuration":{"type":"regular","size":120,"executable":true,"narOffset":400}}}}}}`,
		`{"version":1,"root":{"type":"regular","size":0}}`,
		`{"version":1,"root":{"type":"directory","entries":{}}}`,
		`{"version":1,"root":{"type":"directory","entries":{"\u00e4\n":{"type":"regular","size":3}}}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		l, err := nar.ParseListingOptions(bytes.NewReader(doc), nar.ReaderOptions{MaxDepth: 64, MaxEntries: 10000})
		if err != nil {
			if !errors.Is(err, nar.ErrListing) || l != nil {
				t.Fatalf("refusal %v (listing %v) is not ErrListing", err, l)
			}
			return
		}
		out, err := l.MarshalJSON()
		if err != nil {
			t.Fatalf("accepted listing does not render: %v", err)
		}
		again, err := nar.ParseListing(bytes.NewReader(out))
		if err != nil {
			t.Fatalf("rendered listing %q does not parse: %v", out, err)
		}
		if !reflect.DeepEqual(again, l) {
			t.Fatalf("round trip changed the listing: %q", out)
		}
	})
}
