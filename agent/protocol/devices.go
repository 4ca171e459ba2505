package protocol

import (
	"regexp"
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

// diskSerial is a disk's serial: what virtio-blk shows the guest (20
// bytes at most), which the guest finds the disk by.
var diskSerial = regexp.MustCompile(`^[A-Za-z0-9_-]{1,20}$`)

// ValidDiskSerial reports whether s is a disk serial both sides accept:
// 1 to 20 of [A-Za-z0-9_-].
func ValidDiskSerial(s string) bool { return diskSerial.MatchString(s) }

// pciAddress is a PCI address: domain:bus:device.function, lower case.
var pciAddress = regexp.MustCompile(`^[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]$`)

// ValidPCIAddress reports whether s is a PCI address (0000:01:00.0), safe
// to join below a sysfs directory.
func ValidPCIAddress(s string) bool { return pciAddress.MatchString(s) }
