# Every host (and any laptop) uses the fleet's cache: substituter, trusted
# key, and a netrc for private caches. Paths the cache did not sign are not
# trusted, which is what lets the deploy user stay untrusted.
{ config, lib, ... }:
let
  cfg = config.homelab.cache;
  clib = import ../lib;
in
{
  options.homelab.cache = {
    enable = lib.mkEnableOption "the fleet's Concordia cache as a substituter";
    url = lib.mkOption { type = lib.types.str; example = "https://cache.example.org"; description = "Cache URL."; };
    publicKeys = lib.mkOption { type = lib.types.listOf lib.types.str; description = "The cache's public keys (name:base64)."; };
    priority = lib.mkOption { type = lib.types.nullOr lib.types.int; default = null; description = "Override the cache's announced priority."; };
    only = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = ''
        Make the cache the host's only substituter (cache.nixos.org and any
        other are dropped). For a cache with a pull-through upstream
        (services.concordia-cache.upstreams): the host then gets its whole
        system, upstream paths included, from the fleet's cache, and keeps
        getting the paths the cache kept while the upstream is unreachable.
      '';
    };
    netrcFile = lib.mkOption {
      type = lib.types.nullOr lib.types.path;
      default = null;
      description = "netrc with a read token, for a private cache (keep it out of the store: use a secrets manager path).";
    };
  };

  config = lib.mkIf cfg.enable {
    nix.settings = {
      extra-trusted-public-keys = cfg.publicKeys;
    } // (if cfg.only
      then { substituters = lib.mkForce (clib.clientSettings { inherit (cfg) url publicKeys priority; }).substituters; }
      else { extra-substituters = (clib.clientSettings { inherit (cfg) url publicKeys priority; }).substituters; })
    // lib.optionalAttrs (cfg.netrcFile != null) { netrc-file = toString cfg.netrcFile; };
  };
}
