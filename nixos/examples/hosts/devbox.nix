# A development box: deployed like the others, with a longer confirm window.
{ ... }:
{
  homelab.deploy.targetHost = "192.0.2.20";
  homelab.deploy.confirmTimeout = 60;
  homelab.deploy.tags = [ "dev" ];
}
