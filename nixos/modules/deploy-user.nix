# The `deploy` user: no home, no login shell, keys forced through
# `deployer gate`, no sudo at all: the gate hands root verbs to the root
# agent (deployer-agent.socket), which answers only root and this user and
# runs nothing but the host-verb contract. Not a trusted Nix user, so it
# can only activate what a trusted key signed.
{ config, lib, pkgs, ... }:
let
  cfg = config.homelab.deploy;
  clib = import ../lib;
  deployer = "${cfg.package}/bin/deployer";
  units = clib.agentUnits { user = cfg.sshUser; inherit deployer; };
  userGroups = [ config.users.users.${cfg.sshUser}.group ] ++ config.users.users.${cfg.sshUser}.extraGroups;
in
{
  options.homelab.deploy = {
    enable = lib.mkEnableOption "deployment of this host by Concordia's deployer";
    targetHost = lib.mkOption { type = lib.types.nullOr lib.types.str; default = null; example = "web1.example.org"; description = "Address the deployer reaches this host at (stated once; lib.deployNodes reads it)."; };
    sshUser = lib.mkOption { type = lib.types.str; default = "deploy"; description = "The deploy user's name."; };
    package = lib.mkOption { type = lib.types.package; description = "The Concordia package (provides bin/deployer)."; };
    authorizedKeys = lib.mkOption { type = lib.types.listOf lib.types.str; default = [ ]; description = "Public keys allowed to deploy (CI key plus personal keys); each is forced through `deployer gate`."; };
    tags = lib.mkOption { type = lib.types.nullOr (lib.types.listOf lib.types.str); default = null; description = "Tags for `deployer push --on @tag`."; };
    sshOpts = lib.mkOption { type = lib.types.nullOr (lib.types.listOf lib.types.str); default = null; description = "Extra ssh options for this host."; };
    magicRollback = lib.mkOption { type = lib.types.nullOr lib.types.bool; default = null; description = "Roll back unless the deployer confirms (default true)."; };
    autoRollback = lib.mkOption { type = lib.types.nullOr lib.types.bool; default = null; description = "Roll back when activation fails (default true)."; };
    confirmTimeout = lib.mkOption { type = lib.types.nullOr lib.types.int; default = null; description = "Seconds to wait for confirmation (default 30)."; };
    activationTimeout = lib.mkOption { type = lib.types.nullOr lib.types.int; default = null; description = "Seconds activation may take."; };
    fastConnection = lib.mkOption { type = lib.types.nullOr lib.types.bool; default = null; description = "Accepted for deploy-rs compatibility (hosts always substitute from the cache)."; };
    canary = lib.mkOption { type = lib.types.nullOr lib.types.bool; default = null; description = "Deploy this host before all others; if it fails, `deployer push` starts no other host (`--canary` overrides)."; };
    wave = lib.mkOption { type = lib.types.nullOr lib.types.int; default = null; example = 1; description = "Rollout wave: hosts deploy wave by wave, lowest first, each wave finishing before the next starts (default 0)."; };
    deployerPath = lib.mkOption { type = lib.types.nullOr lib.types.str; default = deployer; description = "Path of the deployer on this host (informational: the gate always runs itself)."; };
    healthChecks = lib.mkOption {
      type = lib.types.nullOr (lib.types.listOf lib.types.attrs);
      default = null;
      example = [ { command = "systemctl is-active nginx"; } { url = "https://web1.example.org/health"; } ];
      description = ''
        Checks between activation and confirmation; a failing one rolls the host back.
        `{ command = "..."; name = "..."; timeout = 10; }` runs on this host, as root, against the new
        system: the command is part of this configuration (a script in the system's closure, listed in
        /etc/concordia/health-checks.json), so the deploy key never sends a command line.
        `{ url = "..."; }` is fetched by the deployer (any 2xx passes).
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    users.users.${cfg.sshUser} = {
      isSystemUser = true;
      group = cfg.sshUser;
      home = "/var/empty";
      createHome = false;
      shell = pkgs.bashInteractive; # sshd needs a shell to run the forced command; the key can't reach it
      openssh.authorizedKeys.keys = map (key: clib.authorizedKey { inherit deployer key; }) cfg.authorizedKeys;
    };
    users.groups.${cfg.sshUser} = { };

    systemd.sockets.deployer-agent = {
      description = "Concordia deployer agent socket (host verbs for ${cfg.sshUser})";
      wantedBy = [ "sockets.target" ];
      socketConfig = units.socket;
    };
    systemd.services."deployer-agent@" = {
      description = "Concordia deployer agent (one host verb)";
      # An activation must not restart the agent instance that runs it (a new
      # deployer package changes this unit); new connections get the new one.
      restartIfChanged = false;
      stopIfChanged = false;
      # nix for the store, systemd-run for detached activations.
      path = [ config.nix.package config.systemd.package ];
      serviceConfig = units.service;
    };

    environment.etc."concordia/health-checks.json".text = clib.healthChecksFile {
      checks = cfg.healthChecks;
      script = c: "${pkgs.writeShellScript "concordia-health-${c.name}" c.command}";
    };
    environment.systemPackages = [ cfg.package ];

    # Deliberately NOT trusted by Nix: the daemon then only accepts
    # substitutes signed by trusted-public-keys (the cache's key).
    assertions = [{
      assertion = !(clib.trustsUser { trustedUsers = config.nix.settings.trusted-users or [ ]; user = cfg.sshUser; groups = userGroups; });
      message = "homelab.deploy: ${cfg.sshUser} must not be a trusted Nix user, directly, through a group or through \"*\" (it could then import unsigned paths)";
    }];
  };
}
