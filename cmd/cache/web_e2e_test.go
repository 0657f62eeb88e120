package main

import (
	"bytes"
	"context"
	"fmt"
	"html"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/auth"
)

// The web pages in a real browser: `cache serve` with uploads made by real
// Nix and two deploy reports, each page loaded by headless Chromium, its
// rendered text and links checked, and the landing and fleet pages drawn.
//
// Chromium is driven through its command line (--dump-dom, --screenshot)
// rather than the DevTools protocol: the checks need the rendered DOM and a
// picture, nothing interactive, and a client library would be a dependency
// of the module for one test.

// browser is headless Chromium with its own profile.
type browser struct {
	bin, profile string
}

func needBrowser(t *testing.T) *browser {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return &browser{bin: p, profile: t.TempDir()}
		}
	}
	// The CI script installs it (CONCORDIA_REQUIRE_SERVERS=1): there a
	// missing browser fails rather than skipping the only browser test.
	if os.Getenv("CONCORDIA_REQUIRE_SERVERS") == "1" {
		t.Fatal("no Chromium installed (CONCORDIA_REQUIRE_SERVERS=1; Debian package chromium)")
	}
	t.Skip("no Chromium installed")
	return nil
}

func (b *browser) run(t *testing.T, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// --no-sandbox: the tests run as root, where Chromium's sandbox
	// refuses to start.
	base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
		"--user-data-dir=" + b.profile, "--hide-scrollbars"}
	cmd := exec.CommandContext(ctx, b.bin, append(base, args...)...)
	cmd.Env = append(os.Environ(), "HOME="+b.profile)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium %s: %v\n%s", strings.Join(args, " "), err, errb.String())
	}
	return out.Bytes()
}

// dom is the page as Chromium built it, after parsing and layout.
func (b *browser) dom(t *testing.T, u string) string {
	t.Helper()
	d := string(b.run(t, "--dump-dom", u))
	if !strings.Contains(d, "</html>") {
		t.Fatalf("chromium gave no document for %s:\n%s", u, d)
	}
	return d
}

// screenshot draws u at width×height into file and checks it is a PNG.
func (b *browser) screenshot(t *testing.T, u, file string, width, height int) {
	t.Helper()
	b.run(t, "--screenshot="+file, fmt.Sprintf("--window-size=%d,%d", width, height), u)
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("screenshot of %s: %v", u, err)
	}
	if !bytes.HasPrefix(data, []byte("\x89PNG\r\n\x1a\n")) || len(data) < 2000 {
		t.Fatalf("screenshot of %s is no picture (%d bytes)", u, len(data))
	}
}

var (
	domHrefRe = regexp.MustCompile(`href="([^"]*)"`)
	tagRe     = regexp.MustCompile(`<[^>]*>`)
)

// text is what a reader sees of a DOM: tags dropped, references resolved,
// white space collapsed.
func text(dom string) string {
	return strings.Join(strings.Fields(html.UnescapeString(tagRe.ReplaceAllString(dom, " "))), " ")
}

// sees fails for each want the page's text lacks.
func sees(t *testing.T, what, dom string, wants ...string) {
	t.Helper()
	txt := text(dom)
	for _, w := range wants {
		if !strings.Contains(txt, w) {
			t.Errorf("%s in the browser lacks %q:\n%s", what, w, txt)
		}
	}
}

// followAll fetches every same-server link of a page and wants 200; it
// returns the links.
func followAll(t *testing.T, base, what, dom string) []string {
	t.Helper()
	var got []string
	for _, m := range domHrefRe.FindAllStringSubmatch(dom, -1) {
		l := html.UnescapeString(m[1])
		u, err := url.Parse(l)
		if err != nil {
			t.Errorf("%s: bad link %q", what, l)
			continue
		}
		if u.Host != "" && "http://"+u.Host != base {
			continue // elsewhere (none is expected, and none is fetched)
		}
		got = append(got, l)
		resp, err := http.Get(base + u.RequestURI())
		if err != nil {
			t.Fatalf("%s: link %s: %v", what, l, err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("%s: link %s answers %d", what, l, resp.StatusCode)
		}
	}
	return got
}

// TestWebPagesInBrowser: real nix copy uploads three paths (app refers to
// lib, system refers to app), the deployer's token reports two deploys
// (all ok; then one host rolled back and one failed), and Chromium loads
// the landing, search, fleet and deploy pages: their text, their links
// (each answers 200), the referrers of a path, statuses in words. The
// landing and fleet pages are drawn at desktop and phone widths; with
// CONCORDIA_SCREENSHOTS=1 the pictures go to bench/results/ for the
// README.
func TestWebPagesInBrowser(t *testing.T) {
	needNixDB(t)
	br := needBrowser(t)
	dir := t.TempDir()
	cfg, _ := writeCacheConfig(t, dir, "")
	tok, line, err := auth.Generate("ci", auth.Read|auth.Write|auth.Pin)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "tokens"), []byte(line+"\n"), 0o600)
	p := startServe(t, "--config", cfg)
	base := strings.TrimSuffix(p.url, "/")

	// Three paths of a fake system, built and uploaded by real Nix.
	tag := fmt.Sprintf("%d", time.Now().UnixNano())
	expr := filepath.Join(dir, "web.nix")
	os.WriteFile(expr, []byte(`{ tag }:
let mk = name: script: derivation { name = name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ]; tag = tag; };
in rec {
  lib = mk "web-lib" "echo a library > $out";
  app = mk "web-app" "/bin/mkdir $out; echo ${lib} > $out/lib";
  system = mk "nixos-system-web1-26.11" "/bin/mkdir $out; echo ${app} > $out/sw";
}
`), 0o644)
	out := nixRun(t, "nix-build", expr, "--argstr", "tag", tag, "--out-link", filepath.Join(dir, "result"), "-A", "system", "-A", "app", "-A", "lib")
	built := strings.Fields(out)
	if len(built) != 3 {
		t.Fatalf("nix-build printed %q", out)
	}
	system, app, lib := built[0], built[1], built[2]
	netrc := filepath.Join(dir, "netrc")
	os.WriteFile(netrc, []byte("machine 127.0.0.1 login ci password "+tok+"\n"), 0o600)
	nixRun(t, "nix", "copy", "--option", "netrc-file", netrc, "--to", base+"?compression=zstd", system)

	// Two deploys, as the deployer reports them: web1 and db1 got the
	// system; then web1 rolled back and db1 failed.
	report := func(id, start string, web1, db1 string) {
		t.Helper()
		host := func(node, n, result string) string {
			return fmt.Sprintf(`{"node":%q,"hostname":"10.0.0.%s","path":%q,"mode":"switch","result":%q,"start":%q,"ms":4200,"steps":[]}`,
				node, n, system, result, start)
		}
		var failed []string
		for node, r := range map[string]string{"web1": web1, "db1": db1} {
			if r != "ok" {
				failed = append(failed, fmt.Sprintf("%q", node))
			}
		}
		doc := fmt.Sprintf(`{"id":%q,"mode":"switch","start":%q,"ms":5000,"hosts":[%s,%s],"failed":[%s]}`,
			id, start, host("web1", "1", web1), host("db1", "2", db1), strings.Join(failed, ","))
		req, _ := http.NewRequest("PUT", base+"/api/deploys/"+id, strings.NewReader(doc))
		req.Header.Set("Authorization", "Bearer "+tok)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 201 {
			t.Fatalf("report %s: %d", id, resp.StatusCode)
		}
	}
	report("2026-12-01-first", "2026-12-01T10:00:00Z", "ok", "ok")
	report("2026-12-02-second", "2026-12-02T10:00:00Z", "rolled-back", "failed")

	hash := func(p string) string { return filepath.Base(p)[:32] }

	landing := br.dom(t, base+"/")
	sees(t, "landing", landing, "Concordia binary cache", "Statistics", "3 paths", "Public keys", "substituters = "+base)
	followAll(t, base, "landing", landing)

	search := br.dom(t, base+"/search?q="+url.QueryEscape(app))
	sees(t, "search", search, filepath.Base(app), "References", "Referrers", filepath.Base(lib), filepath.Base(system), "NarHash")
	seen := strings.Join(followAll(t, base, "search", search), "\n")
	for _, p := range []string{lib, system} {
		if !strings.Contains(strings.ToLower(seen), strings.ToLower(url.QueryEscape(p))) && !strings.Contains(seen, p) {
			t.Errorf("search page of app links no search of %s:\n%s", p, seen)
		}
	}
	byHash := br.dom(t, base+"/search?q="+hash(lib))
	sees(t, "search by hash", byHash, filepath.Base(lib), "Referrers", filepath.Base(app))

	fleet := br.dom(t, base+"/fleet")
	sees(t, "fleet", fleet, "Hosts (2)", "web1", "db1", "↺ rolled back", "✗ failed", "✓ ok",
		filepath.Base(system), "2026-12-02-second", "2026-12-01-first")
	fleetLinks := strings.Join(followAll(t, base, "fleet", fleet), "\n")
	for _, want := range []string{"/fleet/deploys/2026-12-02-second", "/fleet/deploys/2026-12-01-first"} {
		if !strings.Contains(fleetLinks, want) {
			t.Errorf("fleet page links no %s:\n%s", want, fleetLinks)
		}
	}

	deploy := br.dom(t, base+"/fleet/deploys/2026-12-02-second")
	sees(t, "deploy page", deploy, "Deploy 2026-12-02-second", "2 of 2 hosts not ok", "↺ rolled back", "✗ failed", filepath.Base(system))
	deployLinks := strings.Join(followAll(t, base, "deploy page", deploy), "\n")
	if !strings.Contains(deployLinks, "/api/deploys/2026-12-02-second") {
		t.Errorf("deploy page links no report:\n%s", deployLinks)
	}
	// The system the hosts run is here: its link is a found page.
	sys := br.dom(t, base+"/search?q="+url.QueryEscape(system))
	sees(t, "system search", sys, filepath.Base(system), "References", filepath.Base(app))

	shots := t.TempDir()
	if os.Getenv("CONCORDIA_SCREENSHOTS") == "1" {
		shots = filepath.Join("..", "..", "bench", "results")
	}
	br.screenshot(t, base+"/", filepath.Join(shots, "web-landing.png"), 1000, 900)
	br.screenshot(t, base+"/fleet", filepath.Join(shots, "web-fleet.png"), 1000, 900)
	br.screenshot(t, base+"/fleet", filepath.Join(shots, "web-phone.png"), 390, 844)
}
