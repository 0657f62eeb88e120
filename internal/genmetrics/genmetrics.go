// Package genmetrics turns a host's NixOS generation state (what runs, what
// was booted, what boots next) into Prometheus metrics, for `deployer
// metrics`. It reads the same facts as the status host verb
// (host.Inspect), so the exporter and the deployer can never disagree about
// whether a test deployment is active or a reboot is pending.
package genmetrics

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bos55/concordia/internal/host"
	"github.com/bos55/concordia/internal/hostverb"
)

// Collector computes the metrics at every scrape.
type Collector struct {
	opts host.Options
	now  func() time.Time

	current, boot, booted, age, test, reboot, recommend, failed, info, up *prometheus.Desc
	stamp, lastState, lastInfo, lastTime                                  *prometheus.Desc
}

// deployStates are the label values of nixos_last_deploy_state, every one
// reported (0 or 1) so an alert or a dashboard sees the series flip
// instead of appearing and disappearing.
var deployStates = []hostverb.State{hostverb.Activating, hostverb.AwaitingConfirm, hostverb.Confirmed,
	hostverb.RollingBack, hostverb.RolledBack, hostverb.Failed}

// New returns a collector for the host described by o (zero value: the real
// NixOS locations).
func New(o host.Options) *Collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	return &Collector{
		opts:      o,
		now:       time.Now,
		current:   d("nixos_current_generation", "Generation number of the running system (/run/current-system); 0 when it is no generation of the system profile, as during a test deployment."),
		boot:      d("nixos_boot_generation", "Generation number of the system the boot loader starts next: its default entry where it can be read (source systemd-boot or grub), else the system profile (source profile).", "source"),
		booted:    d("nixos_booted_generation", "Generation number of the system that was booted (/run/booted-system); 0 when it is no longer a generation."),
		age:       d("nixos_config_age_seconds", "Seconds since the running configuration was activated."),
		test:      d("nixos_test_deployment_active", "1 when the running system is not the boot default (a `test` deployment, reverted by a reboot)."),
		reboot:    d("nixos_reboot_required", "1 when the boot default or the running system has another kernel or kernel modules than the booted one."),
		recommend: d("nixos_reboot_recommended", "1 when only the initrd differs from the booted one's (most nixpkgs updates): a reboot is recommended, not required."),
		failed:    d("nixos_failed_units", "Number of failed systemd units."),
		info:      d("nixos_system_info", "The running, booted and boot-default systems; value is always 1.", "version", "current", "booted", "boot_default"),
		up:        d("nixos_generation_metrics_up", "1 when the generation state could be read."),
		stamp:     d("nixos_generation_metrics_timestamp_seconds", "When these metrics were computed (Unix time): a textfile that stopped being rewritten shows here as an old time."),
		lastState: d("nixos_last_deploy_state", "1 for the state of the deploy that started last on this host since boot (activating, awaiting-confirm, confirmed, rolling-back, rolled-back, failed), 0 for the others; absent before the first deploy.", "state"),
		lastInfo:  d("nixos_last_deploy_info", "The deploy that started last since boot: its id, mode and state; value is always 1.", "id", "mode", "state"),
		lastTime:  d("nixos_last_deploy_timestamp_seconds", "When the last deploy reached its current state (Unix time)."),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.current, c.boot, c.booted, c.age, c.test, c.reboot, c.recommend, c.failed, c.info, c.up,
		c.stamp, c.lastState, c.lastInfo, c.lastTime} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	g := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	// The time goes out even when nothing else can be read, so a stale
	// textfile and a failing exporter are told apart.
	g(c.stamp, float64(c.now().UnixNano())/1e9)
	c.collectLastDeploy(g)
	st, err := host.Inspect(context.Background(), c.opts)
	if err != nil {
		g(c.up, 0)
		return
	}
	g(c.up, 1)
	g(c.current, float64(st.Current.Generation))
	g(c.boot, float64(st.BootDefault.Generation), st.BootDefaultSource)
	g(c.booted, float64(st.Booted.Generation))
	g(c.test, b2f(st.TestActive))
	g(c.reboot, b2f(st.RebootPending))
	g(c.recommend, b2f(st.RebootSuggested))
	g(c.failed, float64(len(st.UnitsFailed)))
	if age, ok := c.configAge(); ok {
		g(c.age, age.Seconds())
	}
	g(c.info, 1, version(st.Current.Path), st.Current.Path, st.Booted.Path, st.BootDefault.Path)
}

// collectLastDeploy reports the deploy that started last (the host's own
// record, the one the deployer's report is built from). A state directory
// that cannot be listed leaves the series out rather than failing the
// generation metrics.
func (c *Collector) collectLastDeploy(g func(*prometheus.Desc, float64, ...string)) {
	r, err := host.LastDeploy(c.opts)
	if err != nil || r == nil {
		return
	}
	for _, s := range deployStates {
		g(c.lastState, b2f(r.State == s), string(s))
	}
	g(c.lastInfo, 1, r.ID, string(r.Mode), string(r.State))
	if !r.Updated.IsZero() {
		g(c.lastTime, float64(r.Updated.UnixNano())/1e9)
	}
}

// configAge is how long ago /run/current-system was last pointed somewhere:
// activation replaces that link, so its own mtime is the activation time.
func (c *Collector) configAge() (time.Duration, bool) {
	link := c.opts.CurrentSystem
	if link == "" {
		link = "/run/current-system"
	}
	fi, err := os.Lstat(link)
	if err != nil {
		return 0, false
	}
	age := c.now().Sub(fi.ModTime())
	if age < 0 {
		age = 0
	}
	return age, true
}

// version reads the system's nixos-version file ("24.05.20240101.abcdef").
func version(system string) string {
	if system == "" {
		return ""
	}
	b, err := os.ReadFile(filepath.Join(system, "nixos-version"))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Registry returns a registry holding only the generation metrics (no Go
// runtime noise: node exporter's textfile collector merges them into its
// own output).
func Registry(o host.Options) *prometheus.Registry {
	r := prometheus.NewRegistry()
	r.MustRegister(New(o))
	return r
}

// WriteTextfile writes the metrics for node exporter's textfile collector.
// prometheus.WriteToTextfile writes a temp file and renames it, so the
// collector never reads a half-written file.
func WriteTextfile(path string, o host.Options) error {
	return prometheus.WriteToTextfile(path, Registry(o))
}
