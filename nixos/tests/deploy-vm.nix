# NixOS VM test for fleets that have NixOS and KVM (`nix flake check`):
# a cache node serving a signed system, a deployer node, and a target node
# that is deployed with switch, then with test, then with a configuration
# that breaks SSH and must be rolled back by the magic-rollback watchdog.
# The keys under ./keys are throwaway test keys.
{ pkgs, self }:
let
  system = pkgs.stdenv.hostPlatform.system;
  concordia = self.packages.${system}.default;
  cachePub = pkgs.lib.fileContents ./keys/cache.pub;
  ciPub = pkgs.lib.fileContents ./keys/ci.pub;

  targetModule = extra: { lib, ... }: {
    imports = [ self.nixosModules.client self.nixosModules.deploy-user ];
    services.openssh.enable = true;
    homelab.cache = { enable = true; url = "http://cache:5000"; publicKeys = [ cachePub ]; };
    homelab.deploy = { enable = true; targetHost = "target"; authorizedKeys = [ ciPub ]; confirmTimeout = 20; };
    nix.settings.substituters = lib.mkForce [ "http://cache:5000" ];
    networking.firewall.allowedTCPPorts = [ 22 ];
    environment.etc."concordia-generation".text = extra.generation;
    systemd.services.sshd.enable = lib.mkIf (extra.breakSSH or false) (lib.mkForce false);
  };
  # The systems the deployer pushes, built here and registered in the cache
  # node's database so its cache serves them (the target has to substitute).
  evalTarget = extra: (import "${pkgs.path}/nixos/lib/eval-config.nix" {
    inherit system;
    modules = [ (targetModule extra) "${pkgs.path}/nixos/modules/virtualisation/qemu-vm.nix" ];
  }).config.system.build.toplevel;
  v2 = evalTarget { generation = "v2"; };
  v3 = evalTarget { generation = "v3"; };
  broken = evalTarget { generation = "broken"; breakSSH = true; };
  nodesJSON = toplevel: pkgs.writeText "nodes.json" (builtins.toJSON {
    nodes.target = {
      hostname = "target";
      sshUser = "deploy";
      sshOpts = [ "-o" "StrictHostKeyChecking=no" "-i" "/root/ci" ];
      confirmTimeout = 20;
      profiles.system.path = toplevel;
    };
  });
in
pkgs.testers.runNixOSTest {
  name = "concordia-deploy";
  nodes = {
    cache = { ... }: {
      imports = [ self.nixosModules.cache ];
      services.concordia-cache = {
        enable = true;
        listenAddress = "0.0.0.0";
        openFirewall = true;
        signKeyFiles = [ ./keys/cache.sec ];
      };
      virtualisation.additionalPaths = [ v2 v3 broken ];
    };
    deployer = { ... }: {
      environment.systemPackages = [ concordia pkgs.openssh ];
    };
    target = targetModule { generation = "v1"; };
  };
  testScript = ''
    start_all()
    cache.wait_for_unit("concordia-cache.service")
    cache.wait_for_open_port(5000)
    target.wait_for_unit("sshd.service")
    deployer.succeed("install -m 600 ${./keys/ci} /root/ci")

    def push(nodes, mode, expect_ok=True):
        cmd = f"deployer push --file {nodes} --mode {mode} --cache http://cache:5000 --trusted-key '${cachePub}' --json /tmp/report.json"
        if expect_ok:
            deployer.succeed(cmd)
        else:
            deployer.fail(cmd)

    with subtest("switch"):
        push("${nodesJSON v2}", "switch")
        target.succeed("grep -q v2 /etc/concordia-generation")
        target.succeed("test $(readlink -f /nix/var/nix/profiles/system) = ${v2}")

    with subtest("test mode leaves the profile alone"):
        push("${nodesJSON v3}", "test")
        target.succeed("grep -q v3 /etc/concordia-generation")
        target.succeed("test $(readlink -f /nix/var/nix/profiles/system) = ${v2}")

    with subtest("magic rollback of a config that breaks ssh"):
        push("${nodesJSON broken}", "switch", expect_ok=False)
        target.wait_until_succeeds("test $(readlink -f /run/current-system) = ${v2}", timeout=120)
        target.wait_for_unit("sshd.service")
        target.succeed("test $(readlink -f /nix/var/nix/profiles/system) = ${v2}")
  '';
}
