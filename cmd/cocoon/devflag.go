package main

import (
	"fmt"
	"os"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

// deviceFlags add host devices to a container (--device).
type deviceFlags struct{ devices []string }

func (d *deviceFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringArrayVar(&d.devices, "device", nil,
		"add a host device to the container: HOST[:CONTAINER[:PERMS]] (PERMS of rwm, default rwm); a block device is attached to the VM as a disk of its own, a character device is the VM's of the same number")
}

// apply adds the devices to spec: each a linux.devices entry at its
// container path and a device cgroup rule allowing PERMS.
func (d *deviceFlags) apply(spec *specs.Spec) error {
	for _, arg := range d.devices {
		dev, rule, err := parseDevice(arg)
		if err != nil {
			return err
		}
		if spec.Linux == nil {
			spec.Linux = &specs.Linux{}
		}
		if spec.Linux.Resources == nil {
			spec.Linux.Resources = &specs.LinuxResources{}
		}
		spec.Linux.Devices = append(spec.Linux.Devices, dev)
		spec.Linux.Resources.Devices = append(spec.Linux.Resources.Devices, rule)
	}
	return nil
}

// parseDevice reads one --device value and stats the host's device.
func parseDevice(arg string) (specs.LinuxDevice, specs.LinuxDeviceCgroup, error) {
	parts := strings.Split(arg, ":")
	host, ctr, perms := parts[0], parts[0], "rwm"
	if len(parts) > 1 && parts[1] != "" {
		ctr = parts[1]
	}
	if len(parts) > 2 {
		perms = parts[2]
	}
	bad := func(why string) (specs.LinuxDevice, specs.LinuxDeviceCgroup, error) {
		return specs.LinuxDevice{}, specs.LinuxDeviceCgroup{}, fmt.Errorf("--device %q: %s", arg, why)
	}
	if len(parts) > 3 || !strings.HasPrefix(host, "/") {
		return bad("want HOST[:CONTAINER[:PERMS]], HOST an absolute path")
	}
	var st unix.Stat_t
	if err := unix.Stat(host, &st); err != nil {
		return bad(err.Error())
	}
	typ := "b"
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFBLK:
	case unix.S_IFCHR:
		typ = "c"
	default:
		return bad("not a device")
	}
	if !strings.HasPrefix(ctr, "/dev/") || strings.Contains(ctr, "..") {
		return bad("CONTAINER must be a path below /dev")
	}
	if perms == "" || strings.Trim(perms, "rwm") != "" {
		return bad("PERMS is made of r, w and m")
	}
	major, minor := int64(unix.Major(st.Rdev)), int64(unix.Minor(st.Rdev))
	mode := os.FileMode(st.Mode & 0o777)
	uid, gid := st.Uid, st.Gid
	dev := specs.LinuxDevice{Path: ctr, Type: typ, Major: major, Minor: minor, FileMode: &mode, UID: &uid, GID: &gid}
	rule := specs.LinuxDeviceCgroup{Allow: true, Type: typ, Major: &major, Minor: &minor, Access: perms}
	return dev, rule, nil
}
