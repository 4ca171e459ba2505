package qemu

import (
	"context"
	"fmt"
	"net"
	"os"
	"regexp"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
	"github.com/cocoon-runtime/cocoon/hypervisor"
	"github.com/cocoon-runtime/cocoon/internal/vmmproc"
	"golang.org/x/sys/unix"
)

var validDeviceID = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_-]{0,31}$`)

// AddDevice hot-plugs a block or network device into a free PCIe root port.
func (q *QEMU) AddDevice(ctx context.Context, dev hypervisor.Device) error {
	if !validDeviceID.MatchString(dev.ID) {
		return fmt.Errorf("add device: invalid id %q", dev.ID)
	}
	c, release, err := q.client(ctx)
	if err != nil {
		return fmt.Errorf("add device %s: %w", dev.ID, err)
	}
	defer release()
	q.mu.Lock()
	defer q.mu.Unlock()
	q.reloadPortsLocked()
	if _, ok := q.ports[dev.ID]; ok {
		return fmt.Errorf("add device %s: already present", dev.ID)
	}
	port, err := q.freePortLocked()
	if err != nil {
		return fmt.Errorf("add device %s: %w", dev.ID, err)
	}
	switch dev.Kind {
	// QEMU opens no file by name (a confined QEMU cannot): the host opens
	// each device's backing and hands QEMU the descriptor.
	case hypervisor.DeviceBlock:
		if dev.Serial != "" && !protocol.ValidDiskSerial(dev.Serial) {
			return fmt.Errorf("add device %s: invalid serial %q", dev.ID, dev.Serial)
		}
		node := "drv-" + dev.ID
		f, err := openBacking(dev.Path, dev.ReadOnly)
		if err != nil {
			return fmt.Errorf("add device %s: %w", dev.ID, err)
		}
		defer f.Close()
		set, err := c.AddFD(ctx, f)
		if err != nil {
			return fmt.Errorf("add device %s: %w", dev.ID, err)
		}
		// A block device (a loop device, a disk) needs QEMU's host_device
		// driver; an image file its file driver.
		proto := "file"
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeDevice != 0 && st.Mode()&os.ModeCharDevice == 0 {
			proto = "host_device"
		}
		err = c.BlockdevAdd(ctx, map[string]any{
			"node-name": node, "driver": "raw", "read-only": dev.ReadOnly,
			"file": map[string]any{"driver": proto, "filename": fmt.Sprintf("/dev/fdset/%d", set)},
		})
		// The block driver holds its own copy now; the set goes with it.
		c.RemoveFDSet(context.WithoutCancel(ctx), set)
		if err != nil {
			return fmt.Errorf("add device %s: %w", dev.ID, err)
		}
		args := map[string]any{"driver": "virtio-blk-pci", "id": dev.ID, "drive": node, "bus": rootPort(port)}
		if dev.Serial != "" {
			args["serial"] = dev.Serial
		}
		err = c.DeviceAdd(ctx, args)
		if err != nil {
			c.BlockdevDel(ctx, node)
			return fmt.Errorf("add device %s: %w", dev.ID, err)
		}
	case hypervisor.DeviceNet:
		netdev := "net-" + dev.ID
		// The tap was made and opened by the host, wired to what the NIC
		// serves, in a namespace QEMU cannot (and need not) enter.
		tap := dev.Tap
		if tap == nil {
			return fmt.Errorf("add device %s: no tap", dev.ID)
		}
		if err := c.GetFD(ctx, netdev, tap); err != nil {
			return fmt.Errorf("add device %s: %w", dev.ID, err)
		}
		err = c.Execute(ctx, "netdev_add", map[string]any{"type": "tap", "id": netdev, "fd": netdev, "vhost": false}, nil)
		if err != nil {
			c.CloseFD(context.WithoutCancel(ctx), netdev)
			return fmt.Errorf("add device %s: %w", dev.ID, err)
		}
		// No option ROM: the guest boots its kernel directly, and a
		// confined QEMU could not read the ROM file anyway.
		args := map[string]any{"driver": "virtio-net-pci", "id": dev.ID, "netdev": netdev, "bus": rootPort(port), "romfile": ""}
		if dev.MAC != "" {
			args["mac"] = dev.MAC
		}
		if err = c.DeviceAdd(ctx, args); err != nil {
			c.Execute(ctx, "netdev_del", map[string]any{"id": netdev}, nil)
			return fmt.Errorf("add device %s: %w", dev.ID, err)
		}
	case hypervisor.DeviceSharedFS:
		chardev := "chr-" + dev.ID
		sock, err := dialUnix(ctx, dev.Path)
		if err != nil {
			return fmt.Errorf("add device %s: %w", dev.ID, err)
		}
		defer sock.Close()
		if err := c.GetFD(ctx, chardev, sock); err != nil {
			return fmt.Errorf("add device %s: %w", dev.ID, err)
		}
		err = c.Execute(ctx, "chardev-add", map[string]any{"id": chardev, "backend": map[string]any{
			"type": "socket", "data": map[string]any{"server": false,
				"addr": map[string]any{"type": "fd", "data": map[string]any{"str": chardev}}},
		}}, nil)
		if err != nil {
			c.CloseFD(context.WithoutCancel(ctx), chardev)
			return fmt.Errorf("add device %s: %w", dev.ID, err)
		}
		err = c.DeviceAdd(ctx, map[string]any{"driver": "vhost-user-fs-pci", "id": dev.ID, "chardev": chardev,
			"tag": protocol.SharedFSTag, "queue-size": 1024, "bus": rootPort(port)})
		if err != nil {
			c.Execute(ctx, "chardev-remove", map[string]any{"id": chardev}, nil)
			return fmt.Errorf("add device %s: %w", dev.ID, err)
		}
	default:
		return fmt.Errorf("add device %s: kind %q: %w", dev.ID, dev.Kind, hypervisor.ErrNotSupported)
	}
	q.ports[dev.ID] = port
	return q.saveLocked()
}

// RemoveDevice hot-unplugs a device added with AddDevice and waits until
// the guest released it.
func (q *QEMU) RemoveDevice(ctx context.Context, dev hypervisor.Device) error {
	c, release, err := q.client(ctx)
	if err != nil {
		return fmt.Errorf("remove device %s: %w", dev.ID, err)
	}
	defer release()
	q.mu.Lock()
	defer q.mu.Unlock()
	q.reloadPortsLocked()
	if _, ok := q.ports[dev.ID]; !ok {
		return fmt.Errorf("remove device %s: not present", dev.ID)
	}
	if err := c.DeviceDel(ctx, dev.ID); err != nil {
		return fmt.Errorf("remove device %s: %w", dev.ID, err)
	}
	switch dev.Kind {
	case hypervisor.DeviceBlock:
		err = c.BlockdevDel(ctx, "drv-"+dev.ID)
	case hypervisor.DeviceNet:
		err = c.Execute(ctx, "netdev_del", map[string]any{"id": "net-" + dev.ID}, nil)
	}
	delete(q.ports, dev.ID)
	if err != nil {
		return fmt.Errorf("remove device %s: %w", dev.ID, err)
	}
	return q.saveLocked()
}

// reloadPortsLocked reads the root ports in use from the VM's record:
// another process (a CLI beside the shim) may have hot-plugged or removed
// devices since this handle last looked. The caller serializes hotplug
// across processes (the sandbox's lock); without a record, this handle's
// own view stands.
func (q *QEMU) reloadPortsLocked() {
	if q.launch.files.state == "" {
		return
	}
	var s state
	if err := vmmproc.ReadState(q.launch.files.state, &s); err != nil || s.ID != q.id {
		return
	}
	q.ports = s.Ports
	if q.ports == nil {
		q.ports = make(map[string]int)
	}
}

func (q *QEMU) freePortLocked() (int, error) {
	if q.launch.machine != MachineQ35 || q.launch.cfg.HotplugSlots == 0 {
		return 0, fmt.Errorf("no hotplug slots (machine %s): %w", q.launch.machine, hypervisor.ErrNotSupported)
	}
	used := make(map[int]bool, len(q.ports))
	for _, p := range q.ports {
		used[p] = true
	}
	for i := 0; i < q.launch.cfg.HotplugSlots; i++ {
		if !used[i] {
			return i, nil
		}
	}
	return 0, fmt.Errorf("all %d hotplug slots are in use", q.launch.cfg.HotplugSlots)
}

// openBacking opens a block device's backing file or device for QEMU.
func openBacking(path string, readOnly bool) (*os.File, error) {
	flags := os.O_RDWR
	if readOnly {
		flags = os.O_RDONLY
	}
	return os.OpenFile(path, flags|unix.O_CLOEXEC, 0)
}

// dialUnix connects to the unix socket at path and returns the connection
// as a file, to hand to QEMU.
func dialUnix(ctx context.Context, path string) (*os.File, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.(*net.UnixConn).File()
}
