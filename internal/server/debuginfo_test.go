package server_test

import (
	"net/http"
	"strings"
	"testing"
)

// TestDebugInfo: debuginfo/<build id> as nix copy --to with
// index-debug-info=true uses it (PUT before the NAR, after a HEAD that
// says absent) and dwarffs reads it: served only while the NAR it names
// is, write-once while it is, validated strictly, behind the read
// permission on a private cache, and free again once GC collected its
// NAR.
func TestDebugInfo(t *testing.T) {
	e := newUpEnv(t, t.TempDir(), false)
	p := newUpPath(t, "debug-x", []byte("x"))
	id := "ab" + strings.Repeat("0123456789abcdef", 3)[:38]
	member := "lib/debug/.build-id/ab/" + id[2:] + ".debug"
	doc := `{"archive":"../nar/` + p.fileName + `","member":"` + member + `"}`
	path := "/debuginfo/" + id

	if code, _ := e.do(t, "HEAD", path, "", nil); code != 404 {
		t.Fatalf("HEAD before upload: %d", code)
	}
	if code, msg := e.do(t, "PUT", path, e.writeTok, []byte(doc)); code != 200 {
		t.Fatalf("PUT: %d %s", code, msg)
	}
	// Its NAR is not served yet: absent, and a retry's PUT is fine.
	if code, _ := e.do(t, "GET", path, "", nil); code != 404 {
		t.Fatalf("GET before the NAR is served: %d", code)
	}
	if code, msg := e.do(t, "PUT", path, e.writeTok, []byte(doc)); code != 200 {
		t.Fatalf("PUT again: %d %s", code, msg)
	}
	e.upload(t, p)
	resp, body := rawGet(t, e.url+path)
	if resp.StatusCode != 200 || string(body) != doc || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET: %d %v %s", resp.StatusCode, resp.Header, body)
	}
	if code, _ := e.do(t, "HEAD", path, "", nil); code != 200 {
		t.Fatalf("HEAD: %d", code)
	}
	// The name Nix PUTs and HEADs (with .debug) is the same document.
	if resp, b := rawGet(t, e.url+path+".debug"); resp.StatusCode != 200 || string(b) != doc {
		t.Fatalf("GET %s.debug: %d %s", path, resp.StatusCode, b)
	}
	// Write-once while served: the same values in another layout are
	// the same document; another archive is a conflict.
	same := `{ "member": "` + member + `", "archive": "../nar/` + p.fileName + `" }`
	if code, msg := e.do(t, "PUT", path+".debug", e.writeTok, []byte(same)); code != 200 {
		t.Fatalf("PUT of the same document: %d %s", code, msg)
	}
	other := newUpPath(t, "debug-y", []byte("y"))
	otherDoc := `{"archive":"../nar/` + other.fileName + `","member":"` + member + `"}`
	if code, msg := e.do(t, "PUT", path, e.writeTok, []byte(otherDoc)); code != 409 {
		t.Fatalf("PUT of another document: %d %s", code, msg)
	}

	for name, tc := range map[string]struct {
		id, doc string
		want    int
	}{
		"short id":         {id[:39], doc, 400},
		"upper-case id":    {strings.ToUpper(id), doc, 400},
		"member of others": {"cd" + id[2:], doc, 400},
		"archive outside":  {id, `{"archive":"../` + p.fileName + `","member":"` + member + `"}`, 400},
		"archive not NAR":  {id, `{"archive":"../nar/x.tar","member":"` + member + `"}`, 400},
		"extra field":      {id, `{"archive":"../nar/` + p.fileName + `","member":"` + member + `","x":1}`, 400},
		"two documents":    {id, doc + doc, 400},
		"not JSON":         {id, "archive", 400},
		"too large":        {id, doc + strings.Repeat(" ", 5000), 400},
		"other suffix":     {id + ".dbg", doc, 400},
	} {
		if code, msg := e.do(t, "PUT", "/debuginfo/"+tc.id, e.writeTok, []byte(tc.doc)); code != tc.want {
			t.Errorf("%s: %d %s, want %d", name, code, msg, tc.want)
		}
	}
	if code, _ := e.do(t, "GET", "/debuginfo/"+strings.ToUpper(id), "", nil); code != 404 {
		t.Errorf("GET of a malformed build ID: %d", code)
	}
	if code, _ := e.do(t, "PUT", path, "", []byte(doc)); code != 401 {
		t.Errorf("PUT without a token: %d", code)
	}
	if code, _ := e.do(t, "PUT", path, e.readTok, []byte(doc)); code != 403 {
		t.Errorf("PUT with a read token: %d", code)
	}

	// GC collects the NAR: the document is no longer served, and the
	// next upload with that build ID may name another NAR.
	if code, msg := e.do(t, "POST", "/api/gc?max-size=1", e.adminTok, nil); code != 200 || !strings.Contains(msg, p.info.StorePath) {
		t.Fatalf("GC: %d %s", code, msg)
	}
	if code, _ := e.do(t, "GET", path, "", nil); code != 404 {
		t.Fatalf("GET after its NAR was collected: %d", code)
	}
	if code, msg := e.do(t, "PUT", path, e.writeTok, []byte(otherDoc)); code != 200 {
		t.Fatalf("PUT after its NAR was collected: %d %s", code, msg)
	}
	e.upload(t, other)
	if resp, body := rawGet(t, e.url+path); resp.StatusCode != 200 || string(body) != otherDoc {
		t.Fatalf("GET of the new document: %d %s", resp.StatusCode, body)
	}
}

// TestDebugInfoPrivate: on a private cache, reading a debuginfo document
// needs the read permission like every other document.
func TestDebugInfoPrivate(t *testing.T) {
	e := newUpEnv(t, t.TempDir(), true)
	p := newUpPath(t, "debug-private", []byte("p"))
	id := strings.Repeat("cd", 20)
	doc := `{"archive":"../nar/` + p.fileName + `","member":"lib/debug/.build-id/cd/` + id[2:] + `.debug"}`
	if code, msg := e.do(t, "PUT", "/debuginfo/"+id, e.writeTok, []byte(doc)); code != 200 {
		t.Fatalf("PUT: %d %s", code, msg)
	}
	e.upload(t, p)
	for _, method := range []string{http.MethodGet, http.MethodHead} {
		if code, _ := e.do(t, method, "/debuginfo/"+id, "", nil); code != 401 {
			t.Errorf("%s without a token: %d", method, code)
		}
		if code, _ := e.do(t, method, "/debuginfo/"+strings.Repeat("0", 40), "", nil); code != 401 {
			t.Errorf("%s of an absent one without a token: %d", method, code)
		}
		if code, _ := e.do(t, method, "/debuginfo/"+id, e.readTok, nil); code != 200 {
			t.Errorf("%s with the read token: %d", method, code)
		}
	}
}
