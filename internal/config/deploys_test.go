package config_test

import (
	"strings"
	"testing"

	"github.com/bos55/concordia/internal/config"
)

// TestDeployHistoryKeys: [upload] deploy_reports_max (1000) and [limits]
// max_deploy_report_size (1M) reach the store's options, and values out
// of range are refused naming the key.
func TestDeployHistoryKeys(t *testing.T) {
	c, err := config.Parse([]byte(""))
	if err != nil {
		t.Fatal(err)
	}
	if c.Upload.DeployReportsMax != 1000 || c.Limits.Values().MaxDeployReportSize != 1<<20 {
		t.Fatalf("defaults %d %d", c.Upload.DeployReportsMax, c.Limits.Values().MaxDeployReportSize)
	}
	c, err = config.Parse([]byte("[upload]\ndeploy_reports_max = 50\n[limits]\nmax_deploy_report_size = \"4M\"\n"))
	if err != nil || c.Upload.DeployReportsMax != 50 || c.Limits.Values().MaxDeployReportSize != 4<<20 {
		t.Fatalf("set: %+v %v", c.Upload, err)
	}
	for doc, key := range map[string]string{
		"[upload]\ndeploy_reports_max = 0\n":          "upload.deploy_reports_max",
		"[upload]\ndeploy_reports_max = 2000000\n":    "upload.deploy_reports_max",
		"[limits]\nmax_deploy_report_size = \"1K\"\n": "limits.max_deploy_report_size",
		"[limits]\nmax_deploy_report_size = \"1G\"\n": "limits.max_deploy_report_size",
	} {
		if _, err := config.Parse([]byte(doc)); err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("%q: %v, want an error naming %s", doc, err, key)
		}
	}
}
