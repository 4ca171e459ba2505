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
	serial := diskID("rb", id)
	dev := hypervisor.Device{Kind: hypervisor.DeviceBlock, ID: serial, Path: rootfs, ReadOnly: readOnly, Serial: serial}
	if _, err := s.attachDisks(ctx, []hypervisor.Device{dev}); err != nil {
		return agent.Storage{}, hypervisor.Device{}, fmt.Errorf("rootfs: %w", err)
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
	var disks []hypervisor.Device
	for _, i := range passedDevices(spec) {
		d := spec.Linux.Devices[i]
		path, err := hostBlockDevice(d.Major, d.Minor)
		if err != nil {
			return nil, nil, err
		}
		serial := diskID("dv", fmt.Sprintf("%s/%d", id, i))
		disks = append(disks, hypervisor.Device{Kind: hypervisor.DeviceBlock, ID: serial, Path: path, Serial: serial})
		maps = append(maps, agent.DeviceMapping{Index: i, Serial: serial})
	}
	if ids, err = s.attachDisks(ctx, disks); err != nil {
		return nil, nil, err
	}
	return maps, ids, nil
}

// attachDisks hot-plugs disks, all or none, and returns their IDs.
func (s *Sandbox) attachDisks(ctx context.Context, disks []hypervisor.Device) ([]string, error) {
	if len(disks) == 0 {
		return nil, nil
	}
	v, err := s.runningVM()
	if err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(disks))
	for _, d := range disks {
		if err := v.AddDevice(ctx, d); err != nil {
			s.detachDevices(context.WithoutCancel(ctx), ids)
			return nil, fmt.Errorf("attach %s: %w", d.Path, err)
		}
		ids = append(ids, d.ID)
	}
	return ids, nil
}

// blockVolumeTypes are the file system types of a mount that the VM gets
// as a disk of its own.
var blockVolumeTypes = map[string]bool{"ext4": true, "xfs": true, "erofs": true}

// blockVolumes lists the mounts of spec that are block volumes: a file
// system (ext4, xfs, erofs) whose source is a host image file or block
// device, as `mount -t ext4 SOURCE DEST` would mount it. The guest mounts
// it from a virtio-blk disk of its own: nothing is mounted on the host.
func blockVolumes(spec *specs.Spec) []int {
	var out []int
	for i, m := range spec.Mounts {
		if blockVolumeTypes[m.Type] && !isBind(m) {
			out = append(out, i)
		}
	}
	return out
}

// blockVolumeFlags are the mount options of a block volume that its bind
// in the container takes (the file system is mounted with defaults, or
// read-only); "loop" and "defaults" mean nothing in the guest.
var blockVolumeFlags = map[string]bool{
	"ro": true, "rw": true, "nosuid": true, "suid": true, "nodev": true, "dev": true, "noexec": true, "exec": true,
	"noatime": true, "atime": true, "relatime": true, "norelatime": true, "strictatime": true, "nodiratime": true, "diratime": true,
}

// attachVolumes hot-plugs the disks of container id's block volumes and
// turns their mounts in g, the spec the guest gets, into binds of the
// guest's mount of each disk; it returns the storages saying so and the
// disks' hotplug IDs. On error nothing stays attached.
func (s *Sandbox) attachVolumes(ctx context.Context, id string, g *specs.Spec) (sts []agent.Storage, ids []string, err error) {
	idx := blockVolumes(g)
	if len(idx) == 0 {
		return nil, nil, nil
	}
	type volume struct {
		i      int
		fstype string
		ro     bool
		opts   []string
	}
	// Everything is checked before anything is attached.
	vols := make([]volume, 0, len(idx))
	for _, i := range idx {
		m := g.Mounts[i]
		if !filepath.IsAbs(m.Source) {
			return nil, nil, fmt.Errorf("%w: block volume %s: source %q is not absolute", ErrInvalidConfig, m.Destination, m.Source)
		}
		st, err := os.Stat(m.Source)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: block volume %s: %w", ErrInvalidConfig, m.Destination, err)
		}
		if !imageOrBlockDevice(st.Mode()) {
			return nil, nil, fmt.Errorf("%w: block volume %s: source %s is not an image file or a block device", ErrInvalidConfig, m.Destination, m.Source)
		}
		fstype, err := imageFSType(m.Source)
		if err != nil {
			return nil, nil, fmt.Errorf("block volume %s: %w", m.Destination, err)
		}
		if fstype != m.Type {
			return nil, nil, fmt.Errorf("%w: block volume %s: %s holds %s, not %s", ErrInvalidConfig, m.Destination, m.Source, fstype, m.Type)
		}
		v := volume{i: i, fstype: fstype, opts: []string{"rbind"}}
		for _, o := range m.Options {
			switch {
			case o == "loop" || o == "defaults":
			case blockVolumeFlags[o]:
				v.ro = v.ro || o == "ro"
				v.opts = append(v.opts, o)
			default:
				return nil, nil, fmt.Errorf("%w: block volume %s: option %q is not supported", ErrInvalidConfig, m.Destination, o)
			}
		}
		vols = append(vols, v)
	}
	disks := make([]hypervisor.Device, 0, len(vols))
	for _, v := range vols {
		m := &g.Mounts[v.i]
		serial := diskID("bv", fmt.Sprintf("%s/%d", id, v.i))
		disks = append(disks, hypervisor.Device{Kind: hypervisor.DeviceBlock, ID: serial, Path: m.Source, ReadOnly: v.ro, Serial: serial})
		sts = append(sts, agent.Storage{Mount: v.i, Kind: agent.StorageBlock, Path: serial, FSType: v.fstype, ReadOnly: v.ro})
	}
	if ids, err = s.attachDisks(ctx, disks); err != nil {
		return nil, nil, fmt.Errorf("block volume: %w", err)
	}
	for _, v := range vols {
		// The host's path means nothing in the guest and is not its to know.
		m := &g.Mounts[v.i]
		m.Type, m.Source, m.Options = "bind", "", v.opts
	}
	return sts, ids, nil
}

// containerDisks are the hotplug IDs of the disks attached for container
// c: its root device, its passed devices and its block volumes.
func containerDisks(c *containerState) []string {
	var out []string
	if c.RootDevice != "" {
		out = append(out, c.RootDevice)
	}
	out = append(out, c.PassedDevices...)
	return append(out, c.VolumeDisks...)
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
