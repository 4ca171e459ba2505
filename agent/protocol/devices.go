package protocol

import (
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// AllowsAllDevices reports whether the device rules end by allowing every
// device everything: the cgroup of a privileged container (containerd's
// WithPrivileged gives it one such rule). Such a container gets the VM's
// devices in the guest, so the host passes none of the spec's.
func AllowsAllDevices(r *specs.LinuxResources) bool {
	if r == nil || len(r.Devices) == 0 {
		return false
	}
	d := r.Devices[len(r.Devices)-1]
	return d.Allow && (d.Type == "" || d.Type == "a") && d.Major == nil && d.Minor == nil &&
		strings.Contains(d.Access, "r") && strings.Contains(d.Access, "w") && strings.Contains(d.Access, "m")
}
