# Node exporter plus Concordia's generation metrics (current, booted and
# boot-default generation, test deployment active, reboot pending, the last
# deploy's state), written by `deployer metrics --textfile` for the node
# exporter's textfile collector.
#
# On a host that runs Grafana or Prometheus, the module also provisions
# Concordia's dashboard (nixos/monitoring/grafana/concordia.json) and adds its
# alert rules (nixos/monitoring/prometheus/concordia-rules.yml), whether or not
# homelab.monitoring.enable is set there. nixpkgs options used:
# services.grafana.provision.{enable,dashboards.settings.providers} and
# services.prometheus.ruleFiles.
{ config, lib, pkgs, ... }:
let
  cfg = config.homelab.monitoring;
  mlib = import ../lib/monitoring.nix;
  dir = "/var/lib/prometheus-node-exporter-text";
in
{
  options.homelab.monitoring = {
    enable = lib.mkEnableOption "node exporter with NixOS generation metrics";
    package = lib.mkOption { type = lib.types.package; description = "The Concordia package (provides bin/deployer)."; };
    interval = lib.mkOption { type = lib.types.str; default = "1min"; description = "How often generation metrics are refreshed."; };
    openFirewall = lib.mkOption { type = lib.types.bool; default = false; description = "Open the node exporter port."; };
    dashboards.enable = lib.mkOption {
      type = lib.types.bool;
      default = true;
      description = ''
        Provision Concordia's Grafana dashboard (folder "Concordia") when
        services.grafana.enable is on. Turn it off on a host that sets
        services.grafana.provision.dashboards.path: Grafana takes either
        that or settings, not both.
      '';
    };
    alertRules = {
      enable = lib.mkOption {
        type = lib.types.bool;
        default = true;
        description = "Add Concordia's alert rules to services.prometheus.ruleFiles when services.prometheus.enable is on.";
      };
      file = lib.mkOption {
        type = lib.types.path;
        default = mlib.rulesFile;
        description = "The rules file to add: the shipped one, or a copy with other thresholds.";
      };
    };
  };

  config = lib.mkMerge [
    (lib.mkIf cfg.enable {
      services.prometheus.exporters.node = {
        enable = true;
        enabledCollectors = [ "systemd" "textfile" ];
        extraFlags = [ "--collector.textfile.directory=${dir}" ];
        openFirewall = cfg.openFirewall;
      };
      systemd.tmpfiles.rules = [ "d ${dir} 0755 root root -" ];
      systemd.services.concordia-generation-metrics = {
        description = "NixOS generation metrics for the node exporter";
        serviceConfig = {
          Type = "oneshot";
          ExecStart = "${cfg.package}/bin/deployer metrics --textfile ${dir}/nixos_generation.prom";
          ProtectSystem = "strict";
          ReadWritePaths = [ dir ];
          NoNewPrivileges = true;
          PrivateTmp = true;
        };
      };
      systemd.timers.concordia-generation-metrics = {
        wantedBy = [ "timers.target" ];
        timerConfig = { OnBootSec = "30s"; OnUnitActiveSec = cfg.interval; };
      };
    })
    (lib.mkIf (cfg.dashboards.enable && config.services.grafana.enable) {
      services.grafana.provision = {
        enable = true;
        dashboards.settings.providers = [ (mlib.grafanaProvider { }) ];
      };
    })
    (lib.mkIf (cfg.alertRules.enable && config.services.prometheus.enable) {
      services.prometheus.ruleFiles = [ cfg.alertRules.file ];
    })
  ];
}
