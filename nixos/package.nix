# Concordia's Go package. vendorHash pins the module graph of go.sum: it is
# the NAR hash of `go mod vendor`'s output, and nixos/nixos_test.go
# (TestVendorHash) recomputes it, so a go.mod change that forgets it fails
# CI with the value to put here.
{ lib, buildGoModule, version, src, subPackages ? [ "cmd/cache" "cmd/deployer" ] }:
buildGoModule {
  pname = "concordia";
  inherit version src subPackages;
  vendorHash = "sha256-QHDZ8+ihfZ1kfSs+/DchfVQkdQag210fO7ChjPBMwYY=";
  # go-sqlite3 and the zstd encoder (libzstd, built from the sources
  # github.com/DataDog/zstd bundles) need cgo.
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
