//go:build !cgo

package container

// cgoEnabled reports whether the binary was built with cgo, which
// libcontainer's nsenter needs to start container processes.
const cgoEnabled = false
