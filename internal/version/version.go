// Package version holds the build version, set with
// -ldflags "-X github.com/bos55/concordia/internal/version.Version=..."
// by the Nix package, so /version and --version tell which build runs.
package version

import "runtime/debug"

// Version is overridden at link time; "dev" otherwise.
var Version = "dev"

// String returns the version, falling back to the VCS revision Go embeds.
func String() string {
	if Version != "dev" {
		return Version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				return "dev-" + s.Value[:12]
			}
		}
	}
	return Version
}
