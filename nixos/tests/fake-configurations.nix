# Fake nixosConfigurations: just the attributes lib.deployNodes reads, so the
# fleet logic is tested without nixpkgs.
let
  host = name: deploy: {
    config = {
      homelab.deploy = deploy;
      system.build.toplevel = "/nix/store/00000000000000000000000000000000-nixos-system-${name}";
    };
  };
in
{
  ingress = host "ingress" { enable = true; targetHost = "ingress.example.org"; tags = [ "edge" "prod" ]; sshOpts = null; magicRollback = null; };
  devbox = host "devbox" { enable = true; targetHost = "192.0.2.20"; confirmTimeout = 60; autoRollback = false; };
  testbox = host "testbox" { enable = true; targetHost = "testbox.example.org"; sshUser = "ci-deploy"; };
  prod = host "prod" { enable = true; targetHost = "prod.example.org"; tags = [ "prod" ]; healthChecks = [{ url = "https://prod.example.org/health"; }]; };
  laptop = host "laptop" { enable = false; targetHost = null; };
  printer = { config = { system.build.toplevel = "/nix/store/11111111111111111111111111111111-nixos-system-printer"; }; };
}
