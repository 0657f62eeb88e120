package server_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bos55/concordia/internal/server"
	"github.com/bos55/concordia/internal/store"
)

func TestServeFiles(t *testing.T) {
	st := newFakeStore()
	lib := hashOf("lib")
	st.addTree(t, lib, "lib", map[string]string{"lib/libx.so": "ELF"})
	h := hashOf("docs")
	st.addBuilt(t, h, "docs", func(dir string) {
		must := func(err error) {
			if err != nil {
				t.Fatal(err)
			}
		}
		must(os.MkdirAll(filepath.Join(dir, "share/doc"), 0o755))
		must(os.MkdirAll(filepath.Join(dir, "site"), 0o755))
		must(os.WriteFile(filepath.Join(dir, "share/doc/README.txt"), []byte("read me\n"), 0o644))
		must(os.WriteFile(filepath.Join(dir, "site/index.html"), []byte("<p>home</p>"), 0o644))
		must(os.Symlink("share/doc/README.txt", filepath.Join(dir, "readme")))
		must(os.Symlink("../share/doc", filepath.Join(dir, "share/doc2")))
		must(os.Symlink("../../../../etc/passwd", filepath.Join(dir, "share/escape")))
		must(os.Symlink("/etc/passwd", filepath.Join(dir, "passwd")))
		must(os.Symlink("/nix/store/"+lib+"-lib/lib", filepath.Join(dir, "libdir")))
		must(os.Symlink("loop", filepath.Join(dir, "loop")))
		must(os.WriteFile(filepath.Join(dir, "share/doc/a #b?c.txt"), []byte("odd name"), 0o644))
	})
	srv, err := server.New(server.Options{Stores: []store.Store{st}})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, srv: srv}
	for _, tc := range []struct {
		path     string
		code     int
		body     string // substring
		location string
	}{
		{"/share/doc/README.txt", 200, "read me\n", ""},
		{"/readme", 200, "read me\n", ""},
		{"/share/doc2/README.txt", 200, "read me\n", ""},
		{"/share", 301, "", "/serve/" + h + "/share/"},
		{"/share/doc/", 200, "README.txt", ""},
		{"/share/doc/", 200, `href="./a%20%23b%3Fc.txt"`, ""},
		{"/share/doc/a%20%23b%3Fc.txt", 200, "odd name", ""},
		{"/site/", 200, "<p>home</p>", ""},
		{"/", 200, "share/", ""},
		{"/libdir/libx.so", 302, "", "/serve/" + lib + "/lib/libx.so"},
		{"/share/escape", 404, "", ""},
		{"/passwd", 404, "", ""},
		{"/loop", 404, "", ""},
		{"/nothing", 404, "", ""},
		{"/share/doc/README.txt/x", 404, "", ""},
	} {
		rec := f.do("GET", "/serve/"+h+tc.path)
		if rec.Code != tc.code || !strings.Contains(rec.Body.String(), tc.body) || rec.Header().Get("Location") != tc.location {
			t.Errorf("%s: %d %q Location %q", tc.path, rec.Code, rec.Body.String(), rec.Header().Get("Location"))
		}
		if tc.code == 200 && rec.Header().Get("Content-Security-Policy") != "sandbox" {
			t.Errorf("%s: no CSP sandbox", tc.path)
		}
	}
	if rec := f.do("GET", "/serve/"+lib+"/lib/libx.so"); rec.Code != 200 || rec.Body.String() != "ELF" {
		t.Errorf("redirect target: %d %q", rec.Code, rec.Body)
	}
}
