package server_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestNixCopyIndexDebugInfo: nix copy --to with index-debug-info=true of a
// path holding lib/debug/.build-id/<xx>/<38 hex>.debug HEADs and PUTs
// debuginfo/<build id>.debug (a 404 on that PUT failed the copy before),
// and the document it wrote is served there and at debuginfo/<build id>,
// where dwarffs asks, naming the NAR the narinfo names and the member; a
// second copy of it (another path, same build ID) finds it and leaves it
// be.
func TestNixCopyIndexDebugInfo(t *testing.T) {
	if testing.Short() {
		t.Skip("runs nix")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	n := newNixClient(t)
	idb := make([]byte, 20)
	rand.Read(idb)
	id := hex.EncodeToString(idb)
	member := "lib/debug/.build-id/" + id[:2] + "/" + id[2:] + ".debug"
	expr := fmt.Sprintf(`derivation {
  name = "debuginfo-%s"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "/bin/mkdir -p $out/lib/debug/.build-id/%s $out/bin; echo ELF > $out/bin/prog; echo DWARF > $out/%s" ];
}`, id[:8], id[:2], member)
	f := filepath.Join(t.TempDir(), "debug.nix")
	os.WriteFile(f, []byte(expr), 0o644)
	out, err := n.run(ctx, "nix-build", "--no-out-link", f)
	if err != nil {
		t.Fatal(err)
	}
	path := strings.TrimSpace(out)

	e := newUpEnv(t, t.TempDir(), false)
	netrc := writeNetrc(t, "ci", e.writeTok)
	if _, err := n.run(ctx, "nix", "copy", "--option", "netrc-file", netrc, "--to", e.url+"?index-debug-info=true", path); err != nil {
		t.Fatal(err)
	}
	ni, err := e.up.NarInfo(ctx, filepath.Base(path)[:32])
	if err != nil {
		t.Fatal(err)
	}
	resp, body := rawGet(t, e.url+"/debuginfo/"+id)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET debuginfo/%s: %d %s", id, resp.StatusCode, body)
	}
	t.Logf("debuginfo/%s: %s (narinfo URL %s)", id, body, ni.URL)
	var doc struct{ Archive, Member string }
	if err := json.Unmarshal(body, &doc); err != nil || doc.Archive != "../"+ni.URL || doc.Member != member {
		t.Fatalf("document %s (%v), want archive ../%s, member %s", body, err, ni.URL, member)
	}
	if _, b := rawGet(t, e.url+"/debuginfo/"+id+".debug"); string(b) != string(body) {
		t.Fatalf("debuginfo/%s.debug: %s", id, b)
	}
	// The archive, resolved against the document's URL, is the NAR.
	if resp, _ := rawGet(t, e.url+"/"+ni.URL); resp.StatusCode != 200 {
		t.Fatalf("GET of the archive: %d", resp.StatusCode)
	}

	// Another copy with the same build ID (another path, another NAR):
	// Nix HEADs, finds the document, does not PUT.
	f2 := filepath.Join(t.TempDir(), "debug2.nix")
	os.WriteFile(f2, []byte(strings.Replace(expr, "echo ELF", "echo ELF2", 1)), 0o644)
	out, err = n.run(ctx, "nix-build", "--no-out-link", f2)
	if err != nil {
		t.Fatal(err)
	}
	puts := e.puts.Load()
	if _, err := n.run(ctx, "nix", "copy", "--option", "netrc-file", netrc, "--to", e.url+"?index-debug-info=true", strings.TrimSpace(out)); err != nil {
		t.Fatal(err)
	}
	if got := e.puts.Load() - puts; got != 2 {
		t.Errorf("second copy made %d PUTs, want 2 (NAR and narinfo)", got)
	}
	if _, again := rawGet(t, e.url+"/debuginfo/"+id); string(again) != string(body) {
		t.Errorf("document changed to %s", again)
	}
}
