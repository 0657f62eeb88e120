# An example fleet wired with Concordia: four hosts shaped like a homelab
# (an ingress that also runs the cache, a dev box, a testing box and a
# production box). Addresses are documentation examples only.
{
  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    concordia.url = "github:bos55/concordia";
    concordia.inputs.nixpkgs.follows = "nixpkgs";
  };

  outputs = { self, nixpkgs, concordia }:
    let
      hosts = [ "ingress" "devbox" "testbox" "prod" ];
      mkHost = name: nixpkgs.lib.nixosSystem {
        system = "x86_64-linux";
        modules = [
          concordia.nixosModules.default
          ./common.nix
          ./hosts/${name}.nix
          { networking.hostName = name; }
        ];
      };
    in
    {
      nixosConfigurations = nixpkgs.lib.genAttrs hosts mkHost;
      # Zero duplication: every host states homelab.deploy.{enable,targetHost} once.
      deploy = concordia.lib.deployNodes { inherit (self) nixosConfigurations; };
    };
}
