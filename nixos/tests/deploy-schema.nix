# The deploy-schema check: lib.deployNodes over the fake fleet, evaluated by
# the Go test suite (exact JSON) and by `nix flake check`.
let
  clib = import ../lib;
  fleet = import ./fake-configurations.nix;
in
{
  deploy = clib.deployNodes { nixosConfigurations = fleet; defaults = { magicRollback = true; confirmTimeout = 30; }; };
  # The rollout settings: canary and wave per host, the fleet-wide limits
  # on the deploy attribute.
  rollout = clib.deployNodes {
    nixosConfigurations = {
      web1 = { config = { homelab.deploy = { enable = true; targetHost = "web1.example.org"; canary = true; wave = null; }; system.build.toplevel = "/nix/store/00000000000000000000000000000000-nixos-system-web1"; }; };
      web2 = { config = { homelab.deploy = { enable = true; targetHost = "web2.example.org"; canary = null; wave = 1; }; system.build.toplevel = "/nix/store/00000000000000000000000000000000-nixos-system-web2"; }; };
      db1 = { config = { homelab.deploy = { enable = true; targetHost = "db1.example.org"; wave = 2; }; system.build.toplevel = "/nix/store/00000000000000000000000000000000-nixos-system-db1"; }; };
    };
    maxUnavailable = "25%";
    maxFailures = 1;
  };
  hosts = clib.hostsToBuild fleet;
  agent = clib.agentUnits { deployer = "/run/current-system/sw/bin/deployer"; };
  trust = {
    plain = clib.trustsUser { trustedUsers = [ "root" ]; user = "deploy"; groups = [ "deploy" ]; };
    named = clib.trustsUser { trustedUsers = [ "root" "deploy" ]; user = "deploy"; };
    group = clib.trustsUser { trustedUsers = [ "root" "@wheel" ]; user = "deploy"; groups = [ "deploy" "wheel" ]; };
    star = clib.trustsUser { trustedUsers = [ "*" ]; user = "deploy"; };
    otherGroup = clib.trustsUser { trustedUsers = [ "@wheel" ]; user = "deploy"; groups = [ "deploy" ]; };
  };
  health = clib.healthChecksFile {
    checks = [ { command = "systemctl is-active nginx"; } { url = "https://x.example.org/health"; } { name = "db"; command = "pg_isready"; timeout = 5; } ];
    script = c: "/nix/store/00000000000000000000000000000000-concordia-health-${c.name}";
  };
  key = clib.authorizedKey { deployer = "/run/current-system/sw/bin/deployer"; key = "ssh-ed25519 AAAAC3Nza ci@forge"; };
  client = clib.clientSettings { url = "https://cache.example.org"; publicKeys = [ "cache.example.org-1:AAAA" ]; priority = 10; };
  toml = clib.toTOML {
    bind = "127.0.0.1:5000";
    priority = 30;
    enable_compression = true;
    sign_key_paths = [ "/run/credentials/concordia-cache.service/sign-key-0" ];
    tls_cert_path = null;
    zstd = { level = 3; };
    upload = { dir = "/var/lib/concordia-cache/upload"; private = false; tokens_file = "/run/credentials/x/\"tokens\""; };
  };
  # The cache module's settings and assertions (nixos/lib cacheSettings,
  # cacheAssertions), for the Go test to render and parse.
  cache =
    let
      render = opts: clib.toTOML (clib.cacheSettings opts);
      failing = opts: map (a: a.message) (builtins.filter (a: !a.assertion) (clib.cacheAssertions opts));
      secret = "/run/secrets/concordia-tokens";
      s3 = {
        endpoint = "http://127.0.0.1:9000"; bucket = "concordia"; region = null; prefix = "cache-a/";
        accessKeyId = "concordia"; secretAccessKeyFile = "/run/secrets/concordia-s3";
        partSize = "32M"; redirect = true; redirectTTL = "10m";
      };
      remoteDb = { url = "postgres://concordia@db.example.org/concordia?sslmode=verify-full"; passwordFile = "/run/secrets/concordia-pg"; createLocally = false; };
    in
    {
      uploads = render { signKeyPaths = [ "/run/credentials/concordia-cache.service/sign-key-0" ]; upload = { enable = true; tokensFile = secret; }; gc = { maxSize = "50G"; }; };
      privateUploads = render { upload = { enable = true; tokensFile = secret; private = true; }; };
      privateLocalOnly = render { upload = { tokensFile = secret; private = true; }; };
      publicLocalOnly = render { };
      upstreams = render {
        upstreams = [
          { url = "https://cache.nixos.org"; publicKeys = [ "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ]; }
          { url = "https://private.example.org"; name = "private"; publicKeys = [ "private-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ]; netrcFile = "/run/secrets/netrc"; pullThrough = false; timeout = "2s"; negativeTtl = "30s"; }
        ];
      };
      ok = failing { upload = { enable = true; tokensFile = secret; private = true; }; };
      privateWithoutTokens = failing { upload = { private = true; }; };
      uploadsWithoutTokens = failing { upload = { enable = true; }; };
      tokensInStore = failing { upload = { enable = true; tokensFile = "${builtins.storeDir}/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-tokens"; }; };
      tokensRelative = failing { upload = { enable = true; tokensFile = "tokens"; }; };
      tokensInHome = failing { upload = { enable = true; tokensFile = "/home/ci/tokens"; }; };

      # The shared store: options as the module has them, secrets through
      # cacheCredentials, rendered and parsed back by the Go test.
      shared =
        let creds = clib.cacheCredentials { signKeyFiles = [ "/run/secrets/sign-key" ]; upload = { inherit s3; database = remoteDb; }; }; in
        {
          inherit (creds) loadCredential;
          toml = render {
            inherit (creds) signKeyPaths;
            localStore = false;
            upload = { enable = true; tokensFile = secret; inherit (creds.upload) s3 database; };
          };
        };
      sharedLocal = render { upload = { inherit s3; database = { createLocally = true; }; }; };
      localDatabase = clib.cacheLocalDatabase { };
      sharedOk = failing { upload = { enable = true; tokensFile = secret; inherit s3; database = remoteDb; }; };
      sharedLocalOk = failing { upload = { inherit s3; database = { createLocally = true; }; }; };
      s3WithoutDatabase = failing { upload = { inherit s3; }; };
      databaseWithoutS3 = failing { upload = { database = { createLocally = true; }; }; };
      databaseWithoutUrl = failing { upload = { inherit s3; database = { }; }; };
      s3SecretInStore = failing { upload = { s3 = s3 // { secretAccessKeyFile = "${builtins.storeDir}/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-s3"; }; database = remoteDb; }; };
      s3SecretNixPath = failing { upload = { s3 = s3 // { secretAccessKeyFile = ./keys; }; database = remoteDb; }; };
      passwordRelative = failing { upload = { inherit s3; database = remoteDb // { passwordFile = "pg"; }; }; };
    };
  branches =
    let nodes = (clib.deployNodes { nixosConfigurations = fleet; }).nodes; in
    {
      main = clib.branchMode nodes "main";
      test = clib.branchMode nodes "test-devbox";
      feature = clib.branchMode nodes "feature-x";
    };
}
