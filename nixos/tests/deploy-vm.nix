# NixOS VM test for fleets that have NixOS and KVM (`nix flake check`): a
# cache node serving signed systems, a deployer node, and a target node that
# boots through systemd-boot and runs the real switch-to-configuration-ng.
#
# Every system the deployer pushes is the target node's own configuration
# extended with one module (extendModules, as `specialisation` does), so it
# keeps what the test framework adds to the node (the driver's backdoor, the
# test network, the VM's disks): switching to it leaves the driver in
# control. They are not specialisations on purpose: those would be in the
# target's closure from the start, and the target must substitute each new
# system from the cache like a real host.
#
# Covered: switch, test, boot + reboot, a unit that failed before the deploy
# (kept, reported), a unit the deploy breaks (rolled back), magic rollback of
# a system that stops sshd, and an upgrade of the host's own deployer.
# The keys under ./keys are throwaway test keys.
{ pkgs, self }:
let
  inherit (pkgs) lib;
  system = pkgs.stdenv.hostPlatform.system;
  concordia = self.packages.${system}.default;
  # Another build of the deployer: a deploy that replaces the program
  # running it on the host.
  upgraded = pkgs.callPackage ../package.nix { version = "${concordia.version}-upgraded"; src = self; };
  cachePub = lib.fileContents ./keys/cache.pub;
  ciPub = lib.fileContents ./keys/ci.pub;

  # concordiaTest.variants.NAME is a module; concordiaTest.systems.NAME the
  # toplevel of this node's configuration with it added.
  variantsModule = { config, lib, extendModules, ... }: {
    options.concordiaTest = {
      variants = lib.mkOption { type = lib.types.attrsOf lib.types.deferredModule; default = { }; };
      systems = lib.mkOption { type = lib.types.attrsOf lib.types.package; readOnly = true; };
    };
    config.concordiaTest.systems = lib.mapAttrs
      (_: variant: (extendModules {
        modules = [ variant { concordiaTest.variants = lib.mkForce { }; } ];
      }).config.system.build.toplevel)
      config.concordiaTest.variants;
  };

  generation = name: { environment.etc."concordia-generation".text = lib.mkForce name; };

  nodesJSON = toplevel: pkgs.writeText "nodes.json" (builtins.toJSON {
    nodes.target = {
      hostname = "target";
      sshUser = "deploy";
      sshOpts = [ "-o" "StrictHostKeyChecking=no" "-o" "UserKnownHostsFile=/dev/null" "-i" "/root/ci" ];
      confirmTimeout = 20;
      profiles.system.path = toplevel;
    };
  });
in
pkgs.testers.runNixOSTest {
  name = "concordia-deploy";
  nodes = {
    cache = { nodes, ... }: {
      imports = [ self.nixosModules.cache ];
      services.concordia-cache = {
        enable = true;
        listenAddress = "0.0.0.0";
        openFirewall = true;
        signKeyFiles = [ ./keys/cache.sec ];
      };
      # Registered in the cache node's database, so its cache serves them.
      virtualisation.additionalPaths = lib.attrValues nodes.target.concordiaTest.systems;
    };

    deployer = { ... }: {
      environment.systemPackages = [ concordia pkgs.openssh ];
    };

    target = { lib, pkgs, ... }: {
      imports = [ self.nixosModules.client self.nixosModules.deploy-user variantsModule ];
      # A real boot loader, so `boot` and a reboot mean what they mean on a
      # host (without it the VM boots its first system directly, always).
      # It also gives the target a store of its own on its disk.
      virtualisation = { useBootLoader = true; useEFIBoot = true; memorySize = 2048; diskSize = 4096; };
      boot.loader.systemd-boot.enable = true;
      boot.loader.efi.canTouchEfiVariables = true;
      # Test nodes leave switch-to-configuration out unless asked.
      system.switch.enable = true;

      services.openssh.enable = true;
      networking.firewall.allowedTCPPorts = [ 22 ];
      homelab.cache = { enable = true; url = "http://cache:5000"; publicKeys = [ cachePub ]; };
      nix.settings.substituters = lib.mkForce [ "http://cache:5000" ];
      homelab.deploy = {
        enable = true;
        targetHost = "target";
        authorizedKeys = [ ciPub ];
        confirmTimeout = 20;
        healthChecks = [ { name = "generation"; command = "test -s /etc/concordia-generation"; } ];
      };
      environment.etc."concordia-generation".text = lib.mkDefault "v1";

      # Fails while /var/lib/concordia-flaky-broken exists: a unit that was
      # failed before a deploy. switch-to-configuration-ng resets failed
      # units and starts multi-user.target again, so it fails again.
      systemd.services.concordia-flaky = {
        wantedBy = [ "multi-user.target" ];
        serviceConfig = { Type = "oneshot"; RemainAfterExit = true; };
        script = "! test -e /var/lib/concordia-flaky-broken";
      };

      concordiaTest.variants = {
        v2 = generation "v2";
        v3 = generation "v3";
        booted = generation "booted";
        # A new unit that fails as soon as it starts: the deploy broke it.
        unit-breaker = {
          imports = [ (generation "unit-breaker") ];
          systemd.services.concordia-broken = {
            wantedBy = [ "multi-user.target" ];
            serviceConfig = { Type = "oneshot"; ExecStart = "${pkgs.coreutils}/bin/false"; };
          };
        };
        # Stops sshd: the deployer cannot confirm, the host rolls back.
        no-ssh = {
          imports = [ (generation "no-ssh") ];
          systemd.services.sshd.enable = lib.mkForce false;
        };
        upgrade = {
          imports = [ (generation "upgrade") ];
          homelab.deploy.package = lib.mkForce upgraded;
        };
        after-upgrade = {
          imports = [ (generation "after-upgrade") ];
          homelab.deploy.package = lib.mkForce upgraded;
        };
      };
    };
  };

  testScript = { nodes, ... }:
    let sys = nodes.target.concordiaTest.systems; in ''
    import json

    start_all()
    cache.wait_for_unit("concordia-cache.service")
    cache.wait_for_open_port(5000)
    target.wait_for_unit("multi-user.target")
    target.wait_for_unit("sshd.service")
    deployer.succeed("install -m 600 ${./keys/ci} /root/ci")

    def push(nodes, mode, expect_ok=True):
        cmd = f"deployer push --file {nodes} --mode {mode} --cache http://cache:5000 --trusted-key '${cachePub}' --json /tmp/report.json"
        if expect_ok:
            deployer.succeed(cmd)
        else:
            deployer.fail(cmd)
        return json.loads(deployer.succeed("cat /tmp/report.json"))["hosts"][0]

    def running(system):
        target.succeed(f"test $(readlink -f /run/current-system) = {system}")

    def profile(system):
        target.succeed(f"test $(readlink -f /nix/var/nix/profiles/system) = {system}")

    with subtest("switch"):
        host = push("${nodesJSON sys.v2}", "switch")
        assert host["result"] == "ok", host
        running("${sys.v2}")
        profile("${sys.v2}")
        target.succeed("grep -qx v2 /etc/concordia-generation")

    with subtest("test mode leaves the profile alone"):
        host = push("${nodesJSON sys.v3}", "test")
        assert host["result"] == "ok", host
        running("${sys.v3}")
        profile("${sys.v2}")

    with subtest("a unit failed before the deploy is kept and reported"):
        target.succeed("touch /var/lib/concordia-flaky-broken")
        target.fail("systemctl restart concordia-flaky.service")
        target.succeed("systemctl is-failed concordia-flaky.service")
        host = push("${nodesJSON sys.v3}", "switch")
        assert host["result"] == "ok", host
        assert host.get("failedUnits") == ["concordia-flaky.service"], host
        assert not host.get("newFailedUnits"), host
        running("${sys.v3}")
        profile("${sys.v3}")
        target.succeed("rm /var/lib/concordia-flaky-broken")
        target.succeed("systemctl restart concordia-flaky.service")

    with subtest("a unit the deploy breaks rolls the host back"):
        host = push("${nodesJSON sys.unit-breaker}", "switch", expect_ok=False)
        assert host["result"] == "rolled-back", host
        assert "concordia-broken.service" in host.get("newFailedUnits", []), host
        running("${sys.v3}")
        profile("${sys.v3}")
        target.fail("systemctl is-failed concordia-broken.service")

    with subtest("magic rollback of a system that stops sshd"):
        host = push("${nodesJSON sys.no-ssh}", "switch", expect_ok=False)
        assert host["result"] == "rolled-back", host
        target.wait_until_succeeds("test $(readlink -f /run/current-system) = ${sys.v3}", timeout=120)
        target.wait_for_unit("sshd.service")
        profile("${sys.v3}")

    with subtest("boot, then a reboot runs the new system"):
        host = push("${nodesJSON sys.booted}", "boot")
        assert host["result"] == "ok", host
        running("${sys.v3}")
        profile("${sys.booted}")
        gen = target.succeed("readlink /nix/var/nix/profiles/system").strip().removeprefix("system-").removesuffix("-link")
        target.succeed(f"grep -qx 'default nixos-generation-{gen}.conf' /boot/loader/loader.conf")
        target.succeed("deployer metrics --textfile /tmp/gen.prom")
        target.succeed(f"grep -qx 'nixos_boot_generation{{source=\"systemd-boot\"}} {gen}' /tmp/gen.prom")
        target.shutdown()
        target.start()
        target.wait_for_unit("multi-user.target")
        target.wait_for_unit("sshd.service")
        running("${sys.booted}")
        target.succeed("test $(readlink -f /run/booted-system) = ${sys.booted}")
        target.succeed("grep -qx booted /etc/concordia-generation")

    with subtest("a deploy that upgrades the host's own deployer"):
        host = push("${nodesJSON sys.upgrade}", "switch")
        assert host["result"] == "ok", host
        running("${sys.upgrade}")
        target.succeed("deployer version | grep -q upgraded")
        # The next deploy goes through the upgraded gate and agent.
        host = push("${nodesJSON sys.after-upgrade}", "switch")
        assert host["result"] == "ok", host
        running("${sys.after-upgrade}")
  '';
}
