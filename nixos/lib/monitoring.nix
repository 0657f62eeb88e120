# Plain-Nix parts of the monitoring module (no nixpkgs needed): the shipped
# dashboard and alert rules, and the Grafana dashboard provider that loads
# them. nixos/tests/monitoring.nix evaluates them with the module.
rec {
  # The directory of dashboards Grafana's file provider watches; it holds
  # only concordia.json (the tests live beside the Go code).
  dashboardsDir = ../monitoring/grafana;

  # The alert rules; concordia-rules.test.yml beside it is their promtool test.
  rulesFile = ../monitoring/prometheus/concordia-rules.yml;

  # One entry of services.grafana.provision.dashboards.settings.providers
  # (Grafana's provisioning format: name, type, folder, options.path).
  # Provisioned dashboards are replaced at each deploy, so edits in the UI
  # are refused rather than lost.
  grafanaProvider = { path ? dashboardsDir, name ? "concordia", folder ? "Concordia" }: {
    inherit name folder;
    type = "file";
    disableDeletion = true;
    allowUiUpdates = false;
    updateIntervalSeconds = 60;
    options.path = path;
  };
}
