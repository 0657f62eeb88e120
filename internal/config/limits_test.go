package config_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/config"
	"github.com/bos55/concordia/internal/limits"
)

func TestLimitsDefaultsAndParse(t *testing.T) {
	c, err := config.Parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Limits.Values(); got != limits.Default() {
		t.Errorf("default limits %+v, want %+v", got, limits.Default())
	}
	c, err = config.Parse([]byte("[limits]\nmax_nar_size = \"1T\"\nmax_depth = 64\nxz_dict_max = \"8M\"\nmax_ratio = 0\n"))
	if err != nil {
		t.Fatal(err)
	}
	l := c.Limits.Values()
	if l.MaxNARSize != 1<<40 || l.MaxDepth != 64 || l.XZDictMax != 8<<20 || l.MaxRatio >= 0 || l.MaxEntries != limits.DefaultMaxEntries {
		t.Errorf("parsed limits %+v", l)
	}
	if l.OrDefault() != l || l.Decode(0).MaxRatio != 0 {
		t.Errorf("max_ratio = 0 must stay off: %+v", l.OrDefault())
	}
}

func TestLimitsValidation(t *testing.T) {
	for _, tc := range []struct{ doc, key string }{
		{`max_nar_size = "1K"`, "limits.max_nar_size"},
		{`max_depth = 0`, "limits.max_depth"},
		{`max_entries = -1`, "limits.max_entries"},
		{`max_name_length = 256`, "limits.max_name_length"},
		{`max_target_length = 0`, "limits.max_target_length"},
		{`xz_dict_max = "8G"`, "limits.xz_dict_max"},
		{`zstd_window_max = "100"`, "limits.zstd_window_max"},
		{`max_ratio = -5`, "limits.max_ratio"},
		{`max_listing_size = "1"`, "limits.max_listing_size"},
		{`max_depht = 5`, "limits.max_depht"},
		{`max_narinfo_size = "2M"`, "limits.max_narinfo_size"},
		{`max_signatures = 0`, "limits.max_signatures"},
		{`max_log_size = "10"`, "limits.max_log_size"},
		{`max_pins_per_token = 0`, "limits.max_pins_per_token"},
	} {
		t.Run(tc.key, func(t *testing.T) {
			_, err := config.Parse([]byte("[limits]\n" + tc.doc + "\n"))
			if err == nil || !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), tc.key) {
				t.Fatalf("err = %v, want one naming %q", err, tc.key)
			}
		})
	}
}

// TestDocumentLimitsAndRemember: the [limits] keys for narinfos, logs and
// pins, and [gc] remember (90 days unless set; "0" is forever).
func TestDocumentLimitsAndRemember(t *testing.T) {
	c, err := config.Parse([]byte("[limits]\nmax_narinfo_size = \"16K\"\nmax_signatures = 4\nmax_log_size = \"1G\"\nmax_pins_per_token = 10\n"))
	if err != nil {
		t.Fatal(err)
	}
	l := c.Limits.Values()
	if l.MaxNarinfoSize != 16<<10 || l.MaxSignatures != 4 || l.MaxLogSize != 1<<30 || l.MaxPinsPerToken != 10 || l.MaxNARSize != limits.DefaultMaxNARSize {
		t.Errorf("parsed limits %+v", l)
	}
	if time.Duration(c.GC.Remember) != config.DefaultRemember {
		t.Errorf("default remember %v", time.Duration(c.GC.Remember))
	}
	for doc, want := range map[string]time.Duration{"[gc]\nremember = \"0\"\n": 0, "[gc]\nremember = \"1d\"\n": 24 * time.Hour} {
		c, err := config.Parse([]byte(doc))
		if err != nil || time.Duration(c.GC.Remember) != want {
			t.Errorf("%q: %v %v", doc, c, err)
		}
	}
}
