package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/bos55/concordia/internal/cli"
	"github.com/bos55/concordia/internal/genmetrics"
	"github.com/bos55/concordia/internal/host"
)

// metricsCmd is the generation exporter: NixOS generation state as
// Prometheus metrics, over HTTP or as a node-exporter textfile.
func metricsCmd() *cli.Command {
	var textfile, listen string
	var interval time.Duration
	return &cli.Command{
		Name:  "metrics",
		Usage: "[--textfile FILE [--interval D] | --listen ADDR]",
		Short: "export this host's NixOS generation metrics (Prometheus)",
		Long: `Reports nixos_current_generation, nixos_boot_generation, nixos_booted_generation,
nixos_config_age_seconds, nixos_test_deployment_active, nixos_reboot_required and
nixos_system_info{version,current,booted,boot_default}, read from /run/current-system,
/run/booted-system and the system profile exactly as the status host verb reads them;
nixos_last_deploy_state{state}, nixos_last_deploy_info{id,mode,state} and
nixos_last_deploy_timestamp_seconds from the host's deploy records (since boot); and
nixos_generation_metrics_timestamp_seconds, when they were computed.

With --textfile the metrics are written (atomically) for node exporter's textfile
collector, once, or every --interval. With --listen they are served at /metrics.`,
		Flags: func(fs *flag.FlagSet) {
			fs.StringVar(&textfile, "textfile", "", "write the metrics to this file (node exporter textfile collector)")
			fs.DurationVar(&interval, "interval", 0, "with --textfile: rewrite the file this often (0 = once)")
			fs.StringVar(&listen, "listen", "", "serve /metrics on this address, e.g. 127.0.0.1:9101")
		},
		Run: func(ctx context.Context, env *cli.Env, args []string) error {
			if len(args) != 0 {
				return cli.Usagef("unexpected arguments %q", args)
			}
			if (textfile == "") == (listen == "") {
				return cli.Usagef("give exactly one of --textfile or --listen")
			}
			var o host.Options
			if textfile != "" {
				for {
					if err := genmetrics.WriteTextfile(textfile, o); err != nil {
						return fmt.Errorf("writing %s: %w", textfile, err)
					}
					if interval <= 0 {
						return nil
					}
					select {
					case <-ctx.Done():
						return nil
					case <-time.After(interval):
					}
				}
			}
			mux := http.NewServeMux()
			mux.Handle("/metrics", promhttp.HandlerFor(genmetrics.Registry(o), promhttp.HandlerOpts{}))
			srv := &http.Server{Addr: listen, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
			go func() {
				<-ctx.Done()
				sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				_ = srv.Shutdown(sctx)
			}()
			fmt.Fprintf(env.Stderr, "serving generation metrics on http://%s/metrics\n", listen)
			if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		},
	}
}
