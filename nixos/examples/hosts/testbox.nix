# The testing box: push a `test-testbox` branch to try a configuration
# without making it the boot default (`deployer push --branch test-testbox`).
{ ... }:
{
  homelab.deploy.targetHost = "testbox.example.org";
  homelab.deploy.tags = [ "dev" ];
}
