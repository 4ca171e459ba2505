// Package version holds the build version of the Cocoon binaries.
package version

// Version is set at link time with -ldflags "-X .../internal/version.Version=...".
var Version = "0.1.0-dev"
