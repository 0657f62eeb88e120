# Production: confirmed only after its health check answers.
{ ... }:
{
  homelab.deploy.targetHost = "prod.example.org";
  homelab.deploy.tags = [ "prod" ];
  homelab.deploy.healthChecks = [{ url = "https://prod.example.org/health"; }];
}
