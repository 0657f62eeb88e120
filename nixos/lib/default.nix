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
    "fastConnection" "tags" "deployerPath" "healthChecks"
  ];
in
rec {
  # deployNodes: the deploy-rs-schema `deploy` attribute from
  # nixosConfigurations, with zero per-host duplication. A host opts in with
  # `homelab.deploy.enable = true; homelab.deploy.targetHost = "...";` and
  # everything else comes from `defaults` or the host's own settings.
  #
  #   deploy = concordia.lib.deployNodes { inherit (self) nixosConfigurations; };
  deployNodes =
    { nixosConfigurations
    , defaults ? { }
    , sshUser ? "deploy"
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
    defaults // { nodes = mapAttrs node enabled; };

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
  # scalars/lists, and lists of such tables, as [[upstream]]) the way
  # internal/config reads them. Nulls are dropped, so unset module options
  # fall back to the server's defaults.
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
      table = n: "\n[${n}]\n" + kv (clean tables.${n});
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
    }:
    let
      up = { enable = false; tokensFile = null; private = false; } // upload;
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
    in
    {
      bind = "${listenAddress}:${toString port}";
      inherit priority compression;
      state_dir = stateDir;
      sign_key_paths = signKeyPaths;
      upstream = map upstreamTable upstreams;
      upload =
        (if up.enable || pulls then { dir = "${stateDir}/upload"; } else { })
        // (if up.tokensFile != null then { tokens_file = toString up.tokensFile; } else { })
        // (if up.enable || up.private then { private = up.private; } else { });
      gc = if up.enable then { max_size = g.maxSize; max_age = g.maxAge; interval = g.interval; } else { };
    };

  # cacheAssertions: the cache module's checks of its upload options, as
  # NixOS assertions (the failing ones are what the tests look at).
  cacheAssertions = { upload ? { } }:
    let
      up = { enable = false; tokensFile = null; private = false; } // upload;
      tf = if up.tokensFile == null then null else toString up.tokensFile;
      opt = "services.concordia-cache.upload";
      under = prefix: tf != null && substring 0 (stringLength prefix) tf == prefix;
    in
    [
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
