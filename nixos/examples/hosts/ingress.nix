# The ingress: TLS front for the fleet, and home of the binary cache.
{ ... }:
{
  homelab.deploy.targetHost = "ingress.example.org";
  homelab.deploy.tags = [ "edge" ];
  services.concordia-cache = {
    enable = true;
    signKeyFiles = [ "/var/lib/secrets/cache.example.org-1.sec" ];
    upload = { enable = true; tokensFile = "/var/lib/secrets/concordia-tokens"; };
    nginx = { enable = true; domain = "cache.example.org"; };
    openFirewall = true;
  };
  security.acme = { acceptTerms = true; defaults.email = "admin@example.org"; };
}
