# The Concordia binary cache as a hardened systemd service. Settings are
# rendered to the TOML the server reads (nixos/lib toTOML, tested in CI);
# signing keys and the upload tokens file come in as systemd credentials, so
# they never sit in the Nix store or in the service's environment.
{ config, lib, pkgs, ... }:
let
  cfg = config.services.concordia-cache;
  clib = import ../lib;
  credDir = "/run/credentials/concordia-cache.service";
  keyNames = lib.imap0 (i: _: "sign-key-${toString i}") cfg.signKeyFiles;
  settings = lib.recursiveUpdate
    {
      bind = "${cfg.listenAddress}:${toString cfg.port}";
      priority = cfg.priority;
      compression = cfg.compression;
      state_dir = "/var/lib/concordia-cache";
      sign_key_paths = map (n: "${credDir}/${n}") keyNames;
      upload = lib.optionalAttrs cfg.upload.enable {
        dir = "/var/lib/concordia-cache/upload";
        tokens_file = "${credDir}/tokens";
        private = cfg.upload.private;
      };
      gc = lib.optionalAttrs cfg.upload.enable {
        max_size = cfg.gc.maxSize;
        max_age = cfg.gc.maxAge;
        interval = cfg.gc.interval;
      };
    }
    cfg.settings;
  configFile = pkgs.writeText "concordia-cache.toml" (clib.toTOML settings);
in
{
  options.services.concordia-cache = {
    enable = lib.mkEnableOption "the Concordia Nix binary cache";
    package = lib.mkOption {
      type = lib.types.package;
      description = "The Concordia package (provides bin/cache).";
    };
    listenAddress = lib.mkOption { type = lib.types.str; default = "127.0.0.1"; description = "Address to listen on (use 0.0.0.0 without a reverse proxy)."; };
    port = lib.mkOption { type = lib.types.port; default = 5000; description = "TCP port."; };
    priority = lib.mkOption { type = lib.types.int; default = 30; description = "Priority announced in nix-cache-info (lower wins; cache.nixos.org is 40)."; };
    compression = lib.mkOption { type = lib.types.enum [ "zstd" "none" ]; default = "zstd"; description = "What narinfos announce."; };
    signKeyFiles = lib.mkOption {
      type = lib.types.listOf lib.types.path;
      default = [ ];
      description = "Secret key files (nix-store --generate-binary-cache-key or `cache keygen`), passed as credentials.";
    };
    upload = {
      enable = lib.mkEnableOption "uploads with `nix copy --to` (CI)";
      tokensFile = lib.mkOption { type = lib.types.nullOr lib.types.path; default = null; description = "Tokens file (name:permissions:sha256), passed as a credential."; };
      private = lib.mkOption { type = lib.types.bool; default = false; description = "Require a read token for reads too."; };
    };
    gc = {
      maxSize = lib.mkOption { type = lib.types.nullOr lib.types.str; default = "50G"; description = "Upload store size limit."; };
      maxAge = lib.mkOption { type = lib.types.nullOr lib.types.str; default = "90d"; description = "Remove uploads not fetched for this long (never breaking a closure or a pin)."; };
      interval = lib.mkOption { type = lib.types.nullOr lib.types.str; default = "6h"; description = "How often GC runs."; };
    };
    settings = lib.mkOption {
      type = lib.types.attrs;
      default = { };
      description = "Extra settings merged into the TOML file (Harmonia's keys are accepted).";
    };
    openFirewall = lib.mkOption { type = lib.types.bool; default = false; description = "Open the port in the firewall."; };
    nginx = {
      enable = lib.mkEnableOption "an nginx front with TLS (ACME) for the cache";
      domain = lib.mkOption { type = lib.types.str; default = ""; description = "Public name of the cache, e.g. cache.example.org."; };
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      { assertion = cfg.upload.enable -> cfg.upload.tokensFile != null; message = "services.concordia-cache.upload.tokensFile must be set when uploads are enabled"; }
      { assertion = cfg.nginx.enable -> cfg.nginx.domain != ""; message = "services.concordia-cache.nginx.domain must be set"; }
    ];

    users.users.concordia-cache = { isSystemUser = true; group = "concordia-cache"; description = "Concordia binary cache"; };
    users.groups.concordia-cache = { };

    systemd.services.concordia-cache = {
      description = "Concordia Nix binary cache";
      wantedBy = [ "multi-user.target" ];
      after = [ "network.target" "nix-daemon.socket" ];
      serviceConfig = {
        # An unprivileged SQLite reader can open Nix's WAL database only
        # while db.sqlite-wal and -shm exist; Nix deletes them when its last
        # connection closes. One read-only open as root ("+") creates them,
        # and the server's own open connection keeps them from then on.
        ExecStartPre = "+${cfg.package}/bin/cache serve --config ${configFile} --prepare-db";
        ExecStart = "${cfg.package}/bin/cache serve --config ${configFile}";
        ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
        User = "concordia-cache";
        Group = "concordia-cache";
        Restart = "on-failure";
        StateDirectory = "concordia-cache";
        StateDirectoryMode = "0700";
        LoadCredential =
          lib.zipListsWith (n: f: "${n}:${f}") keyNames cfg.signKeyFiles
          ++ lib.optional (cfg.upload.enable && cfg.upload.tokensFile != null) "tokens:${cfg.upload.tokensFile}";
        # Read access to the store and its database only.
        ReadOnlyPaths = [ "/nix/store" "/nix/var/nix/db" "/nix/var/log/nix" ];
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = true;
        PrivateUsers = true;
        NoNewPrivileges = true;
        CapabilityBoundingSet = "";
        AmbientCapabilities = "";
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectClock = true;
        ProtectHostname = true;
        ProtectProc = "invisible";
        ProcSubset = "pid";
        RestrictAddressFamilies = [ "AF_UNIX" "AF_INET" "AF_INET6" ];
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        RemoveIPC = true;
        SystemCallArchitectures = "native";
        SystemCallFilter = [ "@system-service" "~@privileged" "~@resources" ];
        UMask = "0077";
        LimitNOFILE = 65536;
      };
    };

    networking.firewall.allowedTCPPorts = lib.mkIf cfg.openFirewall
      (if cfg.nginx.enable then [ 80 443 ] else [ cfg.port ]);

    services.nginx = lib.mkIf cfg.nginx.enable {
      enable = true;
      recommendedProxySettings = true;
      virtualHosts.${cfg.nginx.domain} = {
        enableACME = true;
        forceSSL = true;
        locations."/" = {
          proxyPass = "http://${cfg.listenAddress}:${toString cfg.port}";
          extraConfig = ''
            proxy_buffering off;
            proxy_request_buffering off;
            client_max_body_size 0;
          '';
        };
      };
    };
  };
}
