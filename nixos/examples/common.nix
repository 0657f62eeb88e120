# What every host of the example fleet shares: the cache as substituter and
# the deploy user with the CI key and a personal key.
{ ... }:
{
  homelab.cache = {
    enable = true;
    url = "https://cache.example.org";
    publicKeys = [ "cache.example.org-1:REPLACE-WITH-THE-OUTPUT-OF-cache-keygen=" ];
  };
  homelab.deploy = {
    enable = true;
    authorizedKeys = [
      "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIREPLACEwithTheCIdeployKey ci@forge.example.org"
      "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIREPLACEwithYourPersonalKey you@laptop"
    ];
  };
  homelab.monitoring.enable = true;
  services.openssh.enable = true;
  system.stateVersion = "25.05";
  boot.loader.systemd-boot.enable = true;
  fileSystems."/" = { device = "/dev/disk/by-label/nixos"; fsType = "ext4"; };
  fileSystems."/boot" = { device = "/dev/disk/by-label/BOOT"; fsType = "vfat"; };
}
