# The Concordia binary cache as a hardened systemd service. Settings are
# rendered to the TOML the server reads (nixos/lib cacheSettings and toTOML,
# tested in CI). Signing keys come in as systemd credentials, so they never
# sit in the Nix store or in the service's environment. The tokens file is
# read in place, by path, not copied once at start: the server rereads it
# whenever its content changes and on `systemctl reload` (SIGHUP), so
# deleting a line revokes that token on the running server.
{ config, lib, pkgs, ... }:
let
  cfg = config.services.concordia-cache;
  clib = import ../lib;
  credDir = "/run/credentials/concordia-cache.service";
  keyNames = lib.imap0 (i: _: "sign-key-${toString i}") cfg.signKeyFiles;
  settings = lib.recursiveUpdate
    (clib.cacheSettings {
      inherit (cfg) listenAddress port priority compression;
      stateDir = "/var/lib/concordia-cache";
      signKeyPaths = map (n: "${credDir}/${n}") keyNames;
      upload = { inherit (cfg.upload) enable tokensFile private; };
      gc = { inherit (cfg.gc) maxSize maxAge interval; };
      inherit (cfg) upstreams;
    })
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
      tokensFile = lib.mkOption {
        type = lib.types.nullOr lib.types.path;
        default = null;
        example = "/run/secrets/concordia-tokens";
        description = ''
          Tokens file (one `name:permissions:sha256` line per token, made by
          `cache token NAME --perm ...`; permissions read, write, pin, admin).
          It is read in place by the service user `concordia-cache`, so make it
          a secret owned by (or group-readable for) that user, e.g. sops-nix
          `sops.secrets.concordia-tokens.owner = "concordia-cache";` or agenix
          with `owner = "concordia-cache";`, outside /home and /root. It must not
          be a Nix store path (a stable symlink into the store, such as an
          /etc file, is fine). The server rereads it whenever its content
          changes (checked at most once a second and every few seconds) and on
          `systemctl reload concordia-cache`; a line that does not parse is
          refused and reported, never the whole file kept as it was; a file
          that cannot be read leaves no token working.
        '';
      };
      private = lib.mkOption { type = lib.types.bool; default = false; description = "Require a read token for every read (all but /, /health and /version). Needs tokensFile; works without uploads too (a private cache of this host's store)."; };
    };
    gc = {
      maxSize = lib.mkOption { type = lib.types.nullOr lib.types.str; default = "50G"; description = "Upload store size limit."; };
      maxAge = lib.mkOption { type = lib.types.nullOr lib.types.str; default = "90d"; description = "Remove uploads not fetched for this long (never breaking a closure or a pin)."; };
      interval = lib.mkOption { type = lib.types.nullOr lib.types.str; default = "6h"; description = "How often GC runs."; };
    };
    upstreams = lib.mkOption {
      default = [ ];
      example = lib.literalExpression ''[ { url = "https://cache.nixos.org"; publicKeys = [ "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ]; } ]'';
      description = ''
        Upstream caches, asked in this order for what this cache lacks; an
        answer counts only when one of the upstream's keys signed it. With
        pullThrough, hosts get the upstream's paths from this cache (each NAR
        fetched once, verified, kept in the upload store and evicted first by
        GC), so the cache can be a host's only substituter. Either way,
        `nix copy --to` skips the paths an upstream has, references to them
        are accepted, and an upload of one of them must be its NAR.
      '';
      type = lib.types.listOf (lib.types.submodule {
        options = {
          url = lib.mkOption { type = lib.types.str; description = "Base URL of the upstream cache."; };
          publicKeys = lib.mkOption { type = lib.types.listOf lib.types.str; description = "Its public keys (name:base64)."; };
          name = lib.mkOption { type = lib.types.nullOr lib.types.str; default = null; description = "Label in metrics and logs (default: the URL's host)."; };
          timeout = lib.mkOption { type = lib.types.nullOr lib.types.str; default = null; description = "Bound of a narinfo request and of a NAR's silence (default 5s)."; };
          negativeTtl = lib.mkOption { type = lib.types.nullOr lib.types.str; default = null; description = "How long a miss is remembered (default 1m)."; };
          netrcFile = lib.mkOption { type = lib.types.nullOr lib.types.path; default = null; description = "netrc with the login of a private upstream, read by the service user (a secret, not a store path)."; };
          tokenFile = lib.mkOption { type = lib.types.nullOr lib.types.path; default = null; description = "Bearer token of a private upstream, read by the service user."; };
          pullThrough = lib.mkOption { type = lib.types.bool; default = true; description = "Serve and keep the upstream's paths (off: it only counts for uploads)."; };
        };
      });
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
    assertions = clib.cacheAssertions { upload = { inherit (cfg.upload) enable tokensFile private; }; } ++ [
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
        # SIGHUP rereads the tokens file (it never stops the server).
        ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
        User = "concordia-cache";
        Group = "concordia-cache";
        Restart = "on-failure";
        StateDirectory = "concordia-cache";
        StateDirectoryMode = "0700";
        # Signing keys only: they are read once at start. The tokens file
        # is read in place (see upload.tokensFile).
        LoadCredential = lib.zipListsWith (n: f: "${n}:${f}") keyNames cfg.signKeyFiles;
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
