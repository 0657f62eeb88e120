# Node exporter plus Concordia's generation metrics (current, booted and
# boot-default generation, test deployment active, reboot pending), written
# by `deployer metrics --textfile` for the node exporter's textfile collector.
{ config, lib, pkgs, ... }:
let
  cfg = config.homelab.monitoring;
  dir = "/var/lib/prometheus-node-exporter-text";
in
{
  options.homelab.monitoring = {
    enable = lib.mkEnableOption "node exporter with NixOS generation metrics";
    package = lib.mkOption { type = lib.types.package; description = "The Concordia package (provides bin/deployer)."; };
    interval = lib.mkOption { type = lib.types.str; default = "1min"; description = "How often generation metrics are refreshed."; };
    openFirewall = lib.mkOption { type = lib.types.bool; default = false; description = "Open the node exporter port."; };
  };

  config = lib.mkIf cfg.enable {
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
  };
}
