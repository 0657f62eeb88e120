package server_test

import (
	"fmt"
	"html"
	"net/url"
	"regexp"
	"strings"
	"testing"
)

// The web pages, rendered through the real router of a server with an
// upload store: what each shows, the links it gives, and what it refuses.
// The browser test (cmd/cache) checks the same pages in Chromium.

// webPaths uploads lib, app (refers to lib) and tool (refers to app and
// lib) and pins app with a note only the admin may read.
func webPaths(t *testing.T, e *upEnv) (lib, app, tool *upPath) {
	t.Helper()
	lib = newUpPath(t, "web-lib-1.0", []byte("a library"))
	app = newUpPath(t, "web-app-2.0", []byte("an app using "+lib.base), lib.base)
	tool = newUpPath(t, "web-tool-3.0", []byte("a tool"), app.base, lib.base)
	for _, p := range []*upPath{lib, app, tool} {
		e.upload(t, p)
	}
	if code, msg := e.do(t, "POST", "/api/pins/"+app.hash, e.pinTok, []byte(`{"note":"secret-pin-note"}`)); code != 200 {
		t.Fatalf("pin: %d %s", code, msg)
	}
	return lib, app, tool
}

// mustContain fails with the page when any of wants is missing.
// mustContain wants each string in the page as written or as a browser
// shows it: html/template writes some characters of text (a key's "+") as
// character references, which are the same text to the reader.
func mustContain(t *testing.T, what, body string, wants ...string) {
	t.Helper()
	shown := html.UnescapeString(body)
	for _, w := range wants {
		if !strings.Contains(body, w) && !strings.Contains(shown, w) {
			t.Errorf("%s lacks %q:\n%s", what, w, body)
		}
	}
}

func mustNotContain(t *testing.T, what, body string, bad ...string) {
	t.Helper()
	for _, b := range bad {
		if strings.Contains(body, b) {
			t.Errorf("%s shows %q:\n%s", what, b, body)
		}
	}
}

var hrefRe = regexp.MustCompile(`href="([^"]*)"`)

// links are a page's hrefs, unescaped as a browser reads them.
func links(body string) []string {
	var out []string
	for _, m := range hrefRe.FindAllStringSubmatch(body, -1) {
		out = append(out, strings.ReplaceAll(m[1], "&amp;", "&"))
	}
	return out
}

// followLinks requests every link of body on the same server with token
// and wants 200: no page links to an error.
func followLinks(t *testing.T, e *upEnv, what, body, token string) {
	t.Helper()
	for _, l := range links(body) {
		if !strings.HasPrefix(l, "/") || strings.HasPrefix(l, "//") {
			continue // documentation elsewhere
		}
		if code, msg := e.do(t, "GET", l, token, nil); code != 200 {
			t.Errorf("%s links to %s, which answers %d %.200s", what, l, code, msg)
		}
	}
}

// TestWebLanding: the landing page's statistics count what was uploaded
// and what was asked for, and its links work.
func TestWebLanding(t *testing.T) {
	e := newUpEnv(t, t.TempDir(), false)
	_, app, _ := webPaths(t, e)
	if code, _ := e.do(t, "GET", "/"+app.hash+".narinfo", "", nil); code != 200 {
		t.Fatalf("narinfo: %d", code)
	}
	if code, _ := e.do(t, "GET", "/"+hashOf("nowhere")+".narinfo", "", nil); code != 404 {
		t.Fatalf("missing narinfo: %d", code)
	}
	code, body := e.do(t, "GET", "/", "", nil)
	if code != 200 {
		t.Fatalf("landing: %d", code)
	}
	mustContain(t, "landing", body,
		"<h2>Statistics</h2>",
		"<span>uploads</span><b>3 paths</b>",
		"Uploads today (UTC)</span><b>3 paths</b>",
		"narinfo hit ratio</span><b>50.0% (1 of 2)</b>",
		"substituters = ", e.key.Public().String(),
		`action="/search"`, `href="/fleet"`)
	followLinks(t, e, "landing", body, "")
	code, head := e.do(t, "HEAD", "/", "", nil)
	if code != 200 || head != "" {
		t.Errorf("HEAD /: %d %q", code, head)
	}
}

// TestWebSearch: every form a reader pastes finds the path; the page
// shows its narinfo, its references and referrers as links that work,
// and that it is pinned, never the pin's note or owner.
func TestWebSearch(t *testing.T) {
	e := newUpEnv(t, t.TempDir(), false)
	lib, app, tool := webPaths(t, e)
	sp := "/nix/store/" + app.base
	for _, q := range []string{app.hash, sp, sp + "/bin/app", app.base, app.hash + ".narinfo",
		"https://cache.example.org/" + app.hash + ".narinfo", "  " + sp + "  "} {
		code, body := e.do(t, "GET", "/search?q="+url.QueryEscape(q), "", nil)
		if code != 200 {
			t.Errorf("search %q: %d", q, code)
			continue
		}
		mustContain(t, "search "+q, body, "<code>"+sp+"</code>")
	}
	code, body := e.do(t, "GET", "/search?q="+app.hash, "", nil)
	if code != 200 {
		t.Fatalf("search: %d", code)
	}
	mustContain(t, "app's page", body,
		"Served from</th><td>uploads",
		`href="/`+app.hash+`.narinfo"`,
		"StorePath: "+sp, "Sig: concordia-test-1:",
		"References (1)", `href="/search?q=%2fnix%2fstore%2f`+lib.base+`"`,
		"Referrers (1)", `href="/search?q=%2fnix%2fstore%2f`+tool.base+`"`,
		"✓ yes</span> since")
	mustNotContain(t, "app's page", body, "secret-pin-note", "deploy</td>")
	followLinks(t, e, "app's page", body, "")

	_, body = e.do(t, "GET", "/search?q="+lib.hash, "", nil)
	mustContain(t, "lib's page", body, "References (0)", "None besides itself", "Referrers (2)",
		"/search?q=%2fnix%2fstore%2f"+app.base, "/search?q=%2fnix%2fstore%2f"+tool.base, "Pinned</th><td>no")
	_, body = e.do(t, "GET", "/search?q="+tool.hash, "", nil)
	mustContain(t, "tool's page", body, "References (2)", "Referrers (0)", "No path of this cache refers to it")

	code, body = e.do(t, "GET", "/search", "", nil)
	if code != 200 || !strings.Contains(body, `name="q"`) || strings.Contains(body, "not a store path") {
		t.Errorf("empty search: %d\n%s", code, body)
	}
	if code, body := e.do(t, "HEAD", "/search?q="+app.hash, "", nil); code != 200 || body != "" {
		t.Errorf("HEAD search: %d %q", code, body)
	}
}

// TestWebSearchRefuses plays a hostile reader: markup, traversal, a query
// longer than any path, a hash outside the alphabet. Each is a 400 page
// that says what a store path is and echoes nothing unescaped; a hash no
// store has is a 404 page.
func TestWebSearchRefuses(t *testing.T) {
	e := newUpEnv(t, t.TempDir(), false)
	webPaths(t, e)
	for _, tc := range []struct{ q, says string }{
		{`<script>alert(1)</script>`, "hash part is 32 characters"},
		{`"><img src=x onerror=alert(1)>` + strings.Repeat("a", 40), "not a store path"},
		{"../../../../etc/passwd", "hash part is 32 characters"},
		{"/nix/store/../../etc/shadow", "hash part is 32 characters"},
		{strings.Repeat("e", 32), "base-32 alphabet"},
		{hashOf("x") + "_name", "followed by &#39;-&#39;"},
		{"https://cache.example.org", "names a narinfo"},
		{strings.Repeat("a", 5000), "longer than any store path"},
	} {
		code, body := e.do(t, "GET", "/search?q="+url.QueryEscape(tc.q), "", nil)
		if code != 400 {
			t.Errorf("search %.40q: %d, want 400", tc.q, code)
		}
		mustContain(t, "refusal", body, "✗ not a store path", tc.says)
		mustNotContain(t, "refusal", body, "<script>alert", "<img src=x", strings.Repeat("a", 100))
	}
	missing := hashOf("never uploaded")
	code, body := e.do(t, "GET", "/search?q=/nix/store/"+missing+"-ghost", "", nil)
	if code != 404 {
		t.Errorf("missing path: %d", code)
	}
	mustContain(t, "missing", body, "? not here", missing)
}

// TestWebFleet: /fleet shows each host the deployer reported with its
// current system, the deploy that put it there and its last results in
// words and symbols; each deploy has a page that links to its report;
// more deploys than a page holds are behind "Older deploys".
func TestWebFleet(t *testing.T) {
	e := newUpEnv(t, t.TempDir(), false)
	code, body := e.do(t, "GET", "/fleet", "", nil)
	if code != 200 || !strings.Contains(body, "No deploy has been reported yet") {
		t.Fatalf("empty fleet: %d\n%s", code, body)
	}
	for i := 1; i <= 20; i++ {
		if code, msg := e.do(t, "PUT", fmt.Sprintf("/api/deploys/d-%02d", i), e.pinTok, testReport(fmt.Sprintf("d-%02d", i), "web1", "ok", "db1", "ok")); code != 201 {
			t.Fatalf("report %d: %d %s", i, code, msg)
		}
	}
	if code, msg := e.do(t, "PUT", "/api/deploys/d-21", e.pinTok, testReport("d-21", "web1", "rolled-back", "db1", "failed")); code != 201 {
		t.Fatalf("report: %d %s", code, msg)
	}
	code, body = e.do(t, "GET", "/fleet", "", nil)
	if code != 200 {
		t.Fatalf("fleet: %d", code)
	}
	mustContain(t, "fleet", body, "Hosts (2)", "<b>web1</b>", "<b>db1</b>",
		"↺ rolled back</span>", "✗ failed</span>", "✓ ok</span>",
		"nixos-system-web1", `href="/fleet/deploys/d-21"`, `href="/fleet/deploys/d-20"`,
		"✗ 2 not ok", "✓ all ok", "Older deploys")
	// As on the deploy page, the systems' search links are "not here"
	// pages: the reports name systems never uploaded.
	mustContain(t, "fleet", body, `href="/search?q=%2fnix%2fstore%2f`)
	followLinks(t, e, "fleet", strings.ReplaceAll(body, `href="/search?`, `data-x="`), "")
	older := ""
	for _, l := range links(body) {
		if strings.HasPrefix(l, "/fleet?before=") {
			older = l
		}
	}
	_, page2 := e.do(t, "GET", older, "", nil)
	_, deploys, _ := strings.Cut(page2, "<h2>Deploys</h2>")
	mustContain(t, "older deploys", deploys, `href="/fleet/deploys/d-01"`)
	mustNotContain(t, "older deploys", deploys, `href="/fleet/deploys/d-21"`, "Older deploys")

	code, body = e.do(t, "GET", "/fleet/deploys/d-21", "", nil)
	if code != 200 {
		t.Fatalf("deploy page: %d", code)
	}
	mustContain(t, "deploy page", body, "Deploy d-21", "✗ 2 of 2 hosts not ok", "<b>web1</b>", "↺ rolled back",
		"✗ failed", `href="/api/deploys/d-21"`, `href="/fleet"`)
	// The reports' systems were never uploaded here: their search
	// links are "not here" pages (the browser test follows real ones).
	followLinks(t, e, "deploy page", strings.ReplaceAll(body, `href="/search?`, `data-x="`), "")
	mustContain(t, "deploy page", body, `href="/search?q=%2fnix%2fstore%2f`)
	for _, tc := range []struct {
		id   string
		code int
	}{{"d-99", 404}, {url.PathEscape("<script>"), 400}, {url.PathEscape("a b"), 400}, {strings.Repeat("x", 300), 400}} {
		code, body, h := call(t, "GET", e.url+"/fleet/deploys/"+tc.id, "", nil)
		if code != tc.code || strings.Contains(body, "<script>") && strings.Contains(h.Get("Content-Type"), "html") {
			t.Errorf("deploy page %.20s: %d, want %d\n%s", tc.id, code, tc.code, body)
		}
	}
}

// TestWebPrivate: on a private cache the landing page tells how to sign
// in and shows no statistics to an anonymous reader; search and fleet ask
// for a token (Basic, which a browser prompts for) and show their pages
// with one.
func TestWebPrivate(t *testing.T) {
	e := newUpEnv(t, t.TempDir(), true)
	_, app, _ := webPaths(t, e)
	e.do(t, "PUT", "/api/deploys/d-1", e.pinTok, testReport("d-1", "web1", "ok"))
	code, body := e.do(t, "GET", "/", "", nil)
	if code != 200 {
		t.Fatalf("landing: %d", code)
	}
	mustContain(t, "anonymous landing", body, "need a read token")
	mustNotContain(t, "anonymous landing", body, "<h2>Statistics</h2>", "paths</b>")
	for _, p := range []string{"/search?q=" + app.hash, "/fleet", "/fleet/deploys/d-1"} {
		if code, body := e.do(t, "GET", p, "", nil); code != 401 || strings.Contains(body, app.base) || strings.Contains(body, "web1") {
			t.Errorf("anonymous %s: %d\n%s", p, code, body)
		}
		if code, _ := e.do(t, "GET", p, e.readTok, nil); code != 200 {
			t.Errorf("%s with a read token: %d", p, code)
		}
	}
	_, body = e.do(t, "GET", "/", e.readTok, nil)
	mustContain(t, "landing with a read token", body, "<h2>Statistics</h2>", "3 paths")
}

// TestWebNoUploads: a cache without an upload store has no fleet to show
// and says so; search still finds the store's paths.
func TestWebNoUploads(t *testing.T) {
	f := newFixture(t, nil)
	rec := f.do("GET", "/fleet")
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), "no upload store") {
		t.Errorf("fleet: %d %s", rec.Code, rec.Body)
	}
	if rec := f.do("GET", "/fleet/deploys/d-1"); rec.Code != 404 || !strings.Contains(rec.Body.String(), "no deploy history") {
		t.Errorf("deploy page: %d %s", rec.Code, rec.Body)
	}
	if rec := f.do("GET", "/search?q="+f.a); rec.Code != 200 || !strings.Contains(rec.Body.String(), f.a+"-app") {
		t.Errorf("search: %d %s", rec.Code, rec.Body)
	}
	if rec := f.do("GET", "/"); rec.Code != 200 || !strings.Contains(rec.Body.String(), "Statistics") {
		t.Errorf("landing: %d %s", rec.Code, rec.Body)
	}
}
