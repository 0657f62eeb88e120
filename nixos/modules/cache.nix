# The Concordia binary cache as a hardened systemd service. Settings are
# rendered to the TOML the server reads (nixos/lib cacheSettings and toTOML,
# tested in CI). Signing keys, and the shared store's S3 secret key and
# database password, come in as systemd credentials, so they never sit in
# the Nix store or in the service's environment. The tokens file is
# read in place, by path, not copied once at start: the server rereads it
# whenever its content changes and on `systemctl reload` (SIGHUP), so
# deleting a line revokes that token on the running server. With
# upload.s3 and upload.database the upload store is a bucket and a
# PostgreSQL index that several hosts running this module share (replicas
# behind one load balancer, see the README).
{ config, lib, pkgs, ... }:
let
  cfg = config.services.concordia-cache;
  clib = import ../lib;
  user = "concordia-cache";
  credDir = "/run/credentials/concordia-cache.service";
  # Signing keys, the S3 secret key and the database password, as
  # credentials (nixos/lib cacheCredentials).
  creds = clib.cacheCredentials {
    inherit credDir;
    inherit (cfg) signKeyFiles;
    upload = { inherit (cfg.upload) s3 database; };
  };
  shared = cfg.upload.s3 != null || cfg.upload.database != null;
  localDb = cfg.upload.database != null && cfg.upload.database.createLocally;
  localPg = clib.cacheLocalDatabase { inherit user; };
  settings = lib.recursiveUpdate
    (clib.cacheSettings {
      inherit (cfg) listenAddress port priority compression localStore;
      inherit user;
      stateDir = "/var/lib/concordia-cache";
      inherit (creds) signKeyPaths;
      upload = { inherit (cfg.upload) enable tokensFile private; inherit (creds.upload) s3 database; };
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
      s3 = lib.mkOption {
        default = null;
        example = lib.literalExpression ''{ endpoint = "http://127.0.0.1:9000"; bucket = "concordia"; accessKeyId = "concordia"; secretAccessKeyFile = "/run/secrets/concordia-s3"; }'';
        description = ''
          Keep the upload store's files (NARs, build logs, quarantine) in an
          S3-compatible bucket instead of the state directory, so that
          several hosts running this service behind one load balancer serve
          the same uploads, pins and GC. Needs upload.database (the index);
          the state directory then keeps only local temporary files.
          `cache migrate` copies an existing store in (see `cache migrate --help`).
        '';
        type = lib.types.nullOr (lib.types.submodule {
          options = {
            endpoint = lib.mkOption { type = lib.types.str; example = "http://127.0.0.1:9000"; description = "URL of the S3 server, http or https, without a path (the bucket is not part of it)."; };
            bucket = lib.mkOption { type = lib.types.str; description = "Bucket that holds the files."; };
            region = lib.mkOption { type = lib.types.nullOr lib.types.str; default = null; description = "Region the requests are signed for (default us-east-1, which MinIO accepts)."; };
            prefix = lib.mkOption { type = lib.types.nullOr lib.types.str; default = null; description = "Start of every key the cache writes, so one bucket can hold several caches (default none)."; };
            accessKeyId = lib.mkOption { type = lib.types.str; description = "Access key id (not a secret: it ends up in the Nix store)."; };
            secretAccessKeyFile = lib.mkOption {
              type = lib.types.path;
              example = "/run/secrets/concordia-s3";
              description = ''
                File holding the secret access key (a trailing newline is
                ignored), passed as a systemd credential: it may stay
                root-only, and must be a path on the host as a string, never
                a Nix path or store path (the store is world-readable). It is
                copied when the service starts, so a new key takes a restart.
              '';
            };
            partSize = lib.mkOption { type = lib.types.nullOr lib.types.str; default = null; example = "64M"; description = "Size of each part of a multipart upload: what an upload in flight holds in memory (default 16M, at least 5M)."; };
            redirect = lib.mkOption { type = lib.types.bool; default = false; description = "Answer NAR downloads with a redirect to a presigned URL of the bucket instead of streaming them through the cache: less traffic through the replicas, but every client must reach the bucket then. NARs compressed on the fly are still streamed."; };
            redirectTTL = lib.mkOption { type = lib.types.nullOr lib.types.str; default = null; description = "How long a presigned URL stays valid (default 1h)."; };
          };
        });
      };
      database = lib.mkOption {
        default = null;
        example = lib.literalExpression ''{ createLocally = true; }'';
        description = ''
          Keep the upload store's index in PostgreSQL instead of a file in
          the state directory, shared by every replica. Needs upload.s3.
        '';
        type = lib.types.nullOr (lib.types.submodule {
          options = {
            url = lib.mkOption {
              type = lib.types.nullOr lib.types.str;
              default = null;
              example = "postgres://concordia@db.example.org/concordia?sslmode=verify-full";
              description = ''
                PostgreSQL connection URL. Required unless createLocally,
                which defaults it to the local socket
                (`postgres://concordia-cache@/concordia-cache?host=/run/postgresql`).
                Keep the password out of it (use passwordFile): the URL
                ends up in the world-readable Nix store.
              '';
            };
            passwordFile = lib.mkOption {
              type = lib.types.nullOr lib.types.path;
              default = null;
              example = "/run/secrets/concordia-pg";
              description = "File holding the password, passed as a systemd credential like s3.secretAccessKeyFile (a path on the host as a string, not a store path). Not needed with peer authentication on the local socket.";
            };
            createLocally = lib.mkOption {
              type = lib.types.bool;
              default = false;
              description = ''
                Run PostgreSQL on this host (services.postgresql) with a
                database and role named after the service user,
                `concordia-cache`: peer authentication on the unix socket
                lets the service in as the role of its own Unix user's
                name, without a password. The service starts after it.
                For several replicas, point them all at one PostgreSQL
                reachable by each instead (url and passwordFile).
              '';
            };
          };
        });
      };
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
    localStore = lib.mkOption {
      type = lib.types.bool;
      default = true;
      description = ''
        Also serve this host's own /nix/store. Turn it off on replicas
        behind one load balancer: each would otherwise answer for paths of
        its own store that the others do not have, and a client's NAR
        request that lands on another replica than its narinfo's would fail.
      '';
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
    assertions = clib.cacheAssertions { upload = { inherit (cfg.upload) enable tokensFile private s3 database; }; } ++ [
      { assertion = cfg.nginx.enable -> cfg.nginx.domain != ""; message = "services.concordia-cache.nginx.domain must be set"; }
    ];

    # The Unix user is also the PostgreSQL role of upload.database.createLocally.
    users.users.concordia-cache = { isSystemUser = true; group = "concordia-cache"; description = "Concordia binary cache"; };
    users.groups.concordia-cache = { };

    systemd.services.concordia-cache = {
      description = "Concordia Nix binary cache";
      wantedBy = [ "multi-user.target" ];
      # A shared store is reached over the network at start.
      after = [ "network.target" "nix-daemon.socket" ]
        ++ lib.optional shared "network-online.target"
        ++ lib.optionals localDb localPg.unit.after;
      wants = lib.optional shared "network-online.target"
        ++ lib.optionals localDb localPg.unit.wants;
      requires = lib.optionals localDb localPg.unit.requires;
      serviceConfig = {
        # An unprivileged SQLite reader can open Nix's WAL database only
        # while db.sqlite-wal and -shm exist; Nix deletes them when its last
        # connection closes. One read-only open as root ("+") creates them,
        # and the server's own open connection keeps them from then on.
        ExecStartPre = lib.mkIf cfg.localStore "+${cfg.package}/bin/cache serve --config ${configFile} --prepare-db";
        ExecStart = "${cfg.package}/bin/cache serve --config ${configFile}";
        # SIGHUP rereads the tokens file (it never stops the server).
        ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
        User = "concordia-cache";
        Group = "concordia-cache";
        Restart = "on-failure";
        StateDirectory = "concordia-cache";
        StateDirectoryMode = "0700";
        # Signing keys, the S3 secret key and the database password: they
        # are read once at start. The tokens file is read in place (see
        # upload.tokensFile).
        LoadCredential = creds.loadCredential;
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

    services.postgresql = lib.mkIf localDb localPg.postgresql;

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
