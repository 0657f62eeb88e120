# Plain-Nix logic of Concordia's fleet wiring. Everything here takes only
# `lib`-free builtins or plain attribute sets, so the test suite can evaluate
# it with `nix-instantiate --eval --strict --json` on a machine without
# nixpkgs, and the flake and modules stay thin wrappers around it.
let
  inherit (builtins)
    attrNames concatStringsSep filter foldl' hasAttr head isAttrs isBool isFloat
    isInt isList isString length listToAttrs map replaceStrings sort split
    toJSON typeOf elem substring stringLength match all any;

  mapAttrs = builtins.mapAttrs;
  filterAttrs = pred: set:
    listToAttrs (map (n: { name = n; value = set.${n}; })
      (filter (n: pred n set.${n}) (attrNames set)));

  # The fields a node may set to tune the deployer; copied into the deploy-rs
  # schema node when the host's module sets them (null means "inherit").
  deploySettingNames = [
    "sshOpts" "magicRollback" "autoRollback" "confirmTimeout" "activationTimeout"
    "fastConnection" "tags" "deployerPath" "healthChecks" "canary" "wave"
  ];
in
rec {
  # deployNodes: the deploy-rs-schema `deploy` attribute from
  # nixosConfigurations, with zero per-host duplication. A host opts in with
  # `homelab.deploy.enable = true; homelab.deploy.targetHost = "...";` and
  # everything else comes from `defaults` or the host's own settings.
  #
  #   deploy = concordia.lib.deployNodes { inherit (self) nixosConfigurations; };
  #
  # maxUnavailable (hosts mid-deploy at once: a number, or a "P%" string of
  # the selected hosts) and maxFailures (start no new host after that many
  # failed) are fleet-wide, so they sit on the deploy attribute itself;
  # `deployer push --max-unavailable/--max-failures` override them.
  deployNodes =
    { nixosConfigurations
    , defaults ? { }
    , sshUser ? "deploy"
    , maxUnavailable ? null
    , maxFailures ? null
    }:
    let
      enabled = filterAttrs
        (_: host: (host.config.homelab.deploy.enable or false))
        nixosConfigurations;
      node = name: host:
        let
          d = host.config.homelab.deploy;
          settings = filterAttrs (n: v: elem n deploySettingNames && v != null) d;
        in
        settings // {
          hostname =
            if (d.targetHost or null) == null || d.targetHost == ""
            then throw "homelab.deploy.targetHost is not set for host ${name}"
            else d.targetHost;
          sshUser = d.sshUser or sshUser;
          user = "root";
          profiles.system = {
            user = "root";
            path = host.config.system.build.toplevel;
          };
        };
    in
    defaults
    // filterAttrs (_: v: v != null) { inherit maxUnavailable maxFailures; }
    // { nodes = mapAttrs node enabled; };

  # hostsToBuild: the CI build matrix, the names of every host that deploys.
  hostsToBuild = nixosConfigurations:
    sort (a: b: a < b) (attrNames (filterAttrs
      (_: host: host.config.homelab.deploy.enable or false)
      nixosConfigurations));

  # agentUnits: the deploy user's only way to root, the deployer's root
  # agent. systemd listens on a unix socket only root and the deploy user's
  # group may open and starts one agent per connection (Accept=yes), which
  # checks the caller's uid again (SO_PEERCRED) and runs exactly the
  # host-verb contract. No sudo rule is involved, so hosts with
  # security.sudo.execWheelOnly or sudo-rs need nothing special.
  agentSocketPath = "/run/deployer-agent.sock";
  agentUnits = { user ? "deploy", deployer, stateDir ? "/run/concordia" }: {
    socket = {
      ListenStream = agentSocketPath;
      SocketUser = "root";
      SocketGroup = user;
      SocketMode = "0660";
      Accept = true;
      MaxConnections = 64;
    };
    service = {
      ExecStart = "${deployer} agent --allow-user ${user} --state-dir ${stateDir}";
      # The connection is fd 3 (LISTEN_FDS); stdout/stderr go to the journal.
      StandardOutput = "journal";
      StandardError = "journal";
    };
  };

  # trustsUser: whether Nix's trusted-users grants trust to user, directly,
  # through one of its groups (@group) or to everybody (*). The deploy user
  # must never be trusted: it could then import unsigned paths.
  trustsUser = { trustedUsers, user, groups ? [ ] }:
    elem user trustedUsers || elem "*" trustedUsers
    || foldl' (acc: g: acc || elem "@${g}" trustedUsers) false groups;

  # healthChecksFile: the JSON a system ships in
  # etc/concordia/health-checks.json, read by the `health` host verb. Only
  # the `command` checks are in it (URL checks are fetched by the push side);
  # script turns a check into the store path of the script that runs its
  # command (pkgs.writeShellScript in the module).
  healthChecksFile = { checks, script }:
    let
      commandChecks = filter (c: c ? command) (if checks == null then [ ] else checks);
      named = i: c: c // { name = c.name or "check-${toString i}"; };
      indexed = builtins.genList (i: named (i + 1) (builtins.elemAt commandChecks i)) (length commandChecks);
    in
    toJSON {
      checks = map (c: { inherit (c) name; exec = script c; } // (if c ? timeout then { inherit (c) timeout; } else { })) indexed;
    };

  # authorizedKey: one authorized_keys line, forced through `deployer gate`
  # so the key can run only the deployer's verbs, never a shell.
  authorizedKey = { deployer, key }:
    ''command="${deployer} gate",restrict ${key}'';

  # toTOML renders the cache's settings (a flat attrset plus tables of
  # scalars/lists, tables inside tables as [upload.s3], and lists of such
  # tables, as [[upstream]]) the way internal/config reads them. Nulls are
  # dropped, so unset module options fall back to the server's defaults,
  # and a null table is no table (an empty [upload.s3] would turn the
  # shared store on).
  toTOML = settings:
    let
      clean = filterAttrs (_: v: v != null);
      esc = s: replaceStrings [ "\\" "\"" "\n" "\t" ] [ "\\\\" "\\\"" "\\n" "\\t" ] s;
      value = v:
        if isBool v then (if v then "true" else "false")
        else if isInt v || isFloat v then toString v
        else if isString v then "\"${esc v}\""
        else if isList v then "[" + concatStringsSep ", " (map value v) + "]"
        else throw "toTOML: cannot render a ${typeOf v}";
      kv = set: concatStringsSep "" (map (n: "${n} = ${value set.${n}}\n") (attrNames set));
      isTableList = v: isList v && v != [ ] && all isAttrs v;
      top = clean (filterAttrs (_: v: !(isAttrs v) && !(isTableList v)) settings);
      tables = clean (filterAttrs (_: isAttrs) settings);
      tableLists = filterAttrs (_: isTableList) settings;
      # A table's own keys first, then its subtables under dotted headers.
      tableAt = path: t:
        let
          c = clean t;
          subs = filterAttrs (_: isAttrs) c;
        in
        "\n[${path}]\n" + kv (filterAttrs (_: v: !(isAttrs v)) c)
        + concatStringsSep "" (map (n: tableAt "${path}.${n}" subs.${n}) (attrNames subs));
      table = n: tableAt n tables.${n};
      tableList = n: concatStringsSep "" (map (t: "\n[[${n}]]\n" + kv (clean t)) tableLists.${n});
    in
    kv top + concatStringsSep "" (map table (attrNames tables)) + concatStringsSep "" (map tableList (attrNames tableLists));

  # cacheSettings: the settings the cache module renders to TOML, from its
  # options. The tokens file is passed by path, never copied (no
  # LoadCredential): the server rereads it whenever its content changes and
  # on SIGHUP (systemctl reload), so a revocation reaches the running
  # server. A tokens file works without uploads too (a private cache of the
  # host's own store).
  cacheSettings =
    { listenAddress ? "127.0.0.1"
    , port ? 5000
    , priority ? 30
    , compression ? "zstd"
    , stateDir ? "/var/lib/concordia-cache"
    , signKeyPaths ? [ ]
    , upload ? { }
    , gc ? { }
    , upstreams ? [ ]
    , localStore ? true
    , user ? "concordia-cache"
    }:
    let
      up = { enable = false; tokensFile = null; private = false; s3 = null; database = null; } // upload;
      g = { maxSize = null; maxAge = null; interval = null; } // gc;
      # [[upstream]]: pulled paths are kept in the upload store, so a
      # pull-through upstream needs its directory even without uploads.
      upstreamTable = u: {
        inherit (u) url;
        public_keys = u.publicKeys;
        name = u.name or null;
        timeout = u.timeout or null;
        negative_ttl = u.negativeTtl or null;
        netrc_file = if u.netrcFile or null == null then null else toString u.netrcFile;
        token_file = if u.tokenFile or null == null then null else toString u.tokenFile;
        pull_through = u.pullThrough or true;
      };
      pulls = any (u: u.pullThrough or true) upstreams;
      # [upload.s3] and [upload.database]: the shared store. Unset options
      # are null and left to the server's defaults (region us-east-1,
      # 16M parts, 1h presigned URLs).
      shared = up.s3 != null || up.database != null;
      s3Table = s: {
        inherit (s) endpoint bucket;
        region = s.region or null;
        prefix = s.prefix or null;
        access_key_id = s.accessKeyId;
        secret_access_key_file = toString s.secretAccessKeyFile;
        part_size = s.partSize or null;
        redirect = s.redirect or false;
        redirect_ttl = s.redirectTTL or null;
      };
      databaseTable = d: {
        url =
          if d.url or null != null then d.url
          else if d.createLocally or false then (cacheLocalDatabase { inherit user; }).url
          else null;
        password_file = if d.passwordFile or null == null then null else toString d.passwordFile;
      };
    in
    {
      bind = "${listenAddress}:${toString port}";
      inherit priority compression;
      state_dir = stateDir;
      # "" turns the host's own store off (replicas answer alike).
      nix_db_path = if localStore then null else "";
      sign_key_paths = signKeyPaths;
      upstream = map upstreamTable upstreams;
      upload =
        (if up.enable || pulls || shared then { dir = "${stateDir}/upload"; } else { })
        // (if up.tokensFile != null then { tokens_file = toString up.tokensFile; } else { })
        // (if up.enable || up.private then { private = up.private; } else { })
        // {
          s3 = if up.s3 == null then null else s3Table up.s3;
          database = if up.database == null then null else databaseTable up.database;
        };
      gc = if up.enable then { max_size = g.maxSize; max_age = g.maxAge; interval = g.interval; } else { };
    };

  # cacheCredentials: what the server reads once at start comes in as
  # systemd credentials (LoadCredential): the signing keys, the S3 secret
  # key and the PostgreSQL password. The files may then stay root-only, and
  # no secret sits in the Nix store or the service's environment. Returns
  # the LoadCredential lines, the signing keys' paths and `upload` with the
  # secrets' paths replaced by their credentials' (what the TOML names).
  # A new secret takes a restart (systemd copies it when the unit starts).
  # The tokens file is not one of them: it is reread in place.
  cacheCredentials =
    { credDir ? "/run/credentials/concordia-cache.service"
    , signKeyFiles ? [ ]
    , upload ? { }
    }:
    let
      up = { s3 = null; database = null; } // upload;
      keyNames = builtins.genList (i: "sign-key-${toString i}") (length signKeyFiles);
      s3Secret = if up.s3 == null then null else up.s3.secretAccessKeyFile or null;
      dbPassword = if up.database == null then null else up.database.passwordFile or null;
      # toString, not interpolation: a path is never copied into the store
      # (cacheAssertions refuses Nix paths for these secrets).
      cred = name: file: if file == null then [ ] else [ "${name}:${toString file}" ];
    in
    {
      loadCredential =
        builtins.genList (i: "${builtins.elemAt keyNames i}:${builtins.elemAt signKeyFiles i}") (length signKeyFiles)
        ++ cred "s3-secret-key" s3Secret
        ++ cred "database-password" dbPassword;
      signKeyPaths = map (n: "${credDir}/${n}") keyNames;
      upload = upload
        // (if s3Secret == null then { } else { s3 = up.s3 // { secretAccessKeyFile = "${credDir}/s3-secret-key"; }; })
        // (if dbPassword == null then { } else { database = up.database // { passwordFile = "${credDir}/database-password"; }; });
    };

  # cacheLocalDatabase: the PostgreSQL a cache creates on its own host
  # (upload.database.createLocally). Peer authentication on the unix socket
  # lets a Unix user in as the role of the same name, and ensureDBOwnership
  # needs a database of that name too, so role and database are both named
  # after the service user and no password is involved. NixOS 25.11 creates
  # them in postgresql-setup.service, older releases in postgresql.service
  # itself; ordering after (and wanting) a unit that does not exist changes
  # nothing, so the unit waits for the role on either.
  cacheLocalDatabase = { user ? "concordia-cache" }: {
    url = "postgres://${user}@/${user}?host=/run/postgresql";
    postgresql = {
      enable = true;
      ensureDatabases = [ user ];
      ensureUsers = [ { name = user; ensureDBOwnership = true; } ];
    };
    unit = {
      after = [ "postgresql.service" "postgresql-setup.service" ];
      requires = [ "postgresql.service" ];
      wants = [ "postgresql-setup.service" ];
    };
  };

  # cacheAssertions: the cache module's checks of its upload options, as
  # NixOS assertions (the failing ones are what the tests look at).
  cacheAssertions = { upload ? { } }:
    let
      up = { enable = false; tokensFile = null; private = false; s3 = null; database = null; } // upload;
      tf = if up.tokensFile == null then null else toString up.tokensFile;
      opt = "services.concordia-cache.upload";
      under = prefix: tf != null && substring 0 (stringLength prefix) tf == prefix;
      # A secret read through LoadCredential: a file on the host, by an
      # absolute path, never in the world-readable store.
      secretFile = name: f:
        let p = if f == null then null else toString f; in
        [
          { assertion = f == null || typeOf f != "path"; message = "${name} must be a string, the path of a secret on the host (\"/run/secrets/...\"), not a Nix path: a Nix path is copied into the world-readable Nix store"; }
          { assertion = p == null || substring 0 1 p == "/"; message = "${name} must be an absolute path"; }
          { assertion = p == null || substring 0 (stringLength "${builtins.storeDir}/") p != "${builtins.storeDir}/"; message = "${name} must not be in the Nix store, which every user can read"; }
        ];
      s3 = up.s3;
      db = up.database;
    in
    [
      { assertion = s3 != null -> db != null; message = "${opt}.s3 needs ${opt}.database: the index of the files in a bucket is kept in PostgreSQL (set ${opt}.database.url, or ${opt}.database.createLocally = true)"; }
      { assertion = db != null -> s3 != null; message = "${opt}.database needs ${opt}.s3: replicas sharing an index must share the files too"; }
      { assertion = db != null -> (db.url or null != null || (db.createLocally or false)); message = "${opt}.database.url must be set, or ${opt}.database.createLocally = true for a PostgreSQL on this host"; }
    ]
    ++ secretFile "${opt}.s3.secretAccessKeyFile" (if s3 == null then null else s3.secretAccessKeyFile or null)
    ++ secretFile "${opt}.database.passwordFile" (if db == null then null else db.passwordFile or null)
    ++ [
      { assertion = up.enable -> tf != null; message = "${opt}.tokensFile must be set when uploads are enabled"; }
      { assertion = up.private -> tf != null; message = "${opt}.private needs ${opt}.tokensFile: without it nobody can authenticate, and the server refuses to serve a private cache to everybody"; }
      { assertion = tf == null || substring 0 1 tf == "/"; message = "${opt}.tokensFile must be an absolute path"; }
      { assertion = !(under "${builtins.storeDir}/"); message = "${opt}.tokensFile must not be in the Nix store: the store is world-readable and a copy there never changes, so no revocation would reach the server. Use a secret file the service user can read (sops-nix/agenix with owner = \"concordia-cache\"), or a stable path such as an /etc symlink"; }
      { assertion = !(under "/home/" || under "/root/"); message = "${opt}.tokensFile is under /home or /root, which the service cannot see (ProtectHome)"; }
    ];

  # substituterLine: what the client module puts in nix.conf for the cache.
  clientSettings = { url, publicKeys, priority ? null }: {
    substituters = [ (if priority == null then url else "${url}?priority=${toString priority}") ];
    trusted-public-keys = publicKeys;
  };

  # branchMode mirrors `deployer push --branch` for documentation and checks:
  # main switches everything, test-<host> tests that host, anything else
  # deploys nothing. The deployer itself is the authority (tested in Go).
  branchMode = nodes: branch:
    if branch == "main" then { mode = "switch"; hosts = sort (a: b: a < b) (attrNames nodes); }
    else if match "test-(.+)" branch != null then
      let host = head (match "test-(.+)" branch); in
      if hasAttr host nodes then { mode = "test"; hosts = [ host ]; }
      else throw "branch ${branch}: no deploy node named ${host}"
    else { mode = null; hosts = [ ]; };
}
