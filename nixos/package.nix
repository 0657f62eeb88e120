# Concordia's Go package. vendorHash pins the module graph of go.sum; update
# it (CI prints the wanted value) whenever go.mod changes.
{ lib, buildGoModule, version, src, subPackages ? [ "cmd/cache" "cmd/deployer" ] }:
buildGoModule {
  pname = "concordia";
  inherit version src subPackages;
  vendorHash = lib.fakeHash;
  # go-sqlite3 needs cgo.
  env.CGO_ENABLED = "1";
  ldflags = [ "-s" "-w" "-X github.com/bos55/concordia/internal/version.Version=${version}" ];
  # The integration tests need root, namespaces and real daemons.
  doCheck = false;
  meta = {
    description = "Nix binary cache with uploads and a NixOS fleet deployer with magic rollback";
    license = lib.licenses.mit;
    mainProgram = "cache";
    platforms = lib.platforms.linux;
  };
}
