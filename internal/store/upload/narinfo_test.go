package upload

import (
	"crypto/sha256"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/bos55/concordia/internal/limits"
	"github.com/bos55/concordia/internal/store"
	"github.com/bos55/concordia/pkg/narinfo"
)

// TestValidateNarInfo is every refusal of an uploaded narinfo, judged by
// checkForm and validateNarInfo alone: each row changes one thing of a
// narinfo the judgement accepts, or of what the store holds, and names
// the refusal it must get.
func TestValidateNarInfo(t *testing.T) {
	const (
		hp    = "0123456789abcdfghijklmnpqrsvwxyz"
		dep   = "11111111111111111111111111111111-dep"
		other = "22222222222222222222222222222222-other"
		// upstream is where the rows with adopt set pulled the path.
		upstream = "https://cache.nixos.org"
	)
	sum := func(s string) []byte { h := sha256.Sum256([]byte(s)); return h[:] }
	narHash, fileHash := sum("nar"), sum("file")
	fh32 := nixbase32.EncodeToString(fileHash)
	base := func() *narinfo.NarInfo {
		fh := narinfo.SHA256(fileHash)
		return &narinfo.NarInfo{
			StorePath: "/nix/store/" + hp + "-hello", URL: "nar/" + fh32 + ".nar.zst", Compression: "zstd",
			FileHash: &fh, FileSize: 50, NarHash: narinfo.SHA256(narHash), NarSize: 100,
			References: []string{hp + "-hello", dep}, Deriver: "33333333333333333333333333333333-hello.drv",
		}
	}
	blob := func() *blobRec {
		return &blobRec{Compression: "zstd", FileHash: fileHash, FileSize: 50, NarHash: narHash, NarSize: 100}
	}
	hold := func() *holdings {
		return &holdings{storeDir: "/nix/store", blob: blob(), blobName: fh32 + ".nar.zst",
			has: func(ref string) bool { return ref == dep }}
	}
	same := func() *served {
		return &served{storePath: "/nix/store/" + hp + "-hello", narHash: narHash, refs: []string{hp + "-hello", dep}}
	}
	tomb := func() *tombRec {
		return &tombRec{StorePath: "/nix/store/" + hp + "-hello", NarHash: narHash,
			RefsHash: refsHash([]string{hp + "-hello", dep}), Collected: time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC).Unix()}
	}
	for _, tc := range []struct {
		name     string
		hashPart string // default hp
		ni       func(*narinfo.NarInfo)
		h        func(*holdings)
		want     error  // the sentinel; nil: accepted
		msg      string // a part of the message
		keep     bool   // accepted as the path the index has
		adopt    string // adopted (checkAdoption) from this upstream, "-" from none; "": uploaded
	}{
		{name: "accepted"},
		{name: "without FileHash and FileSize", ni: func(ni *narinfo.NarInfo) { ni.FileHash, ni.FileSize = nil, 0 }},
		{name: "self reference only", ni: func(ni *narinfo.NarInfo) { ni.References = []string{hp + "-hello"} }},
		{name: "no references", ni: func(ni *narinfo.NarInfo) { ni.References = nil }},
		{name: "without deriver", ni: func(ni *narinfo.NarInfo) { ni.Deriver = "" }},
		{name: "content addressed", ni: func(ni *narinfo.NarInfo) { ni.CA = "fixed:r:sha256:" + nixbase32.EncodeToString(narHash) }},
		{name: "uncompressed", ni: func(ni *narinfo.NarInfo) { ni.URL, ni.Compression = "nar/"+fh32+".nar", "none" },
			h: func(h *holdings) { h.blob.Compression, h.blobName = "none", fh32+".nar" }},
		{name: "bare .nar in gzip, as Nix names it", ni: func(ni *narinfo.NarInfo) { ni.URL, ni.Compression = "nar/"+fh32+".nar", "gzip" },
			h: func(h *holdings) { h.blob.Compression, h.blobName = "gzip", fh32+".nar.gz" }},
		{name: "bare .nar, compression not the file's", ni: func(ni *narinfo.NarInfo) { ni.URL, ni.Compression = "nar/"+fh32+".nar", "none" },
			h:    func(h *holdings) { h.blob.Compression, h.blobName = "gzip", fh32+".nar.gz" },
			want: store.ErrInvalid, msg: `Compression "none" does not match the uploaded NAR file ` + fh32 + ".nar.gz, which is in gzip"},
		{name: "bare .nar said to be lz4", ni: func(ni *narinfo.NarInfo) { ni.URL, ni.Compression = "nar/"+fh32+".nar", "lz4" },
			want: store.ErrInvalid, msg: `Compression "lz4" of the NAR file ` + fh32 + ".nar is not one this cache takes"},
		{name: "too many signatures", ni: func(ni *narinfo.NarInfo) {
			for i := range limits.DefaultMaxSignatures + 1 {
				ni.Sigs = append(ni.Sigs, "k"+strings.Repeat("x", i)+":c2ln")
			}
		}, want: store.ErrInvalid, msg: "17 signatures"},
		{name: "store path malformed", ni: func(ni *narinfo.NarInfo) { ni.StorePath = "/nix/store/hello" }, want: store.ErrInvalid, msg: "StorePath"},
		{name: "store path in another store", ni: func(ni *narinfo.NarInfo) { ni.StorePath = "/gnu/store/" + hp + "-hello" },
			want: store.ErrInvalid, msg: "is not in /nix/store"},
		{name: "store path not the URL's", hashPart: "44444444444444444444444444444444",
			want: store.ErrInvalid, msg: "does not have the hash part 44444444444444444444444444444444 of the URL"},
		{name: "URL outside nar/", ni: func(ni *narinfo.NarInfo) { ni.URL = fh32 + ".nar.zst" }, want: store.ErrInvalid, msg: "must be nar/<file hash>"},
		{name: "URL not a NAR file name", ni: func(ni *narinfo.NarInfo) { ni.URL = "nar/" + fh32 + ".tar" }, want: store.ErrInvalid, msg: "NAR file name"},
		{name: "URL with a short file hash", ni: func(ni *narinfo.NarInfo) { ni.URL = "nar/abc.nar.zst" }, want: store.ErrInvalid, msg: "nix32 characters"},
		{name: "URL in lz4", ni: func(ni *narinfo.NarInfo) { ni.URL, ni.Compression = "nar/"+fh32+".nar.lz4", "lz4" },
			h: func(h *holdings) { h.blob.Compression, h.blobName = "lz4", fh32+".nar.lz4" }},
		{name: "URL in br, NAR in zstd", ni: func(ni *narinfo.NarInfo) { ni.URL, ni.Compression = "nar/"+fh32+".nar.br", "br" },
			want: store.ErrInvalid, msg: `Compression "br" does not match the uploaded NAR file`},
		{name: "compression not the URL's", ni: func(ni *narinfo.NarInfo) { ni.Compression = "xz" },
			want: store.ErrInvalid, msg: `Compression "xz" does not match the NAR file`},
		{name: "reference malformed", ni: func(ni *narinfo.NarInfo) { ni.References = []string{"not-a-path"} },
			want: store.ErrInvalid, msg: "reference not-a-path"},
		{name: "self hash with another name", ni: func(ni *narinfo.NarInfo) { ni.References = []string{hp + "-impostor"} },
			want: store.ErrInvalid, msg: "has the hash of /nix/store/" + hp + "-hello but another name"},
		{name: "deriver not a derivation", ni: func(ni *narinfo.NarInfo) { ni.Deriver = "33333333333333333333333333333333-hello" },
			want: store.ErrInvalid, msg: "is not a .drv store path base name"},
		{name: "NAR not uploaded", h: func(h *holdings) { h.blob = nil }, want: store.ErrInvalid, msg: "names a NAR that was not uploaded"},
		{name: "NAR not uploaded or expired", h: func(h *holdings) { h.blob, h.pendingGrace = nil, 24*time.Hour }, want: store.ErrInvalid,
			msg: "names a NAR that was not uploaded or expired after 24h unclaimed (upload.pending_max_age); upload it again"},
		{name: "NAR dropped", h: func(h *holdings) { h.blob, h.dropped = nil, "it was dropped because of reasons" }, want: store.ErrInvalid,
			msg: "names a NAR that was not uploaded: it was dropped because of reasons; upload it again"},
		{name: "NarHash mismatch", ni: func(ni *narinfo.NarInfo) { ni.NarHash = narinfo.SHA256(sum("other")) },
			want: store.ErrInvalid, msg: "NarHash sha256:" + nixbase32.EncodeToString(sum("other")) + " does not match"},
		{name: "NarHash not sha256", ni: func(ni *narinfo.NarInfo) { ni.NarHash.Algo = "sha512" }, want: store.ErrInvalid, msg: "does not match the uploaded NAR"},
		{name: "NarSize mismatch", ni: func(ni *narinfo.NarInfo) { ni.NarSize = 101 }, want: store.ErrInvalid, msg: "NarSize 101 does not match the uploaded NAR (100 bytes)"},
		{name: "FileHash mismatch", ni: func(ni *narinfo.NarInfo) { fh := narinfo.SHA256(sum("x")); ni.FileHash = &fh },
			want: store.ErrInvalid, msg: "FileHash sha256:" + nixbase32.EncodeToString(sum("x")) + " does not match"},
		{name: "FileSize mismatch", ni: func(ni *narinfo.NarInfo) { ni.FileSize = 51 }, want: store.ErrInvalid, msg: "FileSize 51 does not match the uploaded file (50 bytes)"},
		{name: "reference missing", ni: func(ni *narinfo.NarInfo) { ni.References = append(ni.References, other) },
			want: store.ErrInvalid, msg: "references not in the cache (upload them first): /nix/store/" + other},
		{name: "reference missing, the client's cache named", ni: func(ni *narinfo.NarInfo) { ni.References = append(ni.References, other) },
			want: store.ErrInvalid, msg: "/nix/store/" + other + "; a client that uploaded or fetched them before may believe them present " +
				"from its narinfo cache: retry with --option narinfo-cache-positive-ttl 0"},
		{name: "references missing, all named", h: func(h *holdings) { h.has = func(string) bool { return false } },
			ni:   func(ni *narinfo.NarInfo) { ni.References = append(ni.References, other) },
			want: store.ErrInvalid, msg: "/nix/store/" + dep + " /nix/store/" + other},
		{name: "the path as the index has it", h: func(h *holdings) { h.old = same() }, keep: true},
		{name: "the path as the index has it, references elsewhere gone", h: func(h *holdings) {
			h.old, h.has = same(), func(string) bool { return false }
		}, keep: true},
		{name: "another NAR than the index's", h: func(h *holdings) { h.old = same(); h.old.narHash = sum("old") },
			want: store.ErrConflict, msg: "is already in the cache with NarHash"},
		{name: "another name than the index's", h: func(h *holdings) { h.old = same(); h.old.storePath = "/nix/store/" + hp + "-bye" },
			want: store.ErrConflict, msg: "already serves this hash part as /nix/store/" + hp + "-bye"},
		{name: "other references than the index's", h: func(h *holdings) { h.old = same(); h.old.refs = nil },
			want: store.ErrConflict, msg: "is already in the cache with References"},
		{name: "the path as another store has it", h: func(h *holdings) { h.other = same() }},
		{name: "another NAR than another store's", h: func(h *holdings) { h.other = same(); h.other.narHash = sum("old") },
			want: store.ErrConflict, msg: "is already in the cache with NarHash"},
		{name: "the collected path comes back", h: func(h *holdings) { h.tomb = tomb() }},
		{name: "another NAR than the collected path's", h: func(h *holdings) { h.tomb = tomb(); h.tomb.NarHash = sum("old") },
			want: store.ErrConflict, msg: "until it was collected (garbage collection) on 2024-01-02 03:04:05 UTC"},
		{name: "another name than the collected path's", h: func(h *holdings) { h.tomb = tomb(); h.tomb.StorePath = "/nix/store/" + hp + "-bye" },
			want: store.ErrConflict, msg: "this hash part was /nix/store/" + hp + "-bye"},
		{name: "other references than the collected path's", h: func(h *holdings) { h.tomb = tomb(); h.tomb.RefsHash = refsHash(nil) },
			want: store.ErrConflict, msg: "and other References than the upload's"},
		{name: "collected, remembered for a while", h: func(h *holdings) { h.tomb, h.remember = tomb(), 48*time.Hour; h.tomb.NarHash = sum("old") },
			want: store.ErrConflict, msg: "or it is allowed after 2024-01-04 (gc.remember)"},
		{name: "the NAR is checked before the index's path", ni: func(ni *narinfo.NarInfo) { ni.NarSize = 7 },
			h: func(h *holdings) { h.old = same(); h.old.narHash = sum("old") }, want: store.ErrInvalid, msg: "NarSize 7"},
		{name: "conflicts are checked before references", ni: func(ni *narinfo.NarInfo) { ni.References = append(ni.References, other) },
			h: func(h *holdings) { h.tomb = tomb() }, want: store.ErrConflict, msg: "other References"},
		{name: "adopted", adopt: upstream},
		{name: "adopted, references not required", adopt: upstream, h: func(h *holdings) { h.has = func(string) bool { return false } },
			ni: func(ni *narinfo.NarInfo) { ni.References = append(ni.References, other) }},
		{name: "adopted with the upstream's URL", adopt: upstream, ni: func(ni *narinfo.NarInfo) { ni.URL = "nar/elsewhere.nar.xz" }},
		{name: "adopted with any URL", adopt: upstream, ni: func(ni *narinfo.NarInfo) { ni.URL = "https://cdn.example/x?y" }},
		{name: "adopted without FileHash and FileSize", adopt: upstream, ni: func(ni *narinfo.NarInfo) { ni.FileHash, ni.FileSize = nil, 0 }},
		{name: "adopted from no upstream", adopt: "-", want: store.ErrInvalid, msg: "names no upstream it was pulled from"},
		{name: "adopted, store path malformed", adopt: upstream, ni: func(ni *narinfo.NarInfo) { ni.StorePath = "/nix/store/hello" },
			want: store.ErrInvalid, msg: "StorePath"},
		{name: "adopted, store path in another store", adopt: upstream, ni: func(ni *narinfo.NarInfo) { ni.StorePath = "/gnu/store/" + hp + "-hello" },
			want: store.ErrInvalid, msg: "is not in /nix/store"},
		{name: "adopted, NAR not received", adopt: upstream, h: func(h *holdings) { h.blob = nil },
			want: store.ErrInvalid, msg: "names a NAR that was not uploaded"},
		{name: "adopted, compression not the file's", adopt: upstream, ni: func(ni *narinfo.NarInfo) { ni.Compression = "xz" },
			want: store.ErrInvalid, msg: `Compression "xz" does not match the NAR file ` + fh32 + ".nar.zst"},
		{name: "adopted, NarHash mismatch", adopt: upstream, ni: func(ni *narinfo.NarInfo) { ni.NarHash = narinfo.SHA256(sum("other")) },
			want: store.ErrInvalid, msg: "NarHash sha256:" + nixbase32.EncodeToString(sum("other")) + " does not match"},
		{name: "adopted, NarSize mismatch", adopt: upstream, ni: func(ni *narinfo.NarInfo) { ni.NarSize = 101 },
			want: store.ErrInvalid, msg: "NarSize 101 does not match"},
		{name: "adopted, FileHash mismatch", adopt: upstream, ni: func(ni *narinfo.NarInfo) { fh := narinfo.SHA256(sum("x")); ni.FileHash = &fh },
			want: store.ErrInvalid, msg: "FileHash sha256:" + nixbase32.EncodeToString(sum("x")) + " does not match"},
		{name: "adopted, FileSize mismatch", adopt: upstream, ni: func(ni *narinfo.NarInfo) { ni.FileSize = 51 },
			want: store.ErrInvalid, msg: "FileSize 51 does not match"},
		{name: "adopted, too many signatures", adopt: upstream, ni: func(ni *narinfo.NarInfo) {
			for i := range limits.DefaultMaxSignatures + 1 {
				ni.Sigs = append(ni.Sigs, "k"+strings.Repeat("x", i)+":c2ln")
			}
		}, want: store.ErrInvalid, msg: "17 signatures"},
		{name: "adopted, the path as the index has it", adopt: upstream, h: func(h *holdings) { h.old = same() }, keep: true},
		{name: "adopted, another NAR than the index's", adopt: upstream, h: func(h *holdings) { h.old = same(); h.old.narHash = sum("old") },
			want: store.ErrConflict, msg: "is already in the cache with NarHash " + narinfo.SHA256(sum("old")).String() +
				", the upload has NarHash " + narinfo.SHA256(narHash).String()},
		{name: "adopted, the collected path comes back", adopt: upstream, h: func(h *holdings) { h.tomb = tomb() }},
		{name: "adopted, another NAR than the collected path's", adopt: upstream, h: func(h *holdings) { h.tomb = tomb(); h.tomb.NarHash = sum("old") },
			want: store.ErrConflict, msg: "was in the cache with NarHash " + narinfo.SHA256(sum("old")).String()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ni, h, hashPart := base(), hold(), hp
			if tc.ni != nil {
				tc.ni(ni)
			}
			if tc.h != nil {
				tc.h(h)
			}
			if tc.hashPart != "" {
				hashPart = tc.hashPart
			}
			up, err := checkForm(ni, hashPart, "/nix/store", limits.Default())
			if tc.adopt != "" {
				origin := strings.TrimPrefix(tc.adopt, "-")
				up, err = checkAdoption(ni, h.blobName, origin, "/nix/store", limits.Default())
			}
			var rec *pathRec
			if err == nil {
				rec, err = validateNarInfo(up, h)
			}
			if tc.want != nil {
				if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
					t.Fatalf("got %v, want %v containing %q", err, tc.want, tc.msg)
				}
				if rec != nil {
					t.Fatalf("refused, yet a record to commit: %+v", rec)
				}
				return
			}
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			if tc.keep {
				if rec != nil {
					t.Fatalf("the index has the path, yet a new record: %+v", rec)
				}
				return
			}
			if rec == nil {
				t.Fatal("accepted without a record to commit")
			}
			if rec.StorePath != ni.StorePath || rec.Blob != h.blobName || rec.Compression != h.blob.Compression ||
				rec.NarSize != 100 || rec.FileSize != 50 || string(rec.FileHash) != string(fileHash) ||
				string(rec.NarHash) != string(narHash) || rec.Deriver != ni.Deriver || rec.CA != ni.CA || rec.Upstream != tc.adopt {
				t.Fatalf("record %+v does not describe the upload %+v", rec, ni)
			}
			if len(up.refs) > 0 && up.refs[0] == hp+"-hello" {
				t.Fatalf("the self reference is among those to look up: %q", up.refs)
			}
		})
	}
}
