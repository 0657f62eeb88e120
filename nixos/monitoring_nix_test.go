package nixos

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"testing"
)

type monitoringHost struct {
	Grafana *struct {
		Provision struct {
			Enable     bool `json:"enable"`
			Dashboards struct {
				Settings struct {
					Providers []map[string]any `json:"providers"`
				} `json:"settings"`
			} `json:"dashboards"`
		} `json:"provision"`
	} `json:"grafana"`
	RuleFiles    []string `json:"ruleFiles"`
	NodeExporter bool     `json:"nodeExporter"`
	Timer        bool     `json:"timer"`
}

// TestMonitoringModuleWiring evaluates nixos/modules/monitoring.nix (with a
// stand-in lib, tests/monitoring.nix) for hosts with and without Grafana
// and Prometheus: the dashboard provider goes where Grafana runs, the rules
// where Prometheus does, both can be turned off, and the node exporter
// part stays behind homelab.monitoring.enable.
func TestMonitoringModuleWiring(t *testing.T) {
	needNix(t)
	cmd := exec.Command("nix-instantiate", "--eval", "--strict", "--json", "tests/monitoring.nix")
	cmd.Env = nixEnv(t)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("evaluating tests/monitoring.nix: %v", err)
	}
	var r struct {
		Plain, Grafana, Prometheus, Both, OptedOut, OwnRules monitoringHost
		Files                                                struct{ Dashboards, Rules string }
	}
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatal(err)
	}
	dash, _ := filepath.Abs("monitoring/grafana")
	rules, _ := filepath.Abs(rulesFile)
	if r.Files.Dashboards != dash || r.Files.Rules != rules {
		t.Errorf("files: %+v, want %s and %s", r.Files, dash, rules)
	}
	// Grafana's file provider loads every dashboard of its directory: only
	// the dashboard may be there.
	ents, err := os.ReadDir(dash)
	if err != nil || len(ents) != 1 || ents[0].Name() != "concordia.json" {
		t.Errorf("dashboards directory holds %v (%v), want only concordia.json", ents, err)
	}
	wantProvider := map[string]any{"name": "concordia", "type": "file", "folder": "Concordia", "disableDeletion": true,
		"allowUiUpdates": false, "updateIntervalSeconds": float64(60), "options": map[string]any{"path": dash}}
	for name, h := range map[string]monitoringHost{"grafana": r.Grafana, "both": r.Both} {
		if h.Grafana == nil || !h.Grafana.Provision.Enable || len(h.Grafana.Provision.Dashboards.Settings.Providers) != 1 {
			t.Errorf("%s: no dashboard provider: %+v", name, h.Grafana)
			continue
		}
		if got := h.Grafana.Provision.Dashboards.Settings.Providers[0]; !reflect.DeepEqual(got, wantProvider) {
			t.Errorf("%s: provider %v, want %v", name, got, wantProvider)
		}
	}
	for name, h := range map[string]monitoringHost{"plain": r.Plain, "prometheus": r.Prometheus, "opted out": r.OptedOut, "own rules": r.OwnRules} {
		if h.Grafana != nil {
			t.Errorf("%s: Grafana settings on a host without Grafana or with dashboards off: %+v", name, h.Grafana)
		}
	}
	for name, tc := range map[string]struct {
		h    monitoringHost
		want []string
	}{
		"plain": {r.Plain, nil}, "grafana": {r.Grafana, nil}, "opted out": {r.OptedOut, nil},
		"prometheus": {r.Prometheus, []string{rules}}, "both": {r.Both, []string{rules}},
		"own rules": {r.OwnRules, []string{filepath.Join(filepath.Dir(rules), "../../tests/fake-rules.yml")}},
	} {
		want := tc.want
		for i := range want {
			want[i] = filepath.Clean(want[i])
		}
		if len(tc.h.RuleFiles) != len(want) || (len(want) > 0 && tc.h.RuleFiles[0] != want[0]) {
			t.Errorf("%s: ruleFiles %v, want %v", name, tc.h.RuleFiles, want)
		}
	}
	if !r.Both.NodeExporter || !r.Both.Timer || r.Grafana.NodeExporter || r.Prometheus.Timer {
		t.Errorf("node exporter and timer must follow homelab.monitoring.enable: both %+v, grafana %+v", r.Both, r.Grafana)
	}
}
