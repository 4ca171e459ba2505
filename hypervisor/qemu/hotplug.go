package qemu

import (
	"context"
	"fmt"
	"regexp"

	"github.com/cocoon-runtime/cocoon/hypervisor"
)

var validDeviceID = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_-]{0,31}$`)

// AddDevice hot-plugs a block or network device into a free PCIe root port.
func (q *QEMU) AddDevice(ctx context.Context, dev hypervisor.Device) error {
	if !validDeviceID.MatchString(dev.ID) {
		return fmt.Errorf("add device: invalid id %q", dev.ID)
	}
	c, err := q.client()
	if err != nil {
		return fmt.Errorf("add device %s: %w", dev.ID, err)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if _, ok := q.ports[dev.ID]; ok {
		return fmt.Errorf("add device %s: already present", dev.ID)
	}
	port, err := q.freePortLocked()
	if err != nil {
		return fmt.Errorf("add device %s: %w", dev.ID, err)
	}
	switch dev.Kind {
	case hypervisor.DeviceBlock:
		node := "drv-" + dev.ID
		err = c.BlockdevAdd(ctx, map[string]any{
			"node-name": node, "driver": "raw", "read-only": dev.ReadOnly,
			"file": map[string]any{"driver": "file", "filename": dev.Path},
		})
		if err != nil {
			return fmt.Errorf("add device %s: %w", dev.ID, err)
		}
		err = c.DeviceAdd(ctx, map[string]any{"driver": "virtio-blk-pci", "id": dev.ID, "drive": node, "bus": rootPort(port)})
		if err != nil {
			c.BlockdevDel(ctx, node)
			return fmt.Errorf("add device %s: %w", dev.ID, err)
		}
	case hypervisor.DeviceNet:
		netdev := "net-" + dev.ID
		err = c.Execute(ctx, "netdev_add", map[string]any{
			"type": "tap", "id": netdev, "ifname": dev.Path, "script": "no", "downscript": "no", "vhost": false,
		}, nil)
		if err != nil {
			return fmt.Errorf("add device %s: %w", dev.ID, err)
		}
		args := map[string]any{"driver": "virtio-net-pci", "id": dev.ID, "netdev": netdev, "bus": rootPort(port)}
		if dev.MAC != "" {
			args["mac"] = dev.MAC
		}
		if err = c.DeviceAdd(ctx, args); err != nil {
			c.Execute(ctx, "netdev_del", map[string]any{"id": netdev}, nil)
			return fmt.Errorf("add device %s: %w", dev.ID, err)
		}
	case hypervisor.DeviceSharedFS:
		chardev := "chr-" + dev.ID
		err = c.Execute(ctx, "chardev-add", map[string]any{"id": chardev, "backend": map[string]any{
			"type": "socket", "data": map[string]any{"server": false,
				"addr": map[string]any{"type": "unix", "data": map[string]any{"path": dev.Path}}},
		}}, nil)
		if err != nil {
			return fmt.Errorf("add device %s: %w", dev.ID, err)
		}
		err = c.DeviceAdd(ctx, map[string]any{"driver": "vhost-user-fs-pci", "id": dev.ID, "chardev": chardev,
			"tag": "cocoon", "queue-size": 1024, "bus": rootPort(port)})
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
	c, err := q.client()
	if err != nil {
		return fmt.Errorf("remove device %s: %w", dev.ID, err)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
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
