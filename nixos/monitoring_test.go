package nixos

// The monitoring files shipped with the modules: the alert rules pass
// promtool (check and unit tests), and every metric the rules and the
// dashboard name is one the code exports, taken from the registries the
// cache and `deployer metrics` really build, so renaming a metric fails
// here instead of leaving a blank panel or an alert that never fires.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"
	dto "github.com/prometheus/client_model/go"
	"go.yaml.in/yaml/v3"

	"github.com/bos55/concordia/internal/app"
	"github.com/bos55/concordia/internal/auth"
	"github.com/bos55/concordia/internal/config"
	"github.com/bos55/concordia/internal/genmetrics"
	"github.com/bos55/concordia/internal/host"
	"github.com/bos55/concordia/internal/hostverb"
	"github.com/bos55/concordia/internal/nartest"
	"github.com/bos55/concordia/internal/signkey"
	"github.com/bos55/concordia/pkg/narinfo"
)

const (
	rulesDir     = "monitoring/prometheus"
	rulesFile    = rulesDir + "/concordia-rules.yml"
	rulesTest    = rulesDir + "/concordia-rules.test.yml"
	dashboardRel = "monitoring/grafana/concordia.json"
)

// needPromtool returns promtool's path; without it the test skips, unless
// CONCORDIA_REQUIRE_SERVERS=1 (scripts/test.sh), when it fails.
func needPromtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CONCORDIA_REQUIRE_SERVERS") == "1" {
			t.Fatalf("promtool: %v (CONCORDIA_REQUIRE_SERVERS=1; Debian package prometheus)", err)
		}
		t.Skip("promtool not installed (Debian package prometheus)")
	}
	return p
}

func promtool(t *testing.T, bin, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestAlertRulesPromtool runs `promtool check rules` and `promtool test
// rules` on the shipped files.
func TestAlertRulesPromtool(t *testing.T) {
	bin := needPromtool(t)
	out := promtool(t, bin, rulesDir, "check", "rules", filepath.Base(rulesFile))
	if want := fmt.Sprintf("SUCCESS: %d rules found", len(loadRules(t))); !strings.Contains(out, want) {
		t.Errorf("promtool check rules: want %q in\n%s", want, out)
	}
	out = promtool(t, bin, rulesDir, "test", "rules", filepath.Base(rulesTest))
	if !strings.Contains(out, "SUCCESS") {
		t.Errorf("promtool test rules:\n%s", out)
	}
}

type rule struct {
	Alert       string            `yaml:"alert"`
	Record      string            `yaml:"record"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

func loadRules(t *testing.T) []rule {
	t.Helper()
	b, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Groups []struct {
			Name  string `yaml:"name"`
			Rules []rule `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	var rs []rule
	for _, g := range f.Groups {
		rs = append(rs, g.Rules...)
	}
	if len(rs) == 0 {
		t.Fatal("no rules")
	}
	return rs
}

// TestAlertRulesShape: every alert has a severity, a summary and a
// description, and the unit test makes each of them fire at least once
// (an alert only ever tested quiet proves nothing).
func TestAlertRulesShape(t *testing.T) {
	b, err := os.ReadFile(rulesTest)
	if err != nil {
		t.Fatal(err)
	}
	var tf struct {
		RuleFiles []string `yaml:"rule_files"`
		Tests     []struct {
			AlertRuleTest []struct {
				Alertname string           `yaml:"alertname"`
				ExpAlerts []map[string]any `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	if err := yaml.Unmarshal(b, &tf); err != nil {
		t.Fatal(err)
	}
	if len(tf.RuleFiles) != 1 || tf.RuleFiles[0] != filepath.Base(rulesFile) {
		t.Errorf("the test reads %v, not %s", tf.RuleFiles, filepath.Base(rulesFile))
	}
	fires := map[string]bool{}
	for _, tc := range tf.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			}
		}
	}
	for _, r := range loadRules(t) {
		if r.Alert == "" {
			continue
		}
		switch r.Labels["severity"] {
		case "info", "warning", "critical":
		default:
			t.Errorf("%s: severity %q, want info, warning or critical", r.Alert, r.Labels["severity"])
		}
		if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
			t.Errorf("%s: needs a summary and a description", r.Alert)
		}
		if !fires[r.Alert] {
			t.Errorf("%s: the unit test never makes it fire", r.Alert)
		}
	}
}

// dashboard is the part of the dashboard JSON the tests look at.
type dashboard struct {
	UID        string  `json:"uid"`
	Title      string  `json:"title"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Definition string          `json:"definition"`
			Query      json.RawMessage `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         int            `json:"id"`
	Type       string         `json:"type"`
	Title      string         `json:"title"`
	Datasource map[string]any `json:"datasource"`
	GridPos    struct{ H, W, X, Y int }
	Targets    []struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	} `json:"targets"`
}

func loadDashboard(t *testing.T) *dashboard {
	t.Helper()
	b, err := os.ReadFile(dashboardRel)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&d); err != nil {
		t.Fatal(err)
	}
	return &d
}

// labelValuesRE is Grafana's label_values(metric, label) variable query.
var labelValuesRE = regexp.MustCompile(`^label_values\((.+),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)$`)

// dashboardExprs lists the PromQL of the dashboard, by where it is.
func dashboardExprs(t *testing.T, d *dashboard) map[string]string {
	t.Helper()
	exprs := map[string]string{}
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			exprs[fmt.Sprintf("panel %d %q target %s", p.ID, p.Title, tg.RefID)] = tg.Expr
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		m := labelValuesRE.FindStringSubmatch(v.Definition)
		if m == nil {
			t.Errorf("variable %s: query %q is not label_values(metric, label)", v.Name, v.Definition)
			continue
		}
		exprs["variable "+v.Name] = m[1]
	}
	return exprs
}

// TestDashboardShape: one data source variable used by every panel,
// unique ids and refIds, panels within the 24-column grid, a query in
// every panel but rows.
func TestDashboardShape(t *testing.T) {
	d := loadDashboard(t)
	if d.UID != "concordia" || d.Title == "" {
		t.Errorf("uid %q title %q", d.UID, d.Title)
	}
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d twice", p.ID)
		}
		ids[p.ID] = true
		if p.GridPos.W <= 0 || p.GridPos.X < 0 || p.GridPos.X+p.GridPos.W > 24 || p.GridPos.H <= 0 {
			t.Errorf("panel %d %q: gridPos %+v outside the grid", p.ID, p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if p.Title == "" || len(p.Targets) == 0 {
			t.Errorf("panel %d: title %q, %d targets", p.ID, p.Title, len(p.Targets))
		}
		if p.Datasource["uid"] != "${datasource}" {
			t.Errorf("panel %d %q: data source %v, want the ${datasource} variable", p.ID, p.Title, p.Datasource)
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			if tg.RefID == "" || refs[tg.RefID] || strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("panel %d %q: target %q empty or repeated", p.ID, p.Title, tg.RefID)
			}
			refs[tg.RefID] = true
		}
	}
	if len(ids) < 20 {
		t.Errorf("only %d panels", len(ids))
	}
}

// grafanaVars are replaced in the dashboard's queries before promtool
// parses them.
var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$cache", ".*", "$host", ".*")

// TestDashboardPromQLParses hands every dashboard query to promtool as a
// recording rule, so Prometheus' own parser checks its syntax.
func TestDashboardPromQLParses(t *testing.T) {
	bin := needPromtool(t)
	exprs := dashboardExprs(t, loadDashboard(t))
	keys := make([]string, 0, len(exprs))
	for k := range exprs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	for i, k := range keys {
		q, _ := json.Marshal(grafanaVars.Replace(exprs[k])) // a JSON string is a YAML one
		fmt.Fprintf(&b, "      - record: dashboard:query_%d\n        expr: %s\n", i, q)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "dashboard.yml"), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	out := promtool(t, bin, dir, "check", "rules", "dashboard.yml")
	if want := fmt.Sprintf("SUCCESS: %d rules found", len(keys)); !strings.Contains(out, want) {
		t.Errorf("want %q in\n%s", want, out)
	}
}

// TestMonitoringMetricsExist: every metric the rules and the dashboard use
// is exported by the cache or the generation exporter.
func TestMonitoringMetricsExist(t *testing.T) {
	exported := map[string]dto.MetricType{}
	for _, mf := range append(cacheMetrics(t), fleetMetrics(t)...) {
		exported[mf.GetName()] = mf.GetType()
	}
	known := func(name string) bool {
		if _, ok := exported[name]; ok {
			return true
		}
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(name, suffix); ok {
				if typ, ok := exported[base]; ok && (typ == dto.MetricType_HISTOGRAM || typ == dto.MetricType_SUMMARY && suffix != "_bucket") {
					return true
				}
			}
		}
		return false
	}
	exprs := dashboardExprs(t, loadDashboard(t))
	for _, r := range loadRules(t) {
		exprs["rule "+r.Alert+r.Record] = r.Expr
	}
	used := map[string]bool{}
	for where, e := range exprs {
		names, err := metricNames(e)
		if err != nil {
			t.Errorf("%s: %v", where, err)
			continue
		}
		if len(names) == 0 {
			t.Errorf("%s: %q names no metric", where, e)
		}
		for _, n := range names {
			used[n] = true
			if !known(n) {
				t.Errorf("%s uses %s, which neither the cache nor `deployer metrics` exports", where, n)
			}
		}
	}
	// The facts issue 18 asks the dashboard and rules to show.
	for _, n := range []string{"concordia_http_requests_total", "concordia_http_request_duration_seconds_bucket", "concordia_nar_bytes_sent_total",
		"concordia_zstd_cache_size_bytes", "concordia_zstd_cache_hits_total", "concordia_upload_requests_total",
		"concordia_upload_verification_failures_total", "concordia_upload_store_bytes", "concordia_gc_runs_total",
		"concordia_gc_hard_max_size_bytes", "concordia_gc_last_failure_timestamp_seconds",
		"nixos_current_generation", "nixos_boot_generation", "nixos_config_age_seconds", "nixos_test_deployment_active",
		"nixos_reboot_required", "nixos_last_deploy_state", "nixos_last_deploy_info", "nixos_generation_metrics_up",
		"nixos_generation_metrics_timestamp_seconds"} {
		if !used[n] {
			t.Errorf("neither the dashboard nor the rules use %s", n)
		}
	}
}

// cacheMetrics opens the cache as `cache serve` does (app.Open: upload
// store, compression cache, an upstream), drives one upload, a narinfo hit
// and miss, a NAR download and a refused NAR through its router, so the
// labelled series exist, and gathers its registry.
func cacheMetrics(t *testing.T) []*dto.MetricFamily {
	t.Helper()
	dir := t.TempDir()
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/nix-cache-info" {
			io.WriteString(w, "StoreDir: /nix/store\n")
			return
		}
		http.NotFound(w, r)
	}))
	defer upstream.Close()
	upKey, _, err := signkey.State(filepath.Join(dir, "upstream-key"))
	if err != nil {
		t.Fatal(err)
	}
	tok, line, err := auth.Generate("ci", auth.Read|auth.Write)
	if err != nil {
		t.Fatal(err)
	}
	tokens := filepath.Join(dir, "tokens")
	if err := os.WriteFile(tokens, []byte(line+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse([]byte(fmt.Sprintf(`state_dir = %q
nix_db_path = ""
[[upstream]]
url = %q
public_keys = [%q]
[upload]
dir = %q
tokens_file = %q
[gc]
max_size = "1G"
interval = "1h"
`, filepath.Join(dir, "state"), upstream.URL, upKey.Public().String(), filepath.Join(dir, "upload"), tokens)))
	if err != nil {
		t.Fatal(err)
	}
	a, err := app.Open(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	hs := httptest.NewServer(a.Server)
	defer hs.Close()
	do := func(method, path string, body []byte, want int) []byte {
		t.Helper()
		req, _ := http.NewRequest(method, hs.URL+path, bytes.NewReader(body))
		req.SetBasicAuth("ci", tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != want {
			t.Fatalf("%s %s: %d %s, want %d", method, path, resp.StatusCode, b, want)
		}
		return b
	}
	file := nartest.File([]byte("monitoring metrics\n"))
	sum := sha256.Sum256(file)
	name := nixbase32.EncodeToString(sum[:]) + ".nar"
	hs20 := sha256.Sum256([]byte("monitoring"))
	hash := nixbase32.EncodeToString(hs20[:20])
	fh := narinfo.SHA256(sum[:])
	ni := &narinfo.NarInfo{StorePath: "/nix/store/" + hash + "-monitoring", URL: "nar/" + name, Compression: "none",
		FileHash: &fh, FileSize: uint64(len(file)), NarHash: narinfo.SHA256(sum[:]), NarSize: uint64(len(file))}
	do(http.MethodPut, "/nar/"+name, file, http.StatusOK)
	do(http.MethodPut, "/"+hash+".narinfo", []byte(ni.String()), http.StatusOK)
	got := do(http.MethodGet, "/"+hash+".narinfo", nil, http.StatusOK)
	served, err := narinfo.Parse(bytes.NewReader(got))
	if err != nil {
		t.Fatalf("served narinfo: %v\n%s", err, got)
	}
	do(http.MethodGet, "/"+served.URL, nil, http.StatusOK)
	do(http.MethodGet, "/"+strings.Repeat("1", 32)+".narinfo", nil, http.StatusNotFound)
	// A NAR whose bytes are not what its name says: refused as invalid,
	// a verification failure.
	bad := nartest.File([]byte("other bytes\n"))
	do(http.MethodPut, "/nar/"+name[:len(name)-5]+"0.nar", bad, http.StatusBadRequest)
	if _, err := a.Upload.GC(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	mfs, err := a.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	return mfs
}

// fleetMetrics builds the registry `deployer metrics` serves, on a host
// laid out in a temporary directory with one deploy record.
func fleetMetrics(t *testing.T) []*dto.MetricFamily {
	t.Helper()
	d := t.TempDir()
	o := host.Options{
		StateDir:      filepath.Join(d, "run", "concordia"),
		StoreDir:      filepath.Join(d, "store"),
		Profile:       filepath.Join(d, "profiles", "system"),
		CurrentSystem: filepath.Join(d, "run", "current-system"),
		BootedSystem:  filepath.Join(d, "run", "booted-system"),
		BootDir:       filepath.Join(d, "boot"),
		NixOSRunDir:   filepath.Join(d, "run", "nixos"),
	}
	sys := filepath.Join(d, "store", "00000000000000000000000000000000-nixos-system-a")
	for _, dir := range []string{sys, filepath.Join(d, "profiles"), filepath.Join(o.StateDir, "deploys")} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for f, c := range map[string]string{"kernel": "k1", "initrd": "i1", "nixos-version": "24.11.1\n"} {
		if err := os.WriteFile(filepath.Join(sys, f), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for link, target := range map[string]string{filepath.Join(d, "profiles", "system-1-link"): sys, o.Profile: "system-1-link",
		o.CurrentSystem: sys, o.BootedSystem: sys} {
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now().UTC()
	rec, _ := json.Marshal(hostverb.Record{ID: "d1", Mode: hostverb.Switch, Path: sys, State: hostverb.Confirmed, Started: now, Updated: now})
	if err := os.WriteFile(filepath.Join(o.StateDir, "deploys", "d1.json"), rec, 0o600); err != nil {
		t.Fatal(err)
	}
	mfs, err := genmetrics.Registry(o).Gather()
	if err != nil {
		t.Fatal(err)
	}
	return mfs
}
