# The ingress: TLS front for the fleet, and home of the binary cache.
{ ... }:
{
  homelab.deploy.targetHost = "ingress.example.org";
  homelab.deploy.tags = [ "edge" ];
  services.concordia-cache = {
    enable = true;
    signKeyFiles = [ "/var/lib/secrets/cache.example.org-1.sec" ];
    # Read in place by the service user and reread when it changes (and on
    # systemctl reload): a secret owned by concordia-cache, e.g. sops-nix
    # with owner = "concordia-cache". Lines: the CI upload token (write)
    # and the deploy job's pin token (pin).
    upload = { enable = true; tokensFile = "/var/lib/secrets/concordia-tokens"; };
    nginx = { enable = true; domain = "cache.example.org"; };
    openFirewall = true;
  };
  security.acme = { acceptTerms = true; defaults.email = "admin@example.org"; };
}
