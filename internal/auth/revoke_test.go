package auth_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/syncbuf"

	"github.com/bos55/concordia/internal/auth"
)

func testLogger() (*slog.Logger, *syncbuf.Buffer) {
	b := &syncbuf.Buffer{}
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug})), b
}

// eventually polls cond for up to 5 s (revocation is promised within about
// a second; the bound only keeps a broken build from hanging).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 5s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func works(toks *auth.Tokens, tok string) bool {
	_, _, ok := toks.Check(tok)
	return ok
}

func TestPermissions(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want auth.Perm
		str  string
	}{
		{"read", auth.Read, "read"},
		{"write", auth.Write, "write"},
		{"read,write", auth.Read | auth.Write, "read,write"},
		{"write, read", auth.Read | auth.Write, "read,write"},
		{"pin", auth.Pin, "pin"},
		{"read,pin", auth.Read | auth.Pin, "read,pin"},
		{"admin", auth.Admin, "admin"},
		{"admin,read,write,pin", auth.Read | auth.Write | auth.Pin | auth.Admin, "read,write,pin,admin"},
	} {
		p, err := auth.ParsePerm(tc.in)
		if err != nil || p != tc.want || p.String() != tc.str {
			t.Errorf("ParsePerm(%q) = %v (%q), %v; want %v (%q)", tc.in, p, p, err, tc.want, tc.str)
		}
	}
	for _, bad := range []string{"", "root", "read,", "Read", "write;pin"} {
		if _, err := auth.ParsePerm(bad); err == nil {
			t.Errorf("ParsePerm(%q) accepted", bad)
		}
	}
	// What each grants: write is uploads only; admin includes pin but
	// neither read nor write.
	has := []struct {
		p, need auth.Perm
		want    bool
	}{
		{auth.Write, auth.Pin, false},
		{auth.Write, auth.Admin, false},
		{auth.Read | auth.Write, auth.Pin, false},
		{auth.Pin, auth.Pin, true},
		{auth.Pin, auth.Admin, false},
		{auth.Admin, auth.Pin, true},
		{auth.Admin, auth.Read, false},
		{auth.Admin, auth.Write, false},
		{auth.Read | auth.Pin, auth.Read | auth.Pin, true},
	}
	for _, h := range has {
		if got := h.p.Has(h.need); got != h.want {
			t.Errorf("%s.Has(%s) = %v, want %v", h.p, h.need, got, h.want)
		}
	}
}

// TestOldTokensFileKeepsWorking: a tokens file written before pin and admin
// existed loads unchanged, with the permissions it always had.
func TestOldTokensFileKeepsWorking(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens")
	ci, ciLine, _ := auth.Generate("ci", auth.Read|auth.Write)
	push, pushLine, _ := auth.Generate("push", auth.Write)
	lap, lapLine, _ := auth.Generate("laptop", auth.Read)
	if !strings.Contains(ciLine, ":read,write:") || !strings.Contains(pushLine, ":write:") {
		t.Fatalf("line format changed: %s %s", ciLine, pushLine)
	}
	writeTokens(t, path, ciLine, pushLine, lapLine)
	toks, err := auth.Load(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for tok, want := range map[string]auth.Perm{ci: auth.Read | auth.Write, push: auth.Write, lap: auth.Read} {
		if _, p, ok := toks.Check(tok); !ok || p != want {
			t.Errorf("token: %v %v, want %v", p, ok, want)
		}
	}
}

// TestRevokeSameSizeAndMtime: the rotated file has exactly the size and
// the mtime of the old one (a same-length token under a same-length name,
// mtime set back as cp -p and rsync -a do). The revoked token stops working.
func TestRevokeSameSizeAndMtime(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens")
	old, oldLine, _ := auth.Generate("ci-1", auth.Read|auth.Write)
	keep, keepLine, _ := auth.Generate("deploy", auth.Pin)
	writeTokens(t, path, oldLine, keepLine)
	st, _ := os.Stat(path)
	toks, err := auth.Load(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !works(toks, old) {
		t.Fatal("token not accepted")
	}
	neu, newLine, _ := auth.Generate("ci-2", auth.Read|auth.Write)
	writeTokens(t, path, newLine, keepLine)
	if err := os.Chtimes(path, st.ModTime(), st.ModTime()); err != nil {
		t.Fatal(err)
	}
	st2, _ := os.Stat(path)
	if st2.Size() != st.Size() || !st2.ModTime().Equal(st.ModTime()) {
		t.Fatalf("the test must keep size and mtime: %d %v -> %d %v", st.Size(), st.ModTime(), st2.Size(), st2.ModTime())
	}
	eventually(t, "revoked token refused", func() bool { return !works(toks, old) })
	if !works(toks, neu) || !works(toks, keep) {
		t.Fatal("the rotated file's tokens do not work")
	}
}

// TestRevokeSymlinkSwap: the tokens file is a symlink into a store-like
// directory whose files all have the same mtime (as in /nix/store); the
// link is swapped atomically to a new file of the same size.
func TestRevokeSymlinkSwap(t *testing.T) {
	dir := t.TempDir()
	epoch := time.Unix(1, 0)
	mk := func(name string, lines ...string) string {
		p := filepath.Join(dir, name)
		writeTokens(t, p, lines...)
		os.Chtimes(p, epoch, epoch)
		return p
	}
	old, oldLine, _ := auth.Generate("ci-1", auth.Write)
	neu, newLine, _ := auth.Generate("ci-2", auth.Write)
	v1, v2 := mk("v1-tokens", oldLine), mk("v2-tokens", newLine)
	link := filepath.Join(dir, "tokens")
	if err := os.Symlink(v1, link); err != nil {
		t.Fatal(err)
	}
	toks, err := auth.Load(link, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !works(toks, old) {
		t.Fatal("token not accepted")
	}
	tmp := link + ".new"
	os.Symlink(v2, tmp)
	if err := os.Rename(tmp, link); err != nil {
		t.Fatal(err)
	}
	eventually(t, "revoked token refused after the symlink swap", func() bool { return !works(toks, old) })
	if !works(toks, neu) {
		t.Fatal("the new file's token does not work")
	}
	// A dangling link is an unreadable file: nothing works.
	os.Remove(v2)
	eventually(t, "dangling symlink refuses every token", func() bool { return !works(toks, neu) })
}

// TestMalformedLineFailsClosed: an edit that revokes one token and
// introduces a broken line never brings the revoked token back. The lines
// that parse work; the broken one is refused and reported by line number.
func TestMalformedLineFailsClosed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens")
	log, logs := testLogger()
	revoked, revokedLine, _ := auth.Generate("ci", auth.Read|auth.Write)
	keep, keepLine, _ := auth.Generate("deploy", auth.Pin)
	typo, typoLine, _ := auth.Generate("admin", auth.Admin)
	writeTokens(t, path, revokedLine, keepLine, typoLine)
	toks, err := auth.Load(path, log)
	if err != nil {
		t.Fatal(err)
	}
	toks.SetRecheck(0)
	for _, tok := range []string{revoked, keep, typo} {
		if !works(toks, tok) {
			t.Fatal("token not accepted")
		}
	}
	// Line 1 is the "# tokens" header writeTokens adds: the broken line
	// is line 3, the typo (a permission misspelt) line 4.
	broken := strings.Replace(typoLine, ":admin:", ":admn:", 1)
	writeTokens(t, path, keepLine, "this is not a token line", broken)
	if works(toks, revoked) {
		t.Fatal("the revoked token works after a malformed edit")
	}
	if works(toks, typo) {
		t.Fatal("a token on a malformed line works")
	}
	if !works(toks, keep) {
		t.Fatal("a valid line is refused because another is malformed")
	}
	st := toks.FileStatus()
	if st.Err != nil || st.Tokens != 1 || len(st.Refused) != 2 || st.Refused[0].Line != 3 || st.Refused[1].Line != 4 {
		t.Fatalf("status %+v", st)
	}
	out := logs.String()
	if !strings.Contains(out, "line=3") || !strings.Contains(out, "line=4") || !strings.Contains(out, "level=ERROR") {
		t.Fatalf("log does not name the refused lines:\n%s", out)
	}
	for _, l := range []string{revokedLine, keepLine, typoLine} {
		if strings.Contains(out, strings.Split(l, ":")[2]) {
			t.Fatalf("log shows a token hash:\n%s", out)
		}
	}
	// A file that is nothing but garbage leaves no token at all.
	os.WriteFile(path, []byte("garbage\x00\xff\n"), 0o600)
	if works(toks, keep) {
		t.Fatal("a token works from a file with no valid line")
	}
}

// TestDuplicateNameRefused: a name on two lines (say a new "ci" line added
// while the old one, meant to be revoked, was left in) refuses both; so
// does one token on two lines. At start that is an error naming the line.
func TestDuplicateNameRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens")
	a, aLine, _ := auth.Generate("ci", auth.Write)
	b, bLine, _ := auth.Generate("ci", auth.Read|auth.Write)
	c, cLine, _ := auth.Generate("other", auth.Read)
	writeTokens(t, path, aLine, bLine, cLine)
	if _, err := auth.Load(path, nil); err == nil || !strings.Contains(err.Error(), "line 2") || !strings.Contains(err.Error(), "line 3") {
		t.Fatalf("Load of a duplicate name: %v", err)
	}
	writeTokens(t, path, cLine)
	toks, err := auth.Load(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	toks.SetRecheck(0)
	writeTokens(t, path, aLine, bLine, cLine)
	if works(toks, a) || works(toks, b) || !works(toks, c) {
		t.Fatalf("duplicate name: a %v b %v c %v", works(toks, a), works(toks, b), works(toks, c))
	}
	// The same token hash under two names.
	sameHash := "alias:admin:" + strings.Split(cLine, ":")[2]
	writeTokens(t, path, cLine, sameHash)
	if works(toks, c) {
		t.Fatal("a token on two lines works")
	}
	if st := toks.FileStatus(); len(st.Refused) != 2 {
		t.Fatalf("status %+v", st)
	}
}

// TestUnreadableFailsClosed: deleted, replaced by a directory, or a
// dangling symlink: no token works, and the log says so loudly.
func TestUnreadableFailsClosed(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "tokens")
	log, logs := testLogger()
	tok, line, _ := auth.Generate("ci", auth.Write)
	writeTokens(t, path, line)
	toks, err := auth.Load(path, log)
	if err != nil {
		t.Fatal(err)
	}
	toks.SetRecheck(0)
	for _, break_ := range []func(){
		func() { os.Remove(path) },
		func() { os.Remove(path); os.Mkdir(path, 0o700) },
		func() { os.RemoveAll(path); os.Symlink(filepath.Join(dir, "nowhere"), path) },
	} {
		writeBack := func() { os.RemoveAll(path); writeTokens(t, path, line) }
		if !works(toks, tok) {
			t.Fatal("token not accepted")
		}
		break_()
		if works(toks, tok) {
			t.Fatal("token works while the file cannot be read")
		}
		if st := toks.FileStatus(); st.Err == nil || st.Tokens != 0 {
			t.Fatalf("status %+v", st)
		}
		writeBack()
	}
	if !strings.Contains(logs.String(), "level=ERROR msg=\"tokens file cannot be read") {
		t.Fatalf("no loud log:\n%s", logs)
	}
}

// TestReloadAndWatch: Reload (SIGHUP) applies a change at once, even
// inside the recheck window; Watch applies it with no request at all.
func TestReloadAndWatch(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens")
	tok, line, _ := auth.Generate("ci", auth.Write)
	writeTokens(t, path, line)
	toks, err := auth.Load(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	toks.SetRecheck(time.Hour)
	writeTokens(t, path)
	if !works(toks, tok) {
		t.Fatal("reread inside the recheck window")
	}
	if st := toks.Reload(); st.Tokens != 0 || works(toks, tok) {
		t.Fatalf("Reload did not revoke: %+v", st)
	}
	writeTokens(t, path, line)
	toks.Reload()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go toks.Watch(ctx, 10*time.Millisecond)
	writeTokens(t, path)
	eventually(t, "Watch revokes", func() bool { return toks.FileStatus().Tokens == 0 })
}

// TestConcurrentChecksDuringRotation: checks racing rewrites (run under
// -race) see either version, never a mix, and never panic.
func TestConcurrentChecksDuringRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens")
	var toksA, lines []string
	for i := range 4 {
		tok, line, _ := auth.Generate(fmt.Sprintf("t%d", i), auth.Write)
		toksA, lines = append(toksA, tok), append(lines, line)
	}
	writeTokens(t, path, lines...)
	toks, err := auth.Load(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	toks.SetRecheck(0)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				for _, tok := range toksA {
					toks.Check(tok)
				}
				toks.FileStatus()
			}
		}()
	}
	for i := range 50 {
		tmp := path + ".tmp"
		writeTokens(t, tmp, lines[:1+i%4]...)
		os.Rename(tmp, path)
	}
	close(stop)
	wg.Wait()
	writeTokens(t, path, lines[0])
	if !works(toks, toksA[0]) || works(toks, toksA[3]) {
		t.Fatal("final version not in force")
	}
}
