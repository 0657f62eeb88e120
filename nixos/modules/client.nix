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
    netrcFile = lib.mkOption {
      type = lib.types.nullOr lib.types.path;
      default = null;
      description = "netrc with a read token, for a private cache (keep it out of the store: use a secrets manager path).";
    };
  };

  config = lib.mkIf cfg.enable {
    nix.settings = {
      extra-substituters = (clib.clientSettings { inherit (cfg) url publicKeys priority; }).substituters;
      extra-trusted-public-keys = cfg.publicKeys;
    } // lib.optionalAttrs (cfg.netrcFile != null) { netrc-file = toString cfg.netrcFile; };
  };
}
