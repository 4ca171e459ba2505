// Package layout names Cocoon's directories on the host, once: the
// defaults of the data and state directories and what lies below them.
package layout

import "path/filepath"

// Default directories.
const (
	// DataDir holds what outlives a reboot: guest images, the package
	// and probe caches.
	DataDir = "/var/lib/cocoon"
	// StateDir holds the runtime state of sandboxes and VMs, on a tmpfs
	// (gone at reboot, as the VMs are).
	StateDir = "/run/cocoon"
)

// CacheDir holds host-wide caches (the accelerator probe's result) below
// data directory dataDir.
func CacheDir(dataDir string) string { return filepath.Join(dataDir, "cache") }

// VMStateDir is the parent of the runtime directories of sandboxes' VMs
// below state directory stateDir.
func VMStateDir(stateDir string) string { return filepath.Join(stateDir, "vm") }
