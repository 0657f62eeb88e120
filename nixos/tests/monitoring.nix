# The monitoring module evaluated without nixpkgs: a stand-in lib whose
# mkIf and mkMerge are resolved here, and a host config with Grafana and
# Prometheus on or off. The Go test (nixos/monitoring_nix_test.go) reads the
# JSON: what each host gets in services.grafana and services.prometheus.
let
  mlib = import ../lib/monitoring.nix;
  stubLib = {
    mkIf = condition: content: { _type = "if"; inherit condition content; };
    mkMerge = contents: { _type = "merge"; inherit contents; };
    mkOption = o: o;
    mkEnableOption = d: { default = false; description = d; };
    types = { package = "package"; str = "str"; bool = "bool"; path = "path"; };
  };
  # merge two resolved definitions: attribute sets recursively, lists
  # concatenated, as the module system would for these option types.
  merge = a: b:
    a // builtins.mapAttrs
      (k: bv:
        if a ? ${k} && builtins.isAttrs a.${k} && builtins.isAttrs bv then merge a.${k} bv
        else if a ? ${k} && builtins.isList a.${k} && builtins.isList bv then a.${k} ++ bv
        else bv)
      b;
  # Paths become strings (their place in the checkout), so the JSON output
  # copies nothing into the store.
  resolve = v:
    if builtins.isPath v then toString v
    else if builtins.isAttrs v && (v._type or "") == "if" then (if v.condition then resolve v.content else { })
    else if builtins.isAttrs v && (v._type or "") == "merge" then builtins.foldl' merge { } (map resolve v.contents)
    else if builtins.isAttrs v then builtins.mapAttrs (_: resolve) v
    else if builtins.isList v then map resolve v
    else v;
  host = { grafana ? false, prometheus ? false, monitoring ? { } }:
    let
      hm = {
        enable = false;
        package = "/nix/store/00000000000000000000000000000000-concordia";
        interval = "1min";
        openFirewall = false;
        dashboards.enable = true;
        alertRules = { enable = true; file = mlib.rulesFile; };
      } // monitoring;
      module = import ../modules/monitoring.nix {
        config = {
          homelab.monitoring = hm;
          services.grafana.enable = grafana;
          services.prometheus.enable = prometheus;
        };
        lib = stubLib;
        pkgs = { };
      };
      c = resolve module.config;
    in
    {
      grafana = c.services.grafana or null;
      ruleFiles = c.services.prometheus.ruleFiles or [ ];
      nodeExporter = c.services.prometheus.exporters.node.enable or false;
      timer = (c.systemd or { }) ? timers && c.systemd.timers ? concordia-generation-metrics;
    };
in
{
  plain = host { };
  grafana = host { grafana = true; };
  prometheus = host { prometheus = true; };
  both = host { grafana = true; prometheus = true; monitoring = { enable = true; }; };
  optedOut = host {
    grafana = true;
    prometheus = true;
    monitoring = { dashboards.enable = false; alertRules = { enable = false; file = mlib.rulesFile; }; };
  };
  ownRules = host { prometheus = true; monitoring = { alertRules = { enable = true; file = ./fake-rules.yml; }; }; };
  files = { dashboards = toString mlib.dashboardsDir; rules = toString mlib.rulesFile; };
}
