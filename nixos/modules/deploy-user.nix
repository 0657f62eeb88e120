# The `deploy` user: no home, no login shell, keys forced through
# `deployer gate`, sudo only for the deployer's host verbs, and NOT a trusted
# Nix user, so it can only activate what the cache signed.
{ config, lib, pkgs, ... }:
let
  cfg = config.homelab.deploy;
  clib = import ../lib;
  deployer = "${cfg.package}/bin/deployer";
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
    deployerPath = lib.mkOption { type = lib.types.nullOr lib.types.str; default = deployer; description = "Path of the deployer on this host."; };
    healthChecks = lib.mkOption { type = lib.types.nullOr (lib.types.listOf lib.types.attrs); default = null; description = "Checks before confirming: { command = \"...\"; } run on the host, or { url = \"...\"; } fetched by the deployer."; };
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
    security.sudo.extraRules = clib.sudoRules { user = cfg.sshUser; inherit deployer; };
    environment.systemPackages = [ cfg.package ];
    # Deliberately NOT in nix.settings.trusted-users: the daemon then only
    # accepts substitutes signed by trusted-public-keys (the cache's key).
    assertions = [{
      assertion = !(lib.elem cfg.sshUser (config.nix.settings.trusted-users or [ ]));
      message = "homelab.deploy: ${cfg.sshUser} must not be a trusted Nix user (it could then import unsigned paths)";
    }];
  };
}
