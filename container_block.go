package cocoon

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
	"github.com/cocoon-runtime/cocoon/hypervisor"
	"github.com/cocoon-runtime/cocoon/internal/agent"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// A container's root filesystem may be a directory, shared with the
// guest over virtio-fs, or a file system image or block device (an ext4
// image on a loop device, a block snapshot), which the guest gets as a
// virtio-blk disk of its own, hot-plugged into a free PCIe root port, and
// mounts itself: its I/O then never crosses virtio-fs.

// rootfsImage reports whether rootfs is an image or a block device rather
// than a directory.
func rootfsImage(rootfs string) (bool, error) {
	st, err := os.Stat(rootfs)
	if err != nil {
		return false, fmt.Errorf("%w: rootfs: %w", ErrInvalidConfig, err)
	}
	switch m := st.Mode(); {
	case m.IsDir():
		return false, nil
	case imageOrBlockDevice(m):
		return true, nil
	}
	return false, fmt.Errorf("%w: rootfs %s is neither a directory, an image nor a block device", ErrInvalidConfig, rootfs)
}

// imageOrBlockDevice reports whether a file of mode m can back a
// virtio-blk disk: a regular file (an image) or a block device.
func imageOrBlockDevice(m os.FileMode) bool {
	return m.IsRegular() || m&os.ModeDevice != 0 && m&os.ModeCharDevice == 0
}

// imageFSType reads the file system type of the image or block device at
// path from its superblock: ext4 (ext2 and ext3 too, which the ext4
// driver mounts), xfs or erofs.
func imageFSType(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("rootfs image: %w", err)
	}
	defer f.Close()
	b := make([]byte, 2048)
	if _, err := io.ReadFull(f, b); err != nil {
		return "", fmt.Errorf("rootfs image %s: %w", path, err)
	}
	switch {
	case binary.LittleEndian.Uint16(b[1024+56:]) == 0xef53:
		return "ext4", nil
	case string(b[:4]) == "XFSB":
		return "xfs", nil
	case binary.LittleEndian.Uint32(b[1024:]) == 0xe0f5e1e2:
		return "erofs", nil
	}
	return "", fmt.Errorf("%w: rootfs image %s: not an ext4, xfs or erofs file system", ErrInvalidConfig, path)
}

// diskID is the hotplug ID, and the serial the guest finds it by, of a
// disk Cocoon attaches for a container: prefix and hex digits of a hash of
// key, 20 characters, what virtio-blk shows.
func diskID(prefix, key string) string {
	sum := sha256.Sum256([]byte(key))
	return prefix + hex.EncodeToString(sum[:])[:hypervisor.MaxBlockSerial-len(prefix)]
}

// attachRootfs hot-plugs the image or device rootfs of container id into
// the VM and returns the storage the guest mounts as its root, and the
// device, which the caller removes on failure.
func (s *Sandbox) attachRootfs(ctx context.Context, id, rootfs string, readOnly bool) (agent.Storage, hypervisor.Device, error) {
	fstype, err := imageFSType(rootfs)
	if err != nil {
		return agent.Storage{}, hypervisor.Device{}, err
	}
	s.mu.Lock()
	v := s.vm
	s.mu.Unlock()
	if v == nil {
		return agent.Storage{}, hypervisor.Device{}, fmt.Errorf("%w: the VM is not running", ErrState)
	}
	serial := diskID("rb", id)
	dev := hypervisor.Device{Kind: hypervisor.DeviceBlock, ID: serial, Path: rootfs, ReadOnly: readOnly, Serial: serial}
	if err := v.AddDevice(ctx, dev); err != nil {
		return agent.Storage{}, hypervisor.Device{}, fmt.Errorf("attach rootfs %s: %w", rootfs, err)
	}
	return agent.Storage{Root: true, Kind: agent.StorageBlock, Path: serial, FSType: fstype, ReadOnly: readOnly}, dev, nil
}

// passedDevices lists the entries of spec's linux.devices that go to the
// guest as disks of their own: its block devices, unless the container is
// privileged (it gets the VM's devices instead).
func passedDevices(spec *specs.Spec) []int {
	if spec.Linux == nil || protocol.AllowsAllDevices(spec.Linux.Resources) {
		return nil
	}
	var out []int
	for i, d := range spec.Linux.Devices {
		if d.Type == "b" {
			out = append(out, i)
		}
	}
	return out
}

// hostBlockDevice is the host's node of block device major:minor, by its
// name in sysfs.
func hostBlockDevice(major, minor int64) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/sys/dev/block/%d:%d/uevent", major, minor))
	if err != nil {
		return "", fmt.Errorf("%w: block device %d:%d: %w", ErrInvalidConfig, major, minor, err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if name, ok := strings.CutPrefix(l, "DEVNAME="); ok && name != "" && !strings.Contains(name, "..") {
			return filepath.Join("/dev", name), nil
		}
	}
	return "", fmt.Errorf("%w: block device %d:%d has no name", ErrInvalidConfig, major, minor)
}

// attachDevices hot-plugs the host block devices behind container id's
// passed devices and returns the guest's mappings and the devices'
// hotplug IDs; on error nothing stays attached.
func (s *Sandbox) attachDevices(ctx context.Context, id string, spec *specs.Spec) (maps []agent.DeviceMapping, ids []string, err error) {
	idx := passedDevices(spec)
	if len(idx) == 0 {
		return nil, nil, nil
	}
	s.mu.Lock()
	v := s.vm
	s.mu.Unlock()
	if v == nil {
		return nil, nil, fmt.Errorf("%w: the VM is not running", ErrState)
	}
	defer func() {
		if err != nil {
			s.detachDevices(context.WithoutCancel(ctx), ids)
			ids = nil
		}
	}()
	for _, i := range idx {
		d := spec.Linux.Devices[i]
		path, err := hostBlockDevice(d.Major, d.Minor)
		if err != nil {
			return nil, ids, err
		}
		serial := diskID("dv", fmt.Sprintf("%s/%d", id, i))
		if err := v.AddDevice(ctx, hypervisor.Device{Kind: hypervisor.DeviceBlock, ID: serial, Path: path, Serial: serial}); err != nil {
			return nil, ids, fmt.Errorf("attach device %s (%s): %w", d.Path, path, err)
		}
		ids = append(ids, serial)
		maps = append(maps, agent.DeviceMapping{Index: i, Serial: serial})
	}
	return maps, ids, nil
}

// containerDisks are the hotplug IDs of the disks attached for container
// c: its root device and its passed devices.
func containerDisks(c *containerState) []string {
	if c.RootDevice == "" {
		return c.PassedDevices
	}
	return append([]string{c.RootDevice}, c.PassedDevices...)
}

// detachDevices hot-removes the devices ids.
func (s *Sandbox) detachDevices(ctx context.Context, ids []string) error {
	s.mu.Lock()
	v := s.vm
	s.mu.Unlock()
	if v == nil {
		return nil // they went with the VM
	}
	var errs []error
	for _, id := range ids {
		if err := v.RemoveDevice(ctx, hypervisor.Device{Kind: hypervisor.DeviceBlock, ID: id}); err != nil {
			errs = append(errs, fmt.Errorf("detach device %s: %w", id, err))
		}
	}
	return errors.Join(errs...)
}
