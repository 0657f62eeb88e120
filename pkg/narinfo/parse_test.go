package narinfo_test

import (
	"bytes"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/bos55/concordia/pkg/narinfo"
)

const sample = `StorePath: /nix/store/jdiwj3i5n88iv3sh490z4f4r742j8a6v-concordia-narinfo-y
URL: nar/0p4axpxc598md21mccir26nymnxndad7dympvdsi1k41kjy3bzm1.nar
Compression: none
FileHash: sha256:0p4axpxc598md21mccir26nymnxndad7dympvdsi1k41kjy3bzm1
FileSize: 176
NarHash: sha256:0p4axpxc598md21mccir26nymnxndad7dympvdsi1k41kjy3bzm1
NarSize: 176
References: 59q6w1dld4lc999m6vawxa8msm0q9hgd-concordia-narinfo-x
Deriver: 00rymg9fbnm1bxl4x0l42g0dxap0hm7m-concordia-narinfo-y.drv
Sig: b.example-2:ixmomlk90JL549TLL9rawSjFHWSIld5JoOdiPwqRawANSjn8utEkxlRdNAezWuxZiIzGOgk6GIyMQENTUtiXCQ==
`

func TestParseFields(t *testing.T) {
	ni, err := narinfo.Parse(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	fh, _ := narinfo.ParseHash("sha256:0p4axpxc598md21mccir26nymnxndad7dympvdsi1k41kjy3bzm1")
	want := &narinfo.NarInfo{
		StorePath:   "/nix/store/jdiwj3i5n88iv3sh490z4f4r742j8a6v-concordia-narinfo-y",
		URL:         "nar/0p4axpxc598md21mccir26nymnxndad7dympvdsi1k41kjy3bzm1.nar",
		Compression: "none",
		FileHash:    &fh,
		FileSize:    176,
		NarHash:     fh,
		NarSize:     176,
		References:  []string{"59q6w1dld4lc999m6vawxa8msm0q9hgd-concordia-narinfo-x"},
		Deriver:     "00rymg9fbnm1bxl4x0l42g0dxap0hm7m-concordia-narinfo-y.drv",
		Sigs:        []string{"b.example-2:ixmomlk90JL549TLL9rawSjFHWSIld5JoOdiPwqRawANSjn8utEkxlRdNAezWuxZiIzGOgk6GIyMQENTUtiXCQ=="},
	}
	if !reflect.DeepEqual(ni, want) {
		t.Errorf("got %+v\nwant %+v", ni, want)
	}
	if ni.StoreDir() != "/nix/store" {
		t.Errorf("StoreDir %q", ni.StoreDir())
	}
}

// TestParseTolerant: what Nix accepts and how it is normalised.
func TestParseTolerant(t *testing.T) {
	edit := func(old, new string) string { return strings.Replace(sample, old, new, 1) }
	tests := []struct {
		name   string
		in     string
		check  func(n *narinfo.NarInfo) bool
		render string // "" means: renders back to sample, "=" to the input, "?" unchecked
	}{
		{"unknown keys ignored", edit("NarSize: 176\n", "NarSize: 176\nFoo: bar\nFoo: baz\nx-y: \n"), nil, ""},
		{"no Compression means bzip2", edit("Compression: none\n", ""),
			func(n *narinfo.NarInfo) bool { return n.Compression == "bzip2" }, edit("Compression: none", "Compression: bzip2")},
		{"empty Compression means bzip2", edit("Compression: none", "Compression: "),
			func(n *narinfo.NarInfo) bool { return n.Compression == "bzip2" }, edit("Compression: none", "Compression: bzip2")},
		{"no FileHash or FileSize", edit("FileHash: sha256:0p4axpxc598md21mccir26nymnxndad7dympvdsi1k41kjy3bzm1\nFileSize: 176\n", ""),
			func(n *narinfo.NarInfo) bool { return n.FileHash == nil && n.FileSize == 0 }, "="},
		{"upper case base16 FileHash", edit("FileHash: sha256:0p4axpxc598md21mccir26nymnxndad7dympvdsi1k41kjy3bzm1", "FileHash: sha256:A1FE35BC9C81CC1075DBB7FA769A6AB6DBEAAD11393256836815A5C2FAED8A5C"), nil, ""},
		{"base16 NarHash", edit("NarHash: sha256:0p4axpxc598md21mccir26nymnxndad7dympvdsi1k41kjy3bzm1",
			"NarHash: sha256:a1fe35bc9c81cc1075dbb7fa769a6ab6dbeaad11393256836815a5c2faed8a5c"), nil, ""},
		{"SRI NarHash", edit("NarHash: sha256:0p4axpxc598md21mccir26nymnxndad7dympvdsi1k41kjy3bzm1",
			"NarHash: sha256-of41vJyBzBB127f6dppqttvqrRE5MlaDaBWlwvrtilw="), nil, ""},
		{"keys in any order", "NarSize: 176\n" + strings.Replace(sample, "NarSize: 176\n", "", 1), nil, ""},
		{"sigs sorted and deduplicated", edit("Sig: ", "Sig: a-1:AAAA\nSig: z-1:AAAA\nSig: a-1:AAAA\nSig: "),
			func(n *narinfo.NarInfo) bool {
				return len(n.Sigs) == 3 && n.Sigs[0] == "a-1:AAAA" && n.Sigs[2] == "z-1:AAAA"
			}, "?"},
		{"references: runs of spaces, unsorted, duplicated",
			edit("References: 59q6w1dld4lc999m6vawxa8msm0q9hgd-concordia-narinfo-x",
				"References:  jdiwj3i5n88iv3sh490z4f4r742j8a6v-concordia-narinfo-y   59q6w1dld4lc999m6vawxa8msm0q9hgd-concordia-narinfo-x jdiwj3i5n88iv3sh490z4f4r742j8a6v-concordia-narinfo-y "),
			func(n *narinfo.NarInfo) bool {
				return reflect.DeepEqual(n.References, []string{"59q6w1dld4lc999m6vawxa8msm0q9hgd-concordia-narinfo-x", "jdiwj3i5n88iv3sh490z4f4r742j8a6v-concordia-narinfo-y"})
			}, "?"},
		{"empty references", edit("References: 59q6w1dld4lc999m6vawxa8msm0q9hgd-concordia-narinfo-x", "References: "),
			func(n *narinfo.NarInfo) bool { return len(n.References) == 0 }, "="},
		{"no References line", edit("References: 59q6w1dld4lc999m6vawxa8msm0q9hgd-concordia-narinfo-x\n", ""),
			func(n *narinfo.NarInfo) bool { return len(n.References) == 0 }, edit("References: 59q6w1dld4lc999m6vawxa8msm0q9hgd-concordia-narinfo-x", "References: ")},
		{"unknown-deriver", edit("Deriver: 00rymg9fbnm1bxl4x0l42g0dxap0hm7m-concordia-narinfo-y.drv", "Deriver: unknown-deriver"),
			func(n *narinfo.NarInfo) bool { return n.Deriver == "" }, "?"},
		{"System kept, after Deriver", sample + "System: x86_64-linux\n",
			func(n *narinfo.NarInfo) bool { return n.System == "x86_64-linux" },
			edit("Sig: ", "System: x86_64-linux\nSig: ")},
		{"CA normalised to nix32", sample + "CA: fixed:r:sha256:a1fe35bc9c81cc1075dbb7fa769a6ab6dbeaad11393256836815a5c2faed8a5c\n",
			func(n *narinfo.NarInfo) bool {
				return n.CA == "fixed:r:sha256:0p4axpxc598md21mccir26nymnxndad7dympvdsi1k41kjy3bzm1"
			}, sample + "CA: fixed:r:sha256:0p4axpxc598md21mccir26nymnxndad7dympvdsi1k41kjy3bzm1\n"},
		{"CA text and flat", sample + "CA: text:sha256:0p4axpxc598md21mccir26nymnxndad7dympvdsi1k41kjy3bzm1\n", nil, sample + "CA: text:sha256:0p4axpxc598md21mccir26nymnxndad7dympvdsi1k41kjy3bzm1\n"},
		{"CA fixed flat sha1", sample + "CA: fixed:sha1:kpcd173cq987hw957sx6m0868wv3x6d9\n", nil, sample + "CA: fixed:sha1:kpcd173cq987hw957sx6m0868wv3x6d9\n"},
		{"empty CA is none", sample + "CA: \n", func(n *narinfo.NarInfo) bool { return n.CA == "" }, ""},
		{"colon in value", edit("URL: nar/", "URL: http://x:1/nar/"), nil, "?"},
		{"other store dir", strings.ReplaceAll(sample, "/nix/store/", "/gnu/store/"),
			func(n *narinfo.NarInfo) bool { return n.StoreDir() == "/gnu/store" }, "?"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n, err := narinfo.Parse(strings.NewReader(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			if tc.check != nil && !tc.check(n) {
				t.Errorf("parsed %+v", n)
			}
			want := tc.render
			switch want {
			case "":
				want = sample
			case "=":
				want = tc.in
			}
			got := n.String()
			if want != "?" && got != want {
				t.Errorf("render\n%s\nwant\n%s", got, want)
			}
			again, err := narinfo.Parse(strings.NewReader(got))
			if err != nil || !reflect.DeepEqual(again, n) {
				t.Errorf("render/parse not stable: %v\n%+v\n%+v", err, n, again)
			}
		})
	}
}

func TestParseRejects(t *testing.T) {
	edit := func(old, new string) string {
		if !strings.Contains(sample, old) {
			t.Fatalf("sample lacks %q", old)
		}
		return strings.Replace(sample, old, new, 1)
	}
	tests := []struct {
		name, in string
		mention  string // the error must name the line or key
	}{
		{"empty", "", "StorePath"},
		{"no StorePath", edit("StorePath: /nix/store/jdiwj3i5n88iv3sh490z4f4r742j8a6v-concordia-narinfo-y\n", ""), "StorePath"},
		{"no NarHash", edit("NarHash: sha256:0p4axpxc598md21mccir26nymnxndad7dympvdsi1k41kjy3bzm1\n", ""), "NarHash"},
		{"no URL", edit("URL: nar/0p4axpxc598md21mccir26nymnxndad7dympvdsi1k41kjy3bzm1.nar\n", ""), "URL"},
		{"empty URL", edit("URL: nar/0p4axpxc598md21mccir26nymnxndad7dympvdsi1k41kjy3bzm1.nar", "URL: "), "URL"},
		{"no NarSize", edit("NarSize: 176\n", ""), "NarSize"},
		{"NarSize 0", edit("NarSize: 176", "NarSize: 0"), "NarSize"},
		{"NarSize negative", edit("NarSize: 176", "NarSize: -1"), "line 7: NarSize"},
		{"NarSize plus", edit("NarSize: 176", "NarSize: +176"), "line 7: NarSize"},
		{"NarSize hex", edit("NarSize: 176", "NarSize: 0x10"), "line 7: NarSize"},
		{"NarSize overflow", edit("NarSize: 176", "NarSize: 18446744073709551616"), "line 7: NarSize"},
		{"FileSize junk", edit("FileSize: 176", "FileSize: 1 76"), "line 5: FileSize"},
		{"duplicate StorePath", sample + "StorePath: /nix/store/jdiwj3i5n88iv3sh490z4f4r742j8a6v-concordia-narinfo-y\n", "line 11: StorePath appears twice"},
		{"duplicate NarSize", sample + "NarSize: 176\n", "line 11: NarSize appears twice"},
		{"duplicate References", sample + "References: \n", "References appears twice"},
		{"duplicate CA", sample + "CA: text:sha256:0p4axpxc598md21mccir26nymnxndad7dympvdsi1k41kjy3bzm1\nCA: text:sha256:0p4axpxc598md21mccir26nymnxndad7dympvdsi1k41kjy3bzm1\n", "line 12: CA appears twice"},
		{"duplicate empty CA", sample + "CA: \nCA: \n", "CA appears twice"},
		{"bad CA prefix", sample + "CA: nar:sha256:0p4axpxc598md21mccir26nymnxndad7dympvdsi1k41kjy3bzm1\n", "line 11: CA"},
		{"text CA not sha256", sample + "CA: text:sha1:kpcd173cq987hw957sx6m0868wv3x6d9\n", "line 11: CA"},
		{"CA SRI", sample + "CA: fixed:r:sha256-of41vJyBzBB127f6dppqttvqrRE5MlaDaBWlwvrtilw=\n", "line 11: CA"},
		{"CA without hash", sample + "CA: fixed:r:\n", "line 11: CA"},
		{"relative StorePath", edit("StorePath: /nix/store/", "StorePath: nix/store/"), "line 1: StorePath"},
		{"bad StorePath name", edit("-concordia-narinfo-y\n", "-concordia narinfo-y\n"), "line 1: StorePath"},
		{"bad reference", edit("59q6w1dld4lc999m6vawxa8msm0q9hgd-concordia-narinfo-x", "/nix/store/59q6w1dld4lc999m6vawxa8msm0q9hgd-concordia-narinfo-x"), "line 8: References"},
		{"bad deriver", edit("Deriver: 00rymg9fbnm1bxl4x0l42g0dxap0hm7m", "Deriver: 00rymg9fbnm1bxl4x0l42g0dxap0hm7"), "line 9: Deriver"},
		{"NarHash sha512", edit("NarHash: sha256:0p4axpxc598md21mccir26nymnxndad7dympvdsi1k41kjy3bzm1",
			"NarHash: sha512:2gs8k559z4rlahfx0y688s49m2vvszylcikrfinm30ly9rak69236nkam5ydvly1ai7xac99vxfc4ii84hawjbk876blyk1jfhkbbyx"), "line 6: NarHash"},
		{"NarHash without algo", edit("NarHash: sha256:", "NarHash: "), "line 6: NarHash"},
		{"FileHash short", edit("FileHash: sha256:0", "FileHash: sha256:"), "line 4: FileHash"},
		{"bad Sig", edit("Sig: b.example-2:", "Sig: b.example-2"), "line 10: Sig"},
		{"empty Sig", sample + "Sig: \n", "line 11: Sig"},
		{"no space after colon", edit("URL: ", "URL:"), "line 2"},
		{"bare key", edit("References: 59q6w1dld4lc999m6vawxa8msm0q9hgd-concordia-narinfo-x", "References:"), "line 8"},
		{"no colon", sample + "garbage\n", "line 11"},
		{"empty line", edit("URL:", "\nURL:"), "line 2"},
		{"leading colon", sample + ": x\n", "line 11"},
		{"CRLF", strings.ReplaceAll(sample, "\n", "\r\n"), "line 1: contains CR"},
		{"CR in value", edit("Compression: none", "Compression: no\rne"), "line 3: contains CR"},
		{"NUL", edit("Compression: none", "Compression: no\x00ne"), "line 3"},
		{"no final newline", strings.TrimSuffix(sample, "\n"), "newline"},
		{"too large", sample + "X: " + strings.Repeat("a", narinfo.MaxSize) + "\n", "larger than"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n, err := narinfo.Parse(strings.NewReader(tc.in))
			if err == nil {
				t.Fatalf("accepted: %+v", n)
			}
			if !errors.Is(err, narinfo.ErrInvalid) {
				t.Errorf("%v does not wrap ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("error %q does not mention %q", err, tc.mention)
			}
		})
	}
	if _, err := narinfo.Parse(iotest.ErrReader(os.ErrClosed)); !errors.Is(err, os.ErrClosed) {
		t.Errorf("read error: %v", err)
	}
}

func TestValidate(t *testing.T) {
	good, _ := narinfo.Parse(strings.NewReader(sample))
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, edit := range map[string]func(n *narinfo.NarInfo){
		"newline in URL":    func(n *narinfo.NarInfo) { n.URL += "\nNarSize: 1" },
		"newline in Sig":    func(n *narinfo.NarInfo) { n.Sigs = append(n.Sigs, "a:b\nStorePath: x") },
		"zero NarHash":      func(n *narinfo.NarInfo) { n.NarHash = narinfo.Hash{} },
		"sha1 FileHash":     func(n *narinfo.NarInfo) { n.FileHash = &narinfo.Hash{Algo: "sha1", Digest: make([]byte, 20)} },
		"bad reference":     func(n *narinfo.NarInfo) { n.References = []string{"x"} },
		"zero NarSize":      func(n *narinfo.NarInfo) { n.NarSize = 0 },
		"empty StorePath":   func(n *narinfo.NarInfo) { n.StorePath = "" },
		"CA not normalised": func(n *narinfo.NarInfo) { n.CA = "bogus" },
	} {
		n, _ := narinfo.Parse(strings.NewReader(sample))
		edit(n)
		if err := n.Validate(); err == nil {
			t.Errorf("%s: Validate accepted", name)
		}
	}
}

// TestParseManyReferences: the reference cap holds and costs little.
func TestParseManyReferences(t *testing.T) {
	ref := "59q6w1dld4lc999m6vawxa8msm0q9hgd-x"
	line := "References: " + strings.TrimSuffix(strings.Repeat(ref+" ", 25000), " ")
	in := strings.Replace(sample, "References: 59q6w1dld4lc999m6vawxa8msm0q9hgd-concordia-narinfo-x", line, 1)
	n, err := narinfo.Parse(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(n.References) != 1 {
		t.Errorf("%d references after dedup", len(n.References))
	}
	spaces := strings.Replace(sample, "References: 59q6w1dld4lc999m6vawxa8msm0q9hgd-concordia-narinfo-x", "References: "+strings.Repeat(" ", narinfo.MaxSize-len(sample)), 1)
	allocs := testing.AllocsPerRun(3, func() { narinfo.Parse(bytes.NewReader([]byte(spaces))) })
	if allocs > 200 {
		t.Errorf("%v allocations for a line of spaces", allocs)
	}
}

func TestHashPart(t *testing.T) {
	n, _ := narinfo.Parse(strings.NewReader(sample))
	if n.HashPart() != "jdiwj3i5n88iv3sh490z4f4r742j8a6v" {
		t.Errorf("HashPart %q", n.HashPart())
	}
	if (&narinfo.NarInfo{StorePath: "junk"}).HashPart() != "" {
		t.Error("HashPart of junk")
	}
}
