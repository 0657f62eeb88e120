{
  description = "Concordia: a signed, streaming Nix binary cache that takes uploads, and a fleet deployer with magic rollback";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      clib = import ./nixos/lib;
      version = "0.1.0-${self.shortRev or self.dirtyShortRev or "dirty"}";
    in
    {
      packages = forAllSystems (pkgs:
        let
          concordia = pkgs.callPackage ./nixos/package.nix { inherit version; src = self; };
        in
        {
          inherit concordia;
          cache = concordia.override { subPackages = [ "cmd/cache" ]; };
          deployer = concordia.override { subPackages = [ "cmd/deployer" ]; };
          default = concordia;
        });

      nixosModules = {
        cache = { pkgs, ... }: {
          imports = [ ./nixos/modules/cache.nix ];
          services.concordia-cache.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        };
        client = ./nixos/modules/client.nix;
        deploy-user = { pkgs, ... }: {
          imports = [ ./nixos/modules/deploy-user.nix ];
          homelab.deploy.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        };
        monitoring = { pkgs, ... }: {
          imports = [ ./nixos/modules/monitoring.nix ];
          homelab.monitoring.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        };
        default = {
          imports = with self.nixosModules; [ cache client deploy-user monitoring ];
        };
      };

      # lib.deployNodes { inherit (self) nixosConfigurations; } builds the
      # deploy-rs-schema `deploy` output; see nixos/lib/default.nix.
      lib = { inherit (clib) deployNodes hostsToBuild agentUnits trustsUser healthChecksFile authorizedKey toTOML clientSettings branchMode; };

      checks = forAllSystems (pkgs: {
        package = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        # The Go suite's unit tests (integration tests need root and real
        # daemons; they run in CI with scripts/test.sh).
        go-tests = self.packages.${pkgs.stdenv.hostPlatform.system}.default.overrideAttrs (_: {
          pname = "concordia-go-tests";
          doCheck = true;
          checkFlags = [ "-short" ];
        });
        deploy-schema = pkgs.runCommand "concordia-deploy-schema" { } ''
          echo ${lib.escapeShellArg (builtins.toJSON (import ./nixos/tests/deploy-schema.nix))} > $out
        '';
        vm = import ./nixos/tests/deploy-vm.nix { inherit pkgs self; };
      });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = with pkgs; [ go gopls gcc sqlite zstd nginx wrk openssh actionlint ];
        };
      });
    };
}
