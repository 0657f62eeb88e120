package server

import (
	"embed"
	"fmt"
	"html/template"
	"net/http"
	"strings"
	"time"

	"github.com/gorilla/mux"
)

// The cache's web pages, for people rather than Nix: the landing page
// (how to use the cache, and its live statistics), /search (one store
// path: its narinfo, references, referrers, size and pin) and /fleet
// (what the deployer put where, from the deploy history). They are
// rendered on the server with html/template, with no script: a phone, a
// text browser and a screen reader get the same page. Status is always a
// word and a symbol beside its colour.
//
// Reads follow the read guard: on a private cache the statistics, the
// search and the fleet need a read token (HTTP Basic, which a browser
// asks for); the landing page stays open, since it only tells how to
// configure a client, and shows its statistics to authorized readers.

//go:embed web/*.html
var webFiles embed.FS

// pages are the templates, each parsed with the shared layout.
var pages = func() map[string]*template.Template {
	funcs := template.FuncMap{
		"bytes":   bytesText,
		"count":   countText,
		"share":   func(hits, misses float64) string { return ratioText(hits, hits+misses) },
		"ratio":   ratioText,
		"when":    whenText,
		"since":   sinceText,
		"status":  statusOf,
		"base":    storeBase,
		"hashOf":  storeHash,
		"millis":  millisText,
		"yesno":   yesNo,
		"deploys": deployLink,
	}
	m := map[string]*template.Template{}
	for _, name := range []string{"landing", "search", "fleet", "deploy"} {
		m[name] = template.Must(template.New("layout.html").Funcs(funcs).ParseFS(webFiles, "web/layout.html", "web/"+name+".html"))
	}
	return m
}()

// webRoutes installs the pages beside the API.
func (s *Server) webRoutes(r *mux.Router, get []string) {
	r.HandleFunc("/", s.handleLanding).Methods(get...).Name("landing")
	r.Handle("/search", s.guardRead(http.HandlerFunc(s.handleSearch))).Methods(get...).Name("search")
	r.Handle("/fleet", s.guardRead(http.HandlerFunc(s.handleFleet))).Methods(get...).Name("fleet")
	r.Handle("/fleet/deploys/{id}", s.guardRead(http.HandlerFunc(s.handleDeployPage))).Methods(get...).Name("fleet-deploy")
}

// page is what every template gets: its own data and the layout's.
type page struct {
	Title string
	// Nav names the current page ("cache", "search", "fleet").
	Nav     string
	Version string
	Data    any
}

// render writes a page with status code (200 unless a refusal).
func (s *Server) render(w http.ResponseWriter, r *http.Request, code int, name, title, nav string, data any) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	// Pages show live state: never kept by a proxy or the browser.
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	// No script, no frames, nothing loaded from elsewhere.
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'")
	w.WriteHeader(code)
	if r.Method == http.MethodHead {
		return
	}
	if err := pages[name].Execute(w, page{Title: title, Nav: nav, Version: s.opts.Version, Data: data}); err != nil {
		s.logger(r).Warn("page", "page", name, "err", err)
	}
}

// readable reports whether r may see what the read guard protects,
// without answering anything (the landing page's statistics).
func (s *Server) readable(r *http.Request) bool {
	return s.opts.Authorize == nil || s.opts.Authorize(r) == nil
}

// status is a deploy result as a page shows it: a word, a symbol and a
// class for the colour, so colour is never the only sign.
type status struct {
	Symbol, Word, Class string
}

func statusOf(result string) status {
	switch result {
	case "ok":
		return status{"✓", "ok", "ok"}
	case "failed":
		return status{"✗", "failed", "bad"}
	case "rolled-back":
		return status{"↺", "rolled back", "bad"}
	case "refused":
		return status{"⊘", "refused", "warn"}
	case "reboot-required":
		return status{"⏻", "reboot required", "warn"}
	case "not-started":
		return status{"–", "not started", "idle"}
	case "planned":
		return status{"…", "planned", "idle"}
	}
	return status{"?", result, "warn"}
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// bytesText is humanBytes of any of the sizes the pages show.
func bytesText(v any) string {
	if n, ok := asInt64(v); ok {
		return humanBytes(n)
	}
	return fmt.Sprint(v)
}

// asInt64 is a number of the pages' data (the stores' and the metrics'
// counts come as int, int64, uint64 or float64).
func asInt64(v any) (int64, bool) {
	switch n := v.(type) {
	case int:
		return int64(n), true
	case int64:
		return n, true
	case uint64:
		return int64(n), true
	case float64:
		return int64(n), true
	}
	return 0, false
}

// humanBytes is a size in binary units, e.g. "1.5 GiB".
func humanBytes(n int64) string {
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	f, units := float64(n), []string{"KiB", "MiB", "GiB", "TiB", "PiB"}
	for i := range units {
		f /= 1024
		if f < 1024 || i == len(units)-1 {
			return fmt.Sprintf("%.1f %s", f, units[i])
		}
	}
	return ""
}

// countText is humanCount of any of the counts the pages show.
func countText(v any) string {
	if n, ok := asInt64(v); ok {
		return humanCount(int(n))
	}
	return fmt.Sprint(v)
}

// humanCount groups digits: 1234567 is "1 234 567".
func humanCount(n int) string {
	s := fmt.Sprint(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteString("\u202f")
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// ratioText is hits out of total as a percentage, or "no requests yet".
func ratioText(hits, total float64) string {
	if total <= 0 {
		return "no requests yet"
	}
	return fmt.Sprintf("%.1f%% (%s of %s)", 100*hits/total, humanCount(int(hits)), humanCount(int(total)))
}

// whenText is a time in UTC to the second, "" for the zero time.
func whenText(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02 15:04:05 UTC")
}

// sinceText is how long ago t was, roughly ("3 h ago").
func sinceText(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	d := time.Since(t)
	switch {
	case d < 0:
		return "in the future"
	case d < time.Minute:
		return fmt.Sprintf("%d s ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%d min ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%d h ago", int(d.Hours()))
	}
	return fmt.Sprintf("%d days ago", int(d.Hours()/24))
}

func millisText(ms float64) string {
	if ms < 1000 {
		return fmt.Sprintf("%.0f ms", ms)
	}
	return fmt.Sprintf("%.1f s", ms/1000)
}

// storeBase is a store path's last element, "" for "".
func storeBase(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[i+1:]
	}
	return p
}

// storeHash is a store path's hash part, "" when it has none.
func storeHash(p string) string {
	b := storeBase(p)
	if len(b) < 32 || !validHashPart(b[:32]) {
		return ""
	}
	return b[:32]
}

// deployLink is the page of deploy id.
func deployLink(id string) string { return "/fleet/deploys/" + id }
